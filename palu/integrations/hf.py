"""All transformers-specific glue: module swap, save/load of compressed dumps, Auto* registration.

A dump is a directory with ``config.json`` (``model_type: "palu"``, the base model's
config under ``base_config`` and the :class:`~palu.config.PaluConfig` under ``palu``),
``model.safetensors`` (base weights with k_proj/v_proj replaced by their factors),
the tokenizer files, ``ranks.json`` and ``compression_report.json``.

``import palu`` registers ``model_type "palu"`` with ``AutoConfig`` and
``AutoModelForCausalLM``; loading builds the base architecture, swaps in
:class:`~palu.modules.attention.PaluAttention` and loads the weights. This
registration is the only global change Palu makes, and it is idempotent.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..adapters import check_model
from ..config import Backend, CacheMode, LatentQuantConfig, PaluConfig
from ..modules.attention import PaluAttention

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"


def apply_palu(model: nn.Module, palu_config: PaluConfig) -> nn.Module:
    """Replace every attention module by an (uninitialized) PaluAttention with the configured ranks. In place."""
    adapter, shape = check_model(model, palu_config.head_group_size)
    rotary = adapter.rotary_embedding(model)
    n_groups = shape.num_kv_heads // palu_config.head_group_size
    for idx, layer in enumerate(adapter.layers(model)):
        base = getattr(layer, adapter.attention_attr)
        if isinstance(base, PaluAttention):
            raise ValueError(f"layer {idx} is already compressed")
        k_ranks, v_ranks = palu_config.layer_ranks(idx)
        if len(k_ranks) != n_groups or len(v_ranks) != n_groups:
            raise ValueError(f"layer {idx}: expected {n_groups} ranks per projection, got {len(k_ranks)}/{len(v_ranks)}")
        new = PaluAttention(base, adapter, shape, k_ranks, v_ranks, palu_config.head_group_size, rotary)
        new.cache_mode = palu_config.cache_mode
        setattr(layer, adapter.attention_attr, new)
    model.config.palu = palu_config.to_dict()
    return model


def palu_modules(model: nn.Module) -> Iterator[PaluAttention]:
    for module in model.modules():
        if isinstance(module, PaluAttention):
            yield module


def fused_kernel_flags_problem(fused_kernel: str, backend: str, device: str) -> str:
    """Why ``--fused_kernel`` cannot run with these ``--backend`` / ``--device`` flags ('' when it can): the
    scripts' check before any model is loaded (configure() checks the model itself)."""
    from kernels import FUSED_KERNELS

    if fused_kernel not in FUSED_KERNELS:
        return f"--fused_kernel must be one of {sorted(FUSED_KERNELS)}, got {fused_kernel!r}"
    if fused_kernel != "auto" and (backend == "torch" or not device.startswith("cuda")):
        return (f"--fused_kernel {fused_kernel} picks a Triton decode path: it needs --device cuda and --backend "
                f"auto or triton (got --device {device} --backend {backend})")
    return ""


def configure(
    model: nn.Module,
    quant: Optional[LatentQuantConfig] = None,
    cache_mode: Optional[CacheMode | str] = None,
    backend: Optional[Backend | str] = None,
    fused_kernel: Optional[str] = None,
) -> nn.Module:
    """Set runtime options of every PaluAttention: latent quantization, cache mode, kernel backend, and
    which decode path the Triton backend runs (``fused_kernel``: a key of ``kernels.FUSED_KERNELS``; a
    path that does not fit the model's shapes raises a ValueError naming why at the first decode step).

    ``quant.hadamard`` fuses the Hadamard rotation into the factors (once; exact) if not already done.
    """
    modules = list(palu_modules(model))
    if not modules:
        raise ValueError("model has no Palu attention modules: compress it first (compress.py) or load a Palu dump")
    if fused_kernel is not None:
        from kernels import FUSED_KERNELS

        if fused_kernel not in FUSED_KERNELS:
            raise ValueError(f"fused_kernel must be one of {sorted(FUSED_KERNELS)}, got {fused_kernel!r}")
        final_backend = Backend(backend) if backend is not None else modules[0].backend
        if fused_kernel != "auto" and final_backend == Backend.TORCH:
            raise ValueError(f"fused_kernel {fused_kernel!r} picks a Triton decode path, but the backend is 'torch': "
                             "use backend 'auto' (CUDA) or 'triton', or leave fused_kernel 'auto'")
        device = modules[0].k_proj.down.weight.device
        if fused_kernel != "auto" and device.type != "cuda":
            raise ValueError(f"fused_kernel {fused_kernel!r} picks a Triton decode path, which runs on CUDA, but the "
                             f"model is on {device}: move it to a GPU first (--device cuda), or leave fused_kernel 'auto'")
    if quant is not None and quant.hadamard:
        fuse_hadamard(model)
    for m in modules:
        if quant is not None:
            m.quant = quant
        if cache_mode is not None:
            m.cache_mode = CacheMode(cache_mode)
        if backend is not None:
            m.backend = Backend(backend)
        if fused_kernel is not None:
            m.fused_kernel = fused_kernel
    return model


