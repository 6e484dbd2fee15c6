"""Typed configuration for Palu (arXiv 2407.21118).

Every config is a frozen dataclass that validates itself in ``__post_init__`` and
round-trips through plain JSON (``to_dict`` / ``from_dict``), so that what a script
was asked to do is written beside what it produced.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, Optional

SUPPORTED_BITS = (2, 3, 4, 8)


class DecomposeMethod(str, enum.Enum):
    """How a group's stacked k/v weight is factorized (paper Sec. 3.2)."""

    SVD = "svd"
    WHITEN = "whiten"  # SVD-LLM style: SVD of W·S where S Sᵀ is the calibration Gram
    WHITEN_FISHER = "whiten_fisher"  # beyond the paper: whitened SVD weighted by output-channel Fisher
    WHITEN_KFAC = "whiten_kfac"  # beyond the paper: two-sided whitening by a K-FAC Fisher (input Gram ⊗ output grads)


class SearchMethod(str, enum.Enum):
    """How the K+V rank budget is spread over groups (paper Sec. 3.3)."""

    UNIFORM = "uniform"
    FISHER = "fisher"
    FISHER_UNIFORM = "fisher_uniform"
    SENSITIVITY = "sensitivity"  # beyond the paper: greedy on each group's truncation-error spectrum


class CacheMode(str, enum.Enum):
    """What a compressed attention layer keeps in the KV cache."""

    LATENT = "latent"  # the low-rank latents (the real memory saving)
    SIMULATE = "simulate"  # full keys/values rebuilt from latents (the published code's path)


class Backend(str, enum.Enum):
    """Which implementation runs latent attention."""

    AUTO = "auto"  # triton on CUDA tensors, torch elsewhere
    TORCH = "torch"
    TRITON = "triton"


class _JsonMixin:
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif dataclasses.is_dataclass(value):
                value = value.to_dict()  # type: ignore[union-attr]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**dict(data))


@dataclasses.dataclass(frozen=True)
class CalibrationConfig(_JsonMixin):
    """Which text feeds whitening Grams and Fisher scores.

    ``dataset`` is a name known to :mod:`palu.data` or a path to a text file.
    """

    dataset: str = "wiki_summaries"
    n_whiten_samples: int = 16
    n_fisher_samples: int = 32
    seqlen: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_whiten_samples", "n_fisher_samples", "seqlen"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"calibration {name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RankSearchConfig(_JsonMixin):
    """Global K+V budget and how it is allocated.

    ``param_ratio_target`` is the fraction of the original k_proj+v_proj output
    dims (= KV-cache elements per token) that the latents keep.
    """

    method: SearchMethod = SearchMethod.SENSITIVITY
    param_ratio_target: float = 0.5
    rank_multiple: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", SearchMethod(self.method))
        if not 0.0 < float(self.param_ratio_target) <= 1.0:
            raise ValueError(
                f"param_ratio_target must lie in (0, 1] (fraction of K+V dims kept), got {self.param_ratio_target}"
            )
        if int(self.rank_multiple) < 1:
            raise ValueError(f"rank_multiple must be >= 1, got {self.rank_multiple}")


@dataclasses.dataclass(frozen=True)
class DecompositionConfig(_JsonMixin):
    """How each head group is factorized.

    ``head_group_size`` counts KV heads per group: 1 = M-LRD, all KV heads = J-LRD,
    anything between = G-LRD. ``whiten_damp`` is the relative diagonal load used when
    a calibration Gram is not positive definite (see :func:`palu.decomposition.regularized_cholesky`).
    ``kfac_damp`` is the relative diagonal load on the output-gradient covariance of ``whiten_kfac``
    (:func:`palu.decomposition.damp_covariance`); 0.1 measured best on SmolLM2 at 50% (1.145x vs
    1.162x at 1e-4, 1.148x at 0.3, 1.185x at 1; benchmarks/results/accuracy/README.md).
    """

    method: DecomposeMethod = DecomposeMethod.WHITEN_KFAC
    head_group_size: int = 1
    whiten_damp: float = 1e-6
    kfac_damp: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", DecomposeMethod(self.method))
        if int(self.head_group_size) < 1:
            raise ValueError(f"head_group_size must be >= 1, got {self.head_group_size}")
        if not self.whiten_damp > 0:
            raise ValueError(f"whiten_damp must be > 0, got {self.whiten_damp}")
        if not self.kfac_damp >= 0:
            raise ValueError(f"kfac_damp must be >= 0, got {self.kfac_damp}")


@dataclasses.dataclass(frozen=True)
class LatentQuantConfig(_JsonMixin):
    """Quantization of cached latents (paper Sec. 3.4).

    ``bits=16`` means no quantization. Groups are ``group_size`` consecutive latent
    channels of one token (per-token groups). ``residual_length`` recent tokens stay in
    full precision in the latent cache (KIVI-style); the simulation path quantizes all.
    """

    bits: int = 16
    group_size: int = 32
    sym: bool = False
    clip_ratio: float = 1.0
    hadamard: bool = False
    residual_length: int = 0

    def __post_init__(self) -> None:
        if self.bits != 16 and self.bits not in SUPPORTED_BITS:
            raise ValueError(f"latent bits must be one of {SUPPORTED_BITS} or 16 (off), got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"latent quant group_size must be >= 1, got {self.group_size}")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must lie in (0, 1], got {self.clip_ratio}")
        if self.residual_length < 0:
            raise ValueError(f"residual_length must be >= 0, got {self.residual_length}")

    @property
    def enabled(self) -> bool:
        return self.bits != 16


@dataclasses.dataclass(frozen=True)
class PaluConfig(_JsonMixin):
    """What a compressed checkpoint is: saved as the ``palu`` section of ``config.json``.

    ``ranks`` maps a layer index (as a string, JSON keys are strings) to
    ``{"k": [r_0, …, r_{G-1}], "v": [...]}``, one rank per head group.
    """

    head_group_size: int
    ranks: dict[str, dict[str, list[int]]]
    decompose_method: str = "whiten"
    search_method: str = "fisher_uniform"
    param_ratio_target: float = 0.5
    hadamard_fused: bool = False
    cache_mode: CacheMode = CacheMode.LATENT
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    latent_quant: Optional[dict[str, Any]] = None  # chosen by --kv_budget; applied on load unless --lt_* overrides
    format_version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_mode", CacheMode(self.cache_mode))
        ranks = {str(k): {"k": [int(r) for r in v["k"]], "v": [int(r) for r in v["v"]]} for k, v in self.ranks.items()}
        for layer, kv in ranks.items():
            if any(r < 1 for r in kv["k"] + kv["v"]):
                raise ValueError(f"layer {layer}: every rank must be >= 1, got {kv}")
        object.__setattr__(self, "ranks", ranks)

    def layer_ranks(self, layer_idx: int) -> tuple[list[int], list[int]]:
        """(k ranks, v ranks) per group for one layer."""
        kv = self.ranks[str(layer_idx)]
        return kv["k"], kv["v"]
