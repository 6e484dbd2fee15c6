"""Integer helpers (and launch options) for launch code on the host.

``triton.cdiv`` and ``triton.next_power_of_2`` are Triton ``constexpr_function``s: from Python each call goes
through Triton's constexpr wrapper and costs 2-3.5 us (2-core CPU, triton 3.6), about 50x plain arithmetic, and a
decode call makes a few dozen of them for every layer of every token (twenty-third session, host cost). Kernels
keep Triton's own; launch code uses these, which give the same results on ints.
"""
from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for b > 0 (as ``triton.cdiv``)."""
    return (a + b - 1) // b


def next_pow2(n: int) -> int:
    """Smallest power of two >= n for n >= 1, 0 for n == 0 (as ``triton.next_power_of_2``)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def pdl_launch(pdl: bool) -> dict:
    """The launch option of a programmatic dependent launch, or none (the interpreter takes no such option)."""
    return {"launch_pdl": True} if pdl else {}
