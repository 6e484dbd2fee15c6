"""The decode path a user pins by name (configure(fused_kernel=...), --fused_kernel) reaches the kernel
dispatcher, and a choice that cannot run is refused before any work, naming the fix."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import kernels
from kernels import FUSED_KERNELS
from palu import configure
from palu.bench.latency import LatencyConfig, attention_setup

from .test_latency_bench import CFG


@pytest.mark.parametrize("name", sorted(FUSED_KERNELS))
def test_module_passes_the_named_path_to_the_dispatcher(name, monkeypatch):
    _, attn, _, cache, x = attention_setup(dataclasses.replace(CFG, batch_size=2), palu=True)
    seen = {}

    def fake_decode(q, *args, **kwargs):  # records what the module asks for; shapes as the real one returns
        seen.update(kwargs)
        return torch.zeros(q.shape[0], q.shape[1], attn.v_proj.rank_max, dtype=q.dtype)

    monkeypatch.setattr(kernels, "latent_decode_attention", fake_decode)
    attn.fused_kernel = name  # configure() refuses a non-auto path on CPU; the wiring is the same
    q = torch.randn(2, CFG.num_heads, 1, CFG.head_dim)
    z = attn._triton_decode(q, cache.layers[0])
    assert z.shape == (2, CFG.num_heads, 1, attn.v_proj.rank_max)
    for key, value in FUSED_KERNELS[name].items():
        assert seen[key] == value
    others = {k for path in FUSED_KERNELS.values() for k in path} - set(FUSED_KERNELS[name])
    assert not others & set(seen), f"{name}: the module passed options of another path: {others & set(seen)}"


def test_configure_refuses_what_cannot_run():
    model, *_ = attention_setup(CFG, palu=True)
    with pytest.raises(ValueError, match="fused_kernel must be one of"):
        configure(model, fused_kernel="flash")
    with pytest.raises(ValueError, match="backend is 'torch'"):
        configure(model, backend="torch", fused_kernel="single_pass_ws")
    with pytest.raises(ValueError, match="runs on CUDA"):
        configure(model, fused_kernel="fold")
    configure(model, fused_kernel="auto")  # the default is fine anywhere


def test_latency_config_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="must be one of"):
        dataclasses.replace(CFG, fused_kernel="flash")
    with pytest.raises(ValueError, match="needs --device cuda"):
        dataclasses.replace(CFG, fused_kernel="single_pass_ws")
    with pytest.raises(ValueError, match="needs --device cuda"):
        LatencyConfig(device="cuda", backend="torch", fused_kernel="reconstruct")


@pytest.mark.parametrize("name", ["run_ppl_eval", "run_lm_eval", "run_long_bench"])
def test_eval_scripts_refuse_a_triton_path_on_cpu_before_loading(name, tmp_path, capsys):
    from .test_scripts import _script

    missing = tmp_path / "no_such_model"  # loading it would fail differently: the check comes first
    with pytest.raises(SystemExit) as exc:
        _script(name).main(["--model_name_or_path", str(missing), "--fused_kernel", "single_pass_ws",
                            "--output_json", str(tmp_path / "out.json")])
    assert exc.value.code == 2
    assert "--fused_kernel single_pass_ws picks a Triton decode path: it needs --device cuda" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
