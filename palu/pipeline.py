"""The compression pipeline: calibrate -> search ranks -> decompose -> swap modules (paper Sec. 3).

Each stage is a separate call with explicit inputs and outputs; calibration statistics
are cached only under the ``cache_dir`` the caller gives, keyed by everything they
depend on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from . import data
from .adapters import attention_shape, check_model, get_adapter
from .config import CalibrationConfig, DecompositionConfig, PaluConfig, RankSearchConfig, SearchMethod
from .decomposition import damp_covariance, decompose_projection, group_spectrum, regularized_cholesky
from .integrations.hf import apply_palu, palu_modules
from .rank_search import RankAllocation, search_ranks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Everything compress.py was asked to do (embedded in its JSON output and the dump)."""

    model_id: str
    calibration: CalibrationConfig = CalibrationConfig()
    rank_search: RankSearchConfig = RankSearchConfig()
    decomposition: DecompositionConfig = DecompositionConfig()
    use_cache: bool = False
    verbose: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "calibration": self.calibration.to_dict(),
            "rank_search": self.rank_search.to_dict(),
            "decomposition": self.decomposition.to_dict(),
            "use_cache": self.use_cache,
            "verbose": self.verbose,
        }


def _cache_key(kind: str, model_id: str, cfg: CalibrationConfig, n_samples: int) -> str:
    raw = json.dumps([kind, model_id, cfg.dataset, n_samples, cfg.seqlen, cfg.seed], sort_keys=True)
    return f"{kind}-{hashlib.sha1(raw.encode()).hexdigest()[:16]}.pt"


def _cached(path: Optional[Path], use_cache: bool, compute):
    if path is not None and use_cache and path.is_file():
        logger.info("using cached calibration statistics %s", path)
        return torch.load(path, weights_only=True)
    value = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(path)
    return value


def calibration_windows(tokenizer, cfg: CalibrationConfig, n_samples: int) -> torch.Tensor:
    """(n_samples, seqlen) token windows from the calibration split."""
    ids = data.tokenize_stream(data.load_texts(cfg.dataset, "calib"), tokenizer)
    return data.calib_windows(ids, cfg.seqlen, n_samples, cfg.seed)


def calibration_stats(model: nn.Module, tokenizer, cfg: CompressionConfig, cache_dir: Optional[Path] = None):
    """(grams, fisher) that ``cfg`` needs (None where not needed), computed or read from ``cache_dir``."""
    from .calibration import collect_fisher, collect_grams

    method, cal = cfg.decomposition.method.value, cfg.calibration
    grams = fisher = None
    if method.startswith("whiten"):
        path = cache_dir / _cache_key("grams", cfg.model_id, cal, cal.n_whiten_samples) if cache_dir else None
        grams = _cached(path, cfg.use_cache,
                        lambda: collect_grams(model, calibration_windows(tokenizer, cal, cal.n_whiten_samples), cfg.verbose))
    if cfg.rank_search.method != SearchMethod.UNIFORM or method in ("whiten_fisher", "whiten_kfac"):
        rows = cfg.decomposition.head_group_size * attention_shape(model.config).head_dim if method == "whiten_kfac" else None
        kind = "fisher2" if rows is None else f"fisher3-rows{rows}"
        path = cache_dir / _cache_key(kind, cfg.model_id, cal, cal.n_fisher_samples) if cache_dir else None
        fisher = _cached(path, cfg.use_cache, lambda: collect_fisher(
            model, calibration_windows(tokenizer, cal, cal.n_fisher_samples), cfg.verbose, rows))
    return grams, fisher


def _projections(model: nn.Module, cfg: CompressionConfig, fisher) -> dict[tuple[int, str], tuple[nn.Linear, Any]]:
    """(layer, "k"|"v") -> (linear, output-side weights: Fisher per channel (whiten_fisher), damped
    output-gradient covariance blocks (G, rows, rows) (whiten_kfac), or None)."""
    adapter = get_adapter(model.config)
    stat = {"whiten_fisher": "output", "whiten_kfac": "output_cov"}.get(cfg.decomposition.method.value)
    out = {}
    for idx, layer in enumerate(adapter.layers(model)):
        attn = getattr(layer, adapter.attention_attr)
        for proj, name in (("k", adapter.k_proj), ("v", adapter.v_proj)):
            row_weight = fisher[stat][(idx, proj)] if stat else None
            if stat == "output_cov":
                row_weight = damp_covariance(row_weight, cfg.decomposition.kfac_damp)
            out[(idx, proj)] = (getattr(attn, name), row_weight)
    return out


