"""Kernel-test setup: skipping `gpu` tests without a GPU, and the device the tests run on.

Tests run compiled on a CUDA GPU when there is one; otherwise (or with TRITON_INTERPRET=1 set
before start-up) the small `interpreter` cases run through Triton's CPU interpreter. The
`gpu` marker is declared in pyproject.toml.
"""
from __future__ import annotations

import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU.
if not HAS_GPU and not INTERPRET:
    raise RuntimeError("no GPU and TRITON_INTERPRET is not set: run the kernel tests through tests/conftest.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU and not INTERPRET:
        return
    reason = "needs a CUDA GPU (torch.cuda.is_available() is False)" if not HAS_GPU else "TRITON_INTERPRET=1 is set"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device() -> torch.device:
    """Where kernel inputs live: the interpreter needs CPU tensors."""
    return torch.device("cpu" if INTERPRET else "cuda")
