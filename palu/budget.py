"""Budget-driven allocation: ranks per group *and* latent bits jointly under a KV byte budget (beyond the paper).

The paper fixes a rank ratio (Sec. 3.3) and a latent bit width (Sec. 3.4) separately. Here
the user gives one number, the KV-cache bytes per token (or a fraction of the fp16 cache),
and for each candidate bit width in ``bits_candidates`` we

1. compute the largest rank budget whose *exact* cache layout fits (latent codes packed in
   int32 words, scales/zero-points, the full-precision residual window amortized over
   ``context_length``, and the int32 RoPE position the latent cache stores per slot per layer),
2. run the configured rank search (sensitivity / Fisher) for that budget,
3. score the candidate with a registered scorer (:data:`SCORERS`):

   * ``proxy`` — Σ truncation error from the group spectra plus a quantization-noise
     estimate in the same metric (see :func:`quant_noise`); no forward passes.
   * ``ppl`` — measured perplexity of the compressed, quantized model on a few
     calibration windows (a seed different from the Fisher/Gram windows').

The best candidate wins. :func:`search_budget` only searches (the model is untouched);
:func:`compress_to_budget` also compresses, configures quantization and measures the bytes
a real latent cache holds.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .adapters import AttentionShape, attention_shape, check_model
from .config import SUPPORTED_BITS, LatentQuantConfig, RankSearchConfig, SearchMethod, _JsonMixin
from .quant import codes_per_word, fake_quant
from .rank_search import RankAllocation, RankDict, search_ranks

logger = logging.getLogger(__name__)

POSITION_BYTES = 4  # int32 RoPE position per cached slot per layer (palu.modules.cache)
_RANK_MISMATCH = "compress_model reproduced different ranks than the budget search: calibration cache mismatch"


@dataclasses.dataclass(frozen=True)
class KVBudgetConfig(_JsonMixin):
    """A KV byte budget and how candidates are generated and scored.

    Give exactly one of ``bytes_per_token`` (absolute, fp16 layout) or ``fp16_fraction``
    (of the uncompressed fp16 K+V cache, e.g. 0.25). ``hadamard`` applies to quantized
    candidates only (a rotation changes nothing at 16 bits).
    """

    bytes_per_token: Optional[float] = None
    fp16_fraction: Optional[float] = None
    bits_candidates: tuple[int, ...] = (16, 8, 4, 3, 2)
    quant_group_size: int = 32
    sym: bool = False
    hadamard: bool = True
    residual_length: int = 0
    context_length: int = 1024
    scorer: str = "proxy"
    n_score_windows: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits_candidates", tuple(int(b) for b in self.bits_candidates))
        if (self.bytes_per_token is None) == (self.fp16_fraction is None):
            raise ValueError("give exactly one of bytes_per_token or fp16_fraction")
        if self.bytes_per_token is not None and not self.bytes_per_token > 0:
            raise ValueError(f"bytes_per_token must be > 0, got {self.bytes_per_token}")
        if self.fp16_fraction is not None and not 0.0 < self.fp16_fraction <= 1.0:
            raise ValueError(f"fp16_fraction must lie in (0, 1], got {self.fp16_fraction}")
        bad = [b for b in self.bits_candidates if b != 16 and b not in SUPPORTED_BITS]
        if not self.bits_candidates or bad:
            raise ValueError(f"bits_candidates must be non-empty, each in {SUPPORTED_BITS} or 16; "
                             f"got {self.bits_candidates}")
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; choose from {sorted(SCORERS)}")
        for name in ("quant_group_size", "context_length", "n_score_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.residual_length < 0:
            raise ValueError(f"residual_length must be >= 0, got {self.residual_length}")

    def budget_bytes(self, shape: AttentionShape) -> float:
        """The budget in bytes per token."""
        if self.bytes_per_token is not None:
            return float(self.bytes_per_token)
        return float(self.fp16_fraction) * fp16_kv_bytes_per_token(shape)  # type: ignore[arg-type]

    def quant(self, bits: int) -> LatentQuantConfig:
        return LatentQuantConfig(bits=bits, group_size=self.quant_group_size, sym=self.sym,
                                 hadamard=self.hadamard and bits != 16, residual_length=self.residual_length)


# ---------------------------------------------------------------------------- bytes
def fp16_kv_bytes_per_token(shape: AttentionShape) -> int:
    """Uncompressed cache: 2 bytes · (K + V) · layers · H_kv · D."""
    return 2 * 2 * shape.num_layers * shape.kv_dim


def _latent_row_bytes(rank: int, quant: LatentQuantConfig, fp_bytes: int) -> tuple[int, int]:
    """(quantized, full-precision) bytes of one token's latent row of ``rank`` channels, as palu.quant stores it."""
    fp = rank * fp_bytes
    if not quant.enabled:
        return fp, fp
    groups = -(-rank // quant.group_size)
    words = -(-rank // codes_per_word(quant.bits))
    return 4 * words + (1 if quant.sym else 2) * fp_bytes * groups, fp


def latent_kv_bytes_per_token(
    shape: AttentionShape, ranks: RankDict, quant: LatentQuantConfig, context_length: int, fp_bytes: int = 2
) -> float:
    """Bytes per token of Palu's latent cache, averaged over ``context_length`` tokens.

    Per layer and projection the cache holds one latent row of Σ_g r_g channels per token:
    packed codes + scales (+ zero-points) for all but the newest ``residual_length`` tokens,
    which stay in full precision; plus one int32 position per token per layer.
    ``fp_bytes`` is the cache dtype's size (2 for fp16/bf16).
    """
    n_fp = context_length if not quant.enabled else min(quant.residual_length, context_length)
    total = 0.0
    for kv in ranks.values():
        for proj in ("k", "v"):
            q_bytes, f_bytes = _latent_row_bytes(sum(kv[proj]), quant, fp_bytes)
            total += (context_length - n_fp) * q_bytes + n_fp * f_bytes
    return total / context_length + POSITION_BYTES * shape.num_layers


@torch.no_grad()
def measure_latent_bytes_per_token(model: nn.Module, context_length: int, seed: int = 0) -> float:
    """Bytes per token a real :class:`~palu.modules.cache.PaluCache` holds after prefilling ``context_length`` random tokens.

    Counted in the model's own dtype (fp32 on CPU doubles the full-precision parts).
    """
    from .modules.cache import PaluCache

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, context_length), generator=gen).to(device)
    cache = PaluCache()
    model(ids, past_key_values=cache, use_cache=True)
    return cache.nbytes(used_only=True) / context_length


