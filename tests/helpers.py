"""Tiny random Llama/Mistral/Qwen2 models on CPU, compressed without calibration data."""
from __future__ import annotations


import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from palu import PaluConfig, RankSearchConfig, apply_palu, search_ranks
from palu.adapters import attention_shape
from palu.decomposition import decompose_projection
from palu.integrations.hf import palu_modules

VOCAB = 128


def tiny_config(arch: str = "llama", num_heads: int = 4, num_kv_heads: int = 2, head_dim: int = 16, **extra):
    common = dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=512,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    common.update(extra)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    return cls(**common)


def tiny_model(arch: str = "llama", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw), attn_implementation="sdpa").eval()
    if arch == "qwen2":  # random k/v biases so that bias handling is exercised
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
                layer.self_attn.v_proj.bias.normal_(0, 0.5)
    return model


def compress_plain(model, head_group_size: int = 1, ratio: float = 1.0, ranks=None, method: str = "svd", multiple: int = 4):
    """Compress in place with SVD (no calibration); ``ranks`` overrides the uniform allocation."""
    shape = attention_shape(model.config)
    if ranks is None:
        ranks = search_ranks(shape, head_group_size, RankSearchConfig("uniform", ratio, multiple)).ranks
    factors = {}
    for i, layer in enumerate(model.model.layers):
        for p in "kv":
            lin = getattr(layer.self_attn, f"{p}_proj")
            ups, downs = decompose_projection(lin.weight, ranks[str(i)][p], shape.head_dim, head_group_size, method)
            factors[(i, p)] = (ups, downs, None if lin.bias is None else lin.bias.detach().clone())
    apply_palu(model, PaluConfig(head_group_size=head_group_size, ranks=ranks))
    for m in palu_modules(model):
        m.k_proj.set_factors(*factors[(m.layer_idx, "k")])
        m.v_proj.set_factors(*factors[(m.layer_idx, "v")])
    return model


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_tokenizer(chat: bool = False):
    """Byte-level BPE trained on one sentence: any text encodes, ~300 tokens, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model(path, chat: bool = False, arch: str = "llama", num_kv_heads: int = 2):
    """A tiny random checkpoint + tokenizer saved as a local HF folder."""
    tokenizer = tiny_tokenizer(chat)
    model = tiny_model(arch, num_kv_heads=num_kv_heads, vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1,
                       pad_token_id=1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
