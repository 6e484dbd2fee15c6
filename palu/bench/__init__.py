"""Timing helpers and latency experiments (GPU benchmarks; the same modules as the accuracy path)."""
