"""Framework glue (transformers)."""
