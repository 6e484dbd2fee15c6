"""Palu: KV-cache compression with low-rank projection (arXiv 2407.21118).

Public API::

    from palu import PaluConfig, apply_palu, configure, load_model, compress_model, search_ranks
    from palu import GraphDecodeConfig, graph_generate  # greedy decoding replayed from CUDA graphs
"""
from .config import (
    Backend,
    CacheMode,
    CalibrationConfig,
    DecomposeMethod,
    DecompositionConfig,
    LatentQuantConfig,
    PaluConfig,
    RankSearchConfig,
    SearchMethod,
)
from .graph_decode import GraphDecodeConfig, graph_generate
from .integrations.hf import apply_palu, configure, fuse_hadamard, load_palu_model, register_auto_classes, save_palu_model
from .models import load_model, resolve_model_path
from .modules import PaluCache, cache_nbytes
from .pipeline import CompressionConfig, compress_model
from .rank_search import RankAllocation, allocate_ranks, search_ranks

register_auto_classes()


def set_seed(seed: int) -> None:
    """Seed torch (CPU and CUDA) for reproducible calibration sampling and tests."""
    import torch

    torch.manual_seed(seed)

__all__ = [
    "Backend", "CacheMode", "CalibrationConfig", "CompressionConfig", "DecomposeMethod", "DecompositionConfig",
    "GraphDecodeConfig", "graph_generate",
    "LatentQuantConfig", "PaluCache", "PaluConfig", "RankAllocation", "RankSearchConfig", "SearchMethod",
    "allocate_ranks", "apply_palu", "cache_nbytes", "compress_model", "configure", "fuse_hadamard", "load_model",
    "load_palu_model", "register_auto_classes", "resolve_model_path", "save_palu_model", "search_ranks", "set_seed",
]
