"""The service database: feedback, champion pointer, retraining jobs (SQLite or PostgreSQL)."""
