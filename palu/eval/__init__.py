"""Evaluation on the same model path for every script: perplexity, lm-eval, LongBench."""
