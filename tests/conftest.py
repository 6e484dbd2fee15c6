"""Shared fixtures (helpers live in tests/helpers.py) and the gpu marker's skip."""
from __future__ import annotations

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels can only run through the interpreter here; it must be chosen before anything
    # (transformers included) imports triton, or triton.language's own helpers stay compiled-only.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .helpers import compress_plain, tiny_model  # noqa: E402

# Tiny models gain nothing from intra-op threads, and OpenMP spin-waiting makes them 30x slower
# whenever another process shares the cores.
torch.set_num_threads(1)

@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def compressed_pair():
    """(original, compressed copy at 50% M-LRD with unequal ranks)."""
    base = tiny_model("llama", num_kv_heads=2)
    ranks = {"0": {"k": [8, 12], "v": [4, 16]}, "1": {"k": [16, 4], "v": [12, 8]}}
    return base, compress_plain(copy.deepcopy(base), ranks=ranks)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
