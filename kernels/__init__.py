"""Triton kernels of Palu's latent KV cache (public launchers only; references in kernels.reference)."""
from .latent_attention import FUSED_KERNELS, LatentView, latent_decode_attention

__all__ = ["FUSED_KERNELS", "LatentView", "latent_decode_attention"]
