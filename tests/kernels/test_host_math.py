"""The launch code's integer helpers give what Triton's constexpr functions give, on every int they meet."""
import triton

from kernels.host_math import cdiv, next_pow2


def test_cdiv_and_next_pow2_match_triton():
    for n in list(range(0, 600)) + [2**k + d for k in range(10, 31) for d in (-1, 0, 1)]:
        assert next_pow2(n) == triton.next_power_of_2(n), n
        for b in (1, 2, 3, 16, 64, 100, 1024):
            assert cdiv(n, b) == triton.cdiv(n, b), (n, b)