# ---------------------------------------------------------------------------- scoring
_GAUSS_REL_MSE: dict[tuple[int, int, bool, float], float] = {}


def gaussian_rel_mse(quant: LatentQuantConfig) -> float:
    """E[(Q(x) − x)²] / E[x²] of the latent quantizer on i.i.d. N(0, 1) groups (0 at 16 bits); memoized."""
    if not quant.enabled:
        return 0.0
    key = (quant.bits, quant.group_size, quant.sym, quant.clip_ratio)
    if key not in _GAUSS_REL_MSE:
        x = torch.randn(4096, quant.group_size, generator=torch.Generator().manual_seed(0))
        _GAUSS_REL_MSE[key] = float((fake_quant(x, quant) - x).pow(2).mean() / x.pow(2).mean())
    return _GAUSS_REL_MSE[key]


def quant_noise(sigma2: torch.Tensor, rank: int, quant: LatentQuantConfig) -> float:
    """Estimated output error of quantizing one group's rank-``rank`` latents, in the metric of its spectrum.

    With whitened factors ``up = U_r √Σ_r``, latent channel i carries energy σ_i over the
    calibration tokens and noise ε_i on it costs σ_i·ε_i². Per-token groups share one step:
    with Hadamard every channel of the group has the mean energy, so the error is
    ρ_b (Σ_{i≤r} σ_i)² / r; without, a quantization group's step follows its largest
    channel: Σ_groups ρ_b · max σ · Σ σ. ρ_b is :func:`gaussian_rel_mse` (an optimistic
    estimate for heavy-tailed latents; the ``ppl`` scorer measures instead).
    """
    rho = gaussian_rel_mse(quant)
    if rho == 0.0:
        return 0.0
    sigma = sigma2[:rank].clamp_min(0).sqrt()
    if quant.hadamard:
        return rho * float(sigma.sum()) ** 2 / rank
    return rho * sum(float(g.max() * g.sum()) for g in sigma.split(quant.group_size))


def truncation_error(sigma2: torch.Tensor, rank: int) -> float:
    return float(sigma2[rank:].sum())


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One bit width's best-fitting allocation: what compress_model needs to reproduce it, and its exact bytes."""

    quant: LatentQuantConfig
    rank_search: RankSearchConfig
    allocation: RankAllocation
    bytes_per_token: float


@dataclasses.dataclass
class _Context:
    """What scorers need: the base model, calibration statistics (cached under cache_dir) and the compression config."""

    model: nn.Module
    tokenizer: Any
    cfg: Any  # palu.pipeline.CompressionConfig
    cache_dir: Path
    spectra: dict[tuple[int, str, int], torch.Tensor]
    score_windows: Optional[torch.Tensor] = None


