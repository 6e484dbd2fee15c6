"""nn.Modules of Palu: grouped low-rank projections, latent attention, latent cache."""
from .attention import PaluAttention
from .cache import PaluCache, PaluLatentLayer, cache_nbytes
from .lowrank import LowRankProjection

__all__ = ["PaluAttention", "PaluCache", "PaluLatentLayer", "LowRankProjection", "cache_nbytes"]
