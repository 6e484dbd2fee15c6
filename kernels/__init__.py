"""Triton kernels of Palu's latent KV cache (public launchers only; references in kernels.reference)."""
from .latent_attention import LatentView, latent_decode_attention

__all__ = ["LatentView", "latent_decode_attention"]