Scorer = Callable[[_Context, Candidate], dict[str, float]]
SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def wrap(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return wrap


@register_scorer("proxy")
def proxy_score(ctx: _Context, cand: Candidate) -> dict[str, float]:
    """Σ over groups of truncation error + quantization-noise estimate (lower is better)."""
    trunc = noise = 0.0
    for (layer, proj, g), sigma2 in ctx.spectra.items():
        r = cand.allocation.ranks[str(layer)][proj][g]
        trunc += truncation_error(sigma2, r)
        noise += quant_noise(sigma2, r, cand.quant)
    return {"score": trunc + noise, "truncation_error": trunc, "quant_noise": noise}


@register_scorer("ppl")
def ppl_score(ctx: _Context, cand: Candidate) -> dict[str, float]:
    """Perplexity of a compressed, quantized copy on ``n_score_windows`` calibration windows (lower is better)."""
    from .eval.perplexity import perplexity

    model = compress_candidate(ctx.model, ctx.tokenizer, ctx.cfg, cand, ctx.cache_dir)
    ppl = perplexity(model, ctx.score_windows, show_progress=False)["ppl"]
    proxy = proxy_score(ctx, cand)
    return {"score": ppl, "calib_ppl": ppl, "proxy_score": proxy["score"],
            "truncation_error": proxy["truncation_error"], "quant_noise": proxy["quant_noise"]}


# ---------------------------------------------------------------------------- search
@dataclasses.dataclass(frozen=True)
class BudgetResult:
    """The chosen bits and ranks, the exact bytes they cost, and every candidate's score."""

    budget: KVBudgetConfig
    budget_bytes_per_token: float
    fp16_bytes_per_token: int
    chosen: Candidate
    candidates: list[dict[str, Any]]
    measured_bytes_per_token: Optional[float] = None  # from a real latent cache, in measured_fp_bytes-sized floats
    measured_fp_bytes: Optional[int] = None

    @property
    def bits(self) -> int:
        return self.chosen.quant.bits

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "budget_bytes_per_token": self.budget_bytes_per_token,
            "fp16_bytes_per_token": self.fp16_bytes_per_token,
            "bits": self.bits,
            "quant": self.chosen.quant.to_dict(),
            "rank_search": self.chosen.rank_search.to_dict(),
            "allocation": self.chosen.allocation.to_dict(),
            "bytes_per_token": self.chosen.bytes_per_token,
            "kv_cache_ratio": self.chosen.bytes_per_token / self.fp16_bytes_per_token,
            "measured_bytes_per_token": self.measured_bytes_per_token,
            "measured_fp_bytes": self.measured_fp_bytes,
            "candidates": self.candidates,
        }