@torch.no_grad()
def fuse_hadamard(model: nn.Module) -> None:
    """Fold a Hadamard rotation into every group's factors (product unchanged); idempotent per model."""
    from ..rotation import hadamard_matrix

    palu_cfg = dict(getattr(model.config, "palu", {}) or {})
    if palu_cfg.get("hadamard_fused"):
        return
    for m in palu_modules(model):
        for proj in (m.k_proj, m.v_proj):
            down = proj.down.weight
            new_down = []
            for g, r in enumerate(proj.ranks):
                lo = int(proj.offsets[g])
                rot = hadamard_matrix(r).to(down.device)
                new_down.append(rot @ down[lo : lo + r].double())
                proj.up[g, :, :r] = (proj.up[g, :, :r].double() @ rot.T).to(proj.up.dtype)
            down.copy_(torch.cat(new_down).to(down.dtype))
    palu_cfg["hadamard_fused"] = True
    model.config.palu = palu_cfg


# ---------------------------------------------------------------------- save / load
class PaluHFConfig(PretrainedConfig):
    """Config of a Palu dump: wraps the base model's config (``base_config``) and the ``palu`` section."""

    model_type = "palu"

    def __init__(self, base_config: Optional[dict] = None, palu: Optional[dict] = None, **kwargs: Any) -> None:
        self.base_config = base_config or {}
        self.palu = palu or {}
        super().__init__(**kwargs)


class PaluForCausalLM:
    """Loader registered with ``AutoModelForCausalLM`` for ``model_type == "palu"``.

    It returns the *base* architecture's model (e.g. ``LlamaForCausalLM``) with Palu
    attention swapped in — there are no per-architecture Palu model classes.
    """

    config_class = PaluHFConfig

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *args: Any, config: Optional[PaluHFConfig] = None, **kwargs: Any):
        return load_palu_model(path, dtype=kwargs.get("dtype") or kwargs.get("torch_dtype"), device=kwargs.get("device_map"))


def register_auto_classes() -> None:
    """Register ``model_type "palu"`` with AutoConfig/AutoModelForCausalLM (idempotent)."""
    AutoConfig.register("palu", PaluHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(PaluHFConfig, PaluForCausalLM, exist_ok=True)


def _base_config(config: PretrainedConfig) -> dict:
    data = config.to_dict()
    data.pop("palu", None)
    data.pop("quantization_config", None)
    return data


def save_palu_model(model: nn.Module, tokenizer, output_dir: str | os.PathLike, extra_files: dict[str, Any]) -> Path:
    """Write a dump atomically: everything goes to a temp dir beside ``output_dir``, renamed at the end.

    ``extra_files`` maps file names to JSON-serializable objects (ranks.json, report…).
    ``output_dir`` must not exist or be empty (the caller decides about overwriting).
    """
    from safetensors.torch import save_file

    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        for key in _tied_keys(model):
            state.pop(key, None)  # safetensors refuses shared storage; re-tied on load
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        cfg = PaluHFConfig(base_config=_base_config(model.config), palu=dict(model.config.palu))
        cfg.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, obj in extra_files.items():
            (tmp / name).write_text(json.dumps(obj, indent=2))
        if out.exists():
            if any(out.iterdir()):
                raise FileExistsError(f"{out} is not empty")
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _tied_keys(model: nn.Module) -> list[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return []
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    if out is None or inp is None or out.weight.data_ptr() != inp.weight.data_ptr():
        return []
    return [name for name, p in model.named_parameters(remove_duplicate=False) if p is out.weight and name.startswith("lm_head")]


def is_palu_dump(path: str | os.PathLike) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "palu"


def load_palu_model(path: str | os.PathLike, dtype=None, device=None) -> nn.Module:
    """Build the base architecture on the meta device, swap in Palu attention, load the dump's weights."""
    from safetensors.torch import load_file

    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    base_cfg = AutoConfig.for_model(**raw["base_config"])
    palu_cfg = PaluConfig.from_dict(raw["palu"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(base_cfg)
    adapter, _ = check_model(model, palu_cfg.head_group_size)
    apply_palu(model, palu_cfg)
    state = load_file(str(path / WEIGHTS_NAME), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(_tied_keys_from_config(model))
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path}: weights do not match the Palu config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    # Non-persistent buffers (RoPE inv_freq, Palu gather indices) are rebuilt for real.
    rotary_owner, rotary_name = adapter.rotary_path.rsplit(".", 1)
    owner = model.get_submodule(rotary_owner)
    setattr(owner, rotary_name, type(getattr(owner, rotary_name))(config=base_cfg))
    for m in palu_modules(model):
        m._rotary = (getattr(owner, rotary_name),)
        for proj in (m.k_proj, m.v_proj):
            proj.rebuild_buffers("cpu")
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left uninitialized after loading: {leftover[:5]}")
    model.config.palu = palu_cfg.to_dict()
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _tied_keys_from_config(model: nn.Module) -> list[str]:
    return ["lm_head.weight"] if getattr(model.config, "tie_word_embeddings", False) else []
