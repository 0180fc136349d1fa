"""Training side of seqserve (torch): data readers, the model, the train loop, tuning."""
