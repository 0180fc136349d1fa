"""Peer servers for the benchmark. Each runs in its own git-ignored venv and is never a seqserve dependency."""