def fit_allocation(
    shape: AttentionShape,
    head_group_size: int,
    rank_search: RankSearchConfig,
    quant: LatentQuantConfig,
    budget_bytes: float,
    context_length: int,
    fisher=None,
    spectra=None,
) -> Optional[Candidate]:
    """Largest rank budget (whole search granules) whose exact latent bytes fit ``budget_bytes``; None if none fits.

    Starts from the amortized bits-per-element estimate (a lower bound on the exact packed
    size, hence an upper bound on the rank budget) and steps down a granule at a time.
    """
    from .quant import bits_per_element

    num_groups = shape.num_kv_heads // head_group_size
    gran = max(1, min(rank_search.rank_multiple, head_group_size * shape.head_dim, shape.hidden_size))
    step = gran * (num_groups if rank_search.method == SearchMethod.FISHER_UNIFORM else 1)
    full = 2 * shape.num_layers * shape.kv_dim
    n_fp = context_length if not quant.enabled else min(quant.residual_length, context_length)
    dim_bytes = ((context_length - n_fp) * bits_per_element(quant) / 8 + n_fp * 2) / context_length
    n = min(math.floor((budget_bytes - POSITION_BYTES * shape.num_layers) / dim_bytes / step), full // step)
    min_n = -(-(2 * shape.num_layers * num_groups * gran) // step)  # every group keeps one granule
    for n_try in range(n, min_n - 1, -1):
        cfg = dataclasses.replace(rank_search, param_ratio_target=n_try * step / full)
        allocation = search_ranks(shape, head_group_size, cfg, fisher, spectra)
        nbytes = latent_kv_bytes_per_token(shape, allocation.ranks, quant, context_length)
        if nbytes <= budget_bytes:
            return Candidate(quant, cfg, allocation, nbytes)
    return None


def search_budget(model: nn.Module, tokenizer, cfg, budget: KVBudgetConfig, cache_dir: Path) -> BudgetResult:
    """Pick latent bits and ranks for ``budget``; ``model`` (uncompressed) is left untouched.

    Args:
        cfg: a :class:`palu.pipeline.CompressionConfig`; its rank_search method and rank_multiple
            are used, its param_ratio_target is ignored (the budget sets it).
        cache_dir: calibration statistics are read/written here under the pipeline's keys.
    Raises:
        ValueError: no candidate fits (the budget is below every group keeping one granule at the lowest bits).
    """
    _, shape = check_model(model, cfg.decomposition.head_group_size)
    budget_bytes = budget.budget_bytes(shape)
    from .decomposition import regularized_cholesky
    from .pipeline import calibration_stats, group_spectra

    grams, fisher = calibration_stats(model, tokenizer, cfg, Path(cache_dir))
    chols = {i: regularized_cholesky(g, cfg.decomposition.whiten_damp) for i, g in grams.items()} if grams else {}
    ctx = _Context(model, tokenizer, cfg, Path(cache_dir), group_spectra(model, cfg, chols, fisher))
    if budget.scorer == "ppl":
        from .pipeline import calibration_windows

        score_cal = dataclasses.replace(cfg.calibration, seed=cfg.calibration.seed + 1)
        ctx.score_windows = calibration_windows(tokenizer, score_cal, budget.n_score_windows)
    rows: list[dict[str, Any]] = []
    best: Optional[tuple[float, Candidate]] = None
    for bits in budget.bits_candidates:
        cand = fit_allocation(shape, cfg.decomposition.head_group_size, cfg.rank_search, budget.quant(bits),
                              budget_bytes, budget.context_length, fisher["weight"] if fisher else None, ctx.spectra)
        if cand is None:
            rows.append({"bits": bits, "feasible": False})
            continue
        scores = SCORERS[budget.scorer](ctx, cand)
        rows.append({"bits": bits, "feasible": True, "param_ratio": cand.allocation.param_ratio,
                     "kept_dims": cand.allocation.kept_dims, "bytes_per_token": cand.bytes_per_token, **scores})
        logger.info("budget %.1f B/token: %d bits -> kept %.4f, %s",
                    budget_bytes, bits, cand.allocation.param_ratio, scores)
        if best is None or scores["score"] < best[0]:
            best = (scores["score"], cand)
    if best is None:
        raise ValueError(f"no bit width in {budget.bits_candidates} fits {budget_bytes:.1f} bytes/token "
                         f"(fp16 cache: {fp16_kv_bytes_per_token(shape)}); raise the budget or lower rank_multiple")
    return BudgetResult(budget, budget_bytes, fp16_kv_bytes_per_token(shape), best[1], rows)


def compress_candidate(model: nn.Module, tokenizer, cfg, cand: Candidate, cache_dir: Path) -> nn.Module:
    """A compressed, quantization-configured *copy* of ``model`` with ``cand``'s ranks (calibration from cache_dir)."""
    from .integrations.hf import configure
    from .pipeline import compress_model

    run_cfg = dataclasses.replace(cfg, rank_search=cand.rank_search, use_cache=True)
    compressed, allocation, _ = compress_model(copy.deepcopy(model), tokenizer, run_cfg, Path(cache_dir))
    if allocation.ranks != cand.allocation.ranks:
        raise RuntimeError(_RANK_MISMATCH)
    return configure(compressed, quant=cand.quant)


def compress_to_budget(
    model: nn.Module, tokenizer, cfg, budget: KVBudgetConfig, cache_dir: Path, measure: bool = True
) -> tuple[nn.Module, BudgetResult, dict[str, Any]]:
    """Search, then compress ``model`` in place to the chosen ranks and configure the chosen latent quantization.

    With ``measure`` a prefill of ``budget.context_length`` random tokens fills a real latent
    cache; its bytes must equal the layout count in the model's dtype (else RuntimeError).
    Returns (model, result, compression report with a ``kv_budget`` section).
    """
    from .integrations.hf import configure
    from .pipeline import compress_model

    result = search_budget(model, tokenizer, cfg, budget, cache_dir)
    cand = result.chosen
    run_cfg = dataclasses.replace(cfg, rank_search=cand.rank_search, use_cache=True)
    model, allocation, report = compress_model(model, tokenizer, run_cfg, Path(cache_dir))
    if allocation.ranks != cand.allocation.ranks:
        raise RuntimeError(_RANK_MISMATCH)
    configure(model, quant=cand.quant)
    if measure:
        fp_bytes = next(model.parameters()).element_size()
        measured = measure_latent_bytes_per_token(model, budget.context_length)
        expected = latent_kv_bytes_per_token(attention_shape(model.config), allocation.ranks, cand.quant,
                                             budget.context_length, fp_bytes)
        if not math.isclose(measured, expected, rel_tol=1e-9):
            raise RuntimeError(f"latent cache holds {measured} B/token, layout count says {expected}")
        result = dataclasses.replace(result, measured_bytes_per_token=measured, measured_fp_bytes=fp_bytes)
    report["kv_budget"] = result.to_dict()
    return model, result, report
