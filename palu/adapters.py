"""One table of supported architectures (Llama 1/2/3, Mistral, Qwen2).

Everything Palu needs to know about a model family lives in a :class:`ModelAdapter`
row: where the decoder layers are, the attention module and its projection names,
and whether k/v projections carry a bias. Head counts and RoPE come from the config.
"""
from __future__ import annotations

import dataclasses

import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
    model_type: str
    layers_path: str = "model.layers"
    attention_attr: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    rotary_path: str = "model.rotary_emb"
    kv_bias: bool = False

    def layers(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for part in self.layers_path.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[return-value]

    def attention(self, model: nn.Module, layer_idx: int) -> nn.Module:
        return getattr(self.layers(model)[layer_idx], self.attention_attr)

    def adopt_attention(self, new: nn.Module, base: nn.Module) -> None:
        """Give a replacement attention module what transformers' attention functions read from the
        original (config, layer index, scaling, dropout, causality) and the original q/o projections."""
        new.config = base.config
        new.layer_idx = base.layer_idx
        new.scaling = base.scaling
        new.attention_dropout = getattr(base, "attention_dropout", 0.0)
        new.is_causal = True
        new.q_proj = getattr(base, self.q_proj)
        new.o_proj = getattr(base, self.o_proj)

    def rotary_embedding(self, model: nn.Module) -> nn.Module:
        obj = model
        for part in self.rotary_path.split("."):
            obj = getattr(obj, part)
        return obj


ADAPTERS: dict[str, ModelAdapter] = {
    "llama": ModelAdapter("llama"),
    # Mistral differs from Llama only in sliding-window masking, which transformers handles outside attention.
    "mistral": ModelAdapter("mistral"),
    "qwen2": ModelAdapter("qwen2", kv_bias=True),
}


def get_adapter(config) -> ModelAdapter:
    """Adapter row for a transformers config; clear error for anything else."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"architecture {model_type!r} is not supported; Palu supports {sorted(ADAPTERS)}. "
            "Add a ModelAdapter row in palu/adapters.py for a Llama-like model."
        )
    return ADAPTERS[model_type]


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """Head geometry of one model: H query heads, H_kv KV heads, head_dim D, d_model."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    num_layers: int

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def attention_shape(config) -> AttentionShape:
    num_heads = config.num_attention_heads
    num_kv = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    return AttentionShape(num_heads, num_kv, head_dim, config.hidden_size, config.num_hidden_layers)


def default_group_size(num_kv_heads: int, limit: int = 4) -> int:
    """Largest divisor of H_kv not above ``limit``: G-LRD with 4 heads per group as in the paper, J-LRD when H_kv ≤ 4."""
    return max(d for d in range(1, min(limit, num_kv_heads) + 1) if num_kv_heads % d == 0)


def check_model(model: nn.Module, head_group_size: int) -> tuple[ModelAdapter, AttentionShape]:
    """Validate that ``model`` can be compressed with groups of ``head_group_size`` KV heads."""
    adapter = get_adapter(model.config)
    shape = attention_shape(model.config)
    if shape.num_kv_heads % head_group_size:
        divisors = [d for d in range(1, shape.num_kv_heads + 1) if shape.num_kv_heads % d == 0]
        raise ValueError(
            f"head_group_size={head_group_size} does not divide the {shape.num_kv_heads} KV heads; choose one of {divisors} "
            f"(1 = M-LRD, {shape.num_kv_heads} = J-LRD)"
        )
    attn = adapter.attention(model, 0)
    for name in (adapter.k_proj, adapter.v_proj, adapter.o_proj):
        if not isinstance(getattr(attn, name, None), nn.Linear):
            raise ValueError(
                f"attention module {type(attn).__name__} has no nn.Linear {name!r}; "
                "Palu needs separate k_proj/v_proj/o_proj linears (fused qkv checkpoints are not supported)"
            )
    return adapter, shape
