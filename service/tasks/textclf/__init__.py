"""Text classification served on raw text (task ``textclf``)."""