def group_spectra(model: nn.Module, cfg: CompressionConfig, chols: dict, fisher) -> dict[tuple[int, str, int], torch.Tensor]:
    """(layer, proj, group) -> descending σ² in the error metric of the configured decomposition."""
    rows = cfg.decomposition.head_group_size * attention_shape(model.config).head_dim
    out = {}
    for (idx, proj), (lin, row_weight) in _projections(model, cfg, fisher).items():
        for g, w_g in enumerate(lin.weight.detach().split(rows)):
            if row_weight is None:
                rw = None
            else:
                rw = row_weight[g] if row_weight.dim() == 3 else row_weight[g * rows : (g + 1) * rows]
            out[(idx, proj, g)] = group_spectrum(w_g, chols.get(idx), rw).cpu()
    return out


def compress_model(
    model: nn.Module, tokenizer, cfg: CompressionConfig, cache_dir: Optional[Path] = None
) -> tuple[nn.Module, RankAllocation, dict[str, Any]]:
    """Compress ``model`` in place. Returns (model, allocation, report)."""
    _, shape = check_model(model, cfg.decomposition.head_group_size)
    gs, method = cfg.decomposition.head_group_size, cfg.decomposition.method.value
    t0 = time.perf_counter()
    grams, fisher = calibration_stats(model, tokenizer, cfg, cache_dir)
    t_calib = time.perf_counter() - t0
    chols = {i: regularized_cholesky(g, cfg.decomposition.whiten_damp) for i, g in grams.items()} if grams else {}
    spectra = group_spectra(model, cfg, chols, fisher) if cfg.rank_search.method == SearchMethod.SENSITIVITY else None
    allocation = search_ranks(shape, gs, cfg.rank_search, fisher["weight"] if fisher else None, spectra)
    factors = {}
    for (idx, proj), (lin, row_weight) in _projections(model, cfg, fisher).items():
        ups, downs = decompose_projection(
            lin.weight, allocation.ranks[str(idx)][proj], shape.head_dim, gs, method, chols.get(idx), row_weight
        )
        factors[(idx, proj)] = (ups, downs, None if lin.bias is None else lin.bias.detach().clone())
    cal = cfg.calibration
    needs_grams, needs_fisher = grams is not None, fisher is not None
    palu_cfg = PaluConfig(
        head_group_size=gs,
        ranks=allocation.ranks,
        decompose_method=method,
        search_method=cfg.rank_search.method.value,
        param_ratio_target=cfg.rank_search.param_ratio_target,
        calibration={**cal.to_dict(), "model_id": cfg.model_id, "used_grams": needs_grams, "used_fisher": needs_fisher},
    )
    apply_palu(model, palu_cfg)
    for m in palu_modules(model):
        for proj, module in (("k", m.k_proj), ("v", m.v_proj)):
            module.set_factors(*factors[(m.layer_idx, proj)])
    report = compression_report(model, allocation)
    report["timing_s"] = {"calibration": round(t_calib, 2), "total": round(time.perf_counter() - t0, 2)}
    return model, allocation, report


def compression_report(model: nn.Module, allocation: RankAllocation) -> dict[str, Any]:
    """Kept ratio of K and V per layer and KV-cache bytes per token (fp16) before and after."""
    shape = attention_shape(model.config)
    per_layer = {}
    for layer, kv in allocation.ranks.items():
        per_layer[layer] = {
            "k_ratio": sum(kv["k"]) / shape.kv_dim,
            "v_ratio": sum(kv["v"]) / shape.kv_dim,
            "k_ranks": kv["k"],
            "v_ranks": kv["v"],
        }
    fp16 = 2
    before = fp16 * 2 * shape.num_layers * shape.kv_dim
    latents = fp16 * allocation.kept_dims
    positions = 4 * shape.num_layers  # int32 RoPE position per slot per layer in the latent cache
    return {
        "param_ratio_target": getattr(model.config, "palu", {}).get("param_ratio_target"),
        "param_ratio": allocation.param_ratio,
        "kept_dims": allocation.kept_dims,
        "full_dims": allocation.full_dims,
        "rank_granularity": allocation.granularity,
        "kv_bytes_per_token_fp16": {
            "before": before,
            "after_latents": latents,
            "after_with_positions": latents + positions,
            "ratio": (latents + positions) / before,
        },
        "layers": per_layer,
    }
