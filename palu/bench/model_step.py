"""One whole-model decode step with static shapes, for a CUDA graph: what a serving engine replays per token.

Eager whole-model decoding through transformers' ``model.forward`` is bound by the host on the GPUs measured (Python
and launch overhead set the time per token and move from run to run; ``kernels/NOTES.md``, twenty-second session).
Replaying every layer's step in one CUDA graph removes the host from the measure on both sides, so the time per
token is the GPU work the caches and kernels cost. The step composes the decoder layers of a Llama-architecture
model by hand (embedding, per layer: input norm, :func:`~palu.bench.latency.static_attention`, residual,
post-attention norm, MLP, residual; final norm, lm_head), as ``LlamaDecoderLayer`` does; the tests check it against
``model.forward`` appending the same token.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers.cache_utils import Cache

from .latency import LatencyConfig, static_attention, step_rope


def static_model_step(model, cache: Cache, token: torch.Tensor, cfg: LatencyConfig, palu: bool) -> Callable[[], torch.Tensor]:
    """A closure running one decode step of ``model`` for ``token`` (B, 1) at position prompt_len - 1 over every
    layer's fixed cache slots (each layer's last slot rewritten by the step); returns the logits (B, 1, vocab).

    ``cache`` holds prompt_len filled slots per layer: a static-layer cache for the baseline, a :class:`PaluCache`
    for Palu (``palu``).
    """
    inner = model.model
    cos, sin = step_rope(inner.rotary_emb, cfg)  # the same position every replay
    steps = [(layer, static_attention(layer.self_attn, cache.layers[i], cos, sin, cfg, palu))
             for i, layer in enumerate(inner.layers)]

    def body() -> torch.Tensor:
        h = inner.embed_tokens(token)
        for layer, attend in steps:
            h = h + attend(layer.input_layernorm(h))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return model.lm_head(inner.norm(h))

    return body
