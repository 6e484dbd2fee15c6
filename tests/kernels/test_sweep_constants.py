"""benchmarks/fold_heads_sweep.py's module constants (its last argument, set by gpu_kernels.sh spq_variants and
sp_regs): a name no kernel module has is refused by name before any GPU work; a known one keeps its type."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import fold_heads_sweep  # noqa: E402

from kernels import single_pass_ws_quant as spq  # noqa: E402


def test_unknown_constant_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(spq, "SPQ_ROWS_PER_TILE", spq.SPQ_ROWS_PER_TILE)  # set before the unknown one is met
    with pytest.raises(SystemExit, match="spq.SPQ_NO_SUCH: kernels.single_pass_ws_quant has no constant SPQ_NO_SUCH"):
        fold_heads_sweep._set_process_constants("spq.SPQ_ROWS_PER_TILE=0,spq.SPQ_NO_SUCH=1")


def test_constexpr_constant_stays_a_constexpr(monkeypatch):
    monkeypatch.setattr(spq, "SPQ_ROWS_PER_TILE", spq.SPQ_ROWS_PER_TILE)  # restored after the test
    monkeypatch.setattr(spq, "SPQ_REG_KEYS", spq.SPQ_REG_KEYS)
    done = fold_heads_sweep._set_process_constants("spq.SPQ_ROWS_PER_TILE=False,spq.SPQ_REG_KEYS=False")
    assert done == {"spq.SPQ_ROWS_PER_TILE": False, "spq.SPQ_REG_KEYS": False}
    assert type(spq.SPQ_ROWS_PER_TILE).__name__ == "constexpr" and spq.SPQ_ROWS_PER_TILE.value is False
    assert spq.SPQ_REG_KEYS is False


def test_word_unpack_constants_are_reachable(monkeypatch):
    from kernels import word_unpack as wu

    monkeypatch.setattr(wu, "SPQ_SCALE_WHERE", wu.SPQ_SCALE_WHERE)
    assert fold_heads_sweep._set_process_constants("wu.SPQ_SCALE_WHERE=True") == {"wu.SPQ_SCALE_WHERE": True}
    assert type(wu.SPQ_SCALE_WHERE).__name__ == "constexpr" and wu.SPQ_SCALE_WHERE.value is True
