"""Decoding helpers for step models: sampling, beam search, the token channel."""
