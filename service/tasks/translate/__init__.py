"""Translation: tokens.py (text <-> ids, shared with training); the serving room grows here."""
