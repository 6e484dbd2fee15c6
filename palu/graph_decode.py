"""Greedy decoding whose steps are replayed from CUDA graphs over the Palu latent cache (fp16 / bf16 latents, or
quantized ones without a full-precision window).

Eager decoding (``model.generate``) is bound by the host on the GPUs measured: Python and ~20 launches per layer cost
more than the GPU's work (kernels/NOTES.md, twenty-third session). A graph replays a step with the host out of the
way, but needs fixed shapes and pointers, while the cache grows by a token a step. The attention kernels need no
change:

* Attention does not depend on the order of the slots (each slot stores its RoPE position), so each sequence's
  latents sit right-aligned in a buffer of ``capacity`` slots and every new token is written *before* them:
  sequence b's valid slots are always [capacity - n_b, capacity).
* A step reads the last ``span`` slots (a multiple of ``bucket`` covering the longest sequence) and masks the
  slots before each sequence's first one with the kernels' left-padding start ``kv_start[b]``, a device tensor.
  The write slot, the position and kv_start advance on the device inside the step, so one graph serves every
  step of a span; when the longest sequence outgrows it, that step runs eagerly and a new graph is captured
  (every ``bucket`` tokens). Each layer's new latents and position go to the write slot in one launch: with fp
  latents the launch that also computes them (:mod:`kernels.latent_down`, both down-projections), with quantized
  ones a slot write after their quantization (:mod:`kernels.slot_write`).

:class:`GraphDecoder` decodes from a filled :class:`~palu.modules.cache.PaluCache` (a prefill's, or the latency
benchmark's random one); :func:`graph_generate` runs the prefill through ``model.forward`` and then it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from .config import CacheMode
from .integrations.hf import palu_modules
from .modules.attention import DecodeSlots
from .modules.cache import PaluCache, PaluLatentLayer


@dataclasses.dataclass(frozen=True)
class GraphDecodeConfig:
    """max_new_tokens: tokens to generate (the first comes from the prefill); bucket: slots by which the span a
    graph reads grows (a new capture each time; the span holds at most bucket - 1 unused slots);
    eos_token_id: stop once every sequence has produced one of these (checked every ``sync_every`` steps; later
    tokens of a finished sequence become pad_token_id); use_graph: False runs the same step eagerly (CPU, tests)."""

    max_new_tokens: int
    bucket: int = 256
    eos_token_id: Optional[Sequence[int]] = None
    pad_token_id: int = 0
    use_graph: bool = True
    sync_every: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.bucket < 1 or self.sync_every < 1:
            raise ValueError(f"bucket and sync_every must be >= 1, got {self.bucket} and {self.sync_every}")


def graph_decode_problem(model: torch.nn.Module, device: torch.device, use_graph: bool, total_len: int
                         ) -> Optional[str]:
    """Why ``model`` cannot decode ``total_len`` tokens (prompt and new) through :class:`GraphDecoder` (None if it
    can)."""
    modules = list(palu_modules(model))
    if not modules:
        return "the model has no Palu attention modules: compress it first (compress.py) or load a Palu checkpoint"
    if len(modules) != model.config.num_hidden_layers:
        return f"{len(modules)} of {model.config.num_hidden_layers} layers are Palu attention: every layer must be"
    for m in modules:
        if m.cache_mode != CacheMode.LATENT:
            return "graph decoding needs cache_mode='latent' (configure(model, cache_mode='latent'))"
        if m.quant.enabled and m.quant.residual_length:
            return (f"graph decoding quantizes each new token at once, but the model keeps the newest "
                    f"{m.quant.residual_length} in full precision (residual_length): configure(model, "
                    "quant=LatentQuantConfig(bits=..., residual_length=0)), or decode with model.generate()")
        if m.backend.value == "torch":
            return "graph decoding runs the Triton decode kernels: configure(model, backend='auto' or 'triton')"
    if use_graph and device.type != "cuda":
        return f"CUDA graphs need a CUDA device, the model is on {device}: pass use_graph=False to run the steps eagerly"
    window = getattr(model.config, "sliding_window", None)
    if window is not None and getattr(model.config, "use_sliding_window", True) and total_len > window:
        return (f"{total_len} tokens exceed the model's sliding window ({window} tokens), which the graph step does "
                "not apply: decode with model.generate()")
    return None


def _right_aligned(t: torch.Tensor, starts: list[int], lengths: list[int], capacity: int) -> torch.Tensor:
    """(B, S, *tail) -> (B, capacity, *tail) zeros with sequence b's slots [start_b, S) at [capacity - n_b, capacity)."""
    out = t.new_zeros(t.shape[0], capacity, *t.shape[2:])
    for b, (start, n) in enumerate(zip(starts, lengths)):
        out[b, capacity - n:] = t[b, start:]
    return out


# fp latents on CUDA: both down-projections and the step's writes in one launch (kernels.latent_down). On since the
# twenty-eighth session's H100 A/B at 32K (benchmarks/results/kernel/h100/session28/): 9.84 -> 9.53 ms per token at
# B=1, 12.77 -> 12.42 at B=2 (two skinny cuBLAS GEMMs with their split-K reductions and a slot write before).
FUSED_DOWN = True


def _kernels_for(t: torch.Tensor) -> bool:
    """Whether the step's writes run the Triton kernels (CUDA) rather than plain torch (elsewhere)."""
    return t.is_cuda


def _write_slots(slot: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """buf[b, slot[b]] = row[b] for each (row (B, 1, W), buf (B, C, W)) pair; slot (B,) int64, a device tensor
    (graph-safe). With the kernels one Triton launch per four pairs (kernels.slot_write), else plain indexing."""
    if _kernels_for(slot):
        from kernels.slot_write import write_slots
    else:
        from kernels.slot_write import write_slots_ref as write_slots
    write_slots(slot, pairs)


def _fused_down(x: torch.Tensor, m) -> bool:
    """Whether module m's key and value down-projections of x (B, 1, d_model) and their writes go through
    kernels.latent_down: fp latents (quantized ones are quantized first), kernels on, plain bias-free Linear down
    weights of x's dtype."""
    return FUSED_DOWN and _kernels_for(x) and not m.quant.enabled and all(
        type(p.down) is torch.nn.Linear and p.down.bias is None and p.down.weight.dtype == x.dtype
        for p in (m.k_proj, m.v_proj))


def _store_latents(x: torch.Tensor, m, kb: "_LatentBuffers", vb: "_LatentBuffers", pos_buf: torch.Tensor,
                   slot: torch.Tensor, pos32: torch.Tensor) -> None:
    """Module m's key and value latents of x (B, 1, d_model) and the position pos32 (B, 1) at each sequence's
    write slot: one launch with kernels.latent_down (two skinny cuBLAS GEMMs, their split-K reductions and the
    slot write otherwise), else the down-projections and one slot-write launch."""
    if _fused_down(x, m):
        from kernels.latent_down import project_latents

        project_latents(x, [(m.k_proj.down.weight, kb.bufs["fp"]), (m.v_proj.down.weight, vb.bufs["fp"])], slot,
                        (pos32, pos_buf.unsqueeze(-1)))
        return
    _write_slots(slot, kb.pairs(m.k_proj.down(x)) + vb.pairs(m.v_proj.down(x)) + [(pos32, pos_buf.unsqueeze(-1))])


class _LatentBuffers:
    """One projection's latents of one layer right-aligned in ``capacity`` slots: fp (B, C, R), or packed codes
    (B, C, words) int32 with scale / zero (B, C, groups) (palu.quant's layout, every slot quantized)."""

    def __init__(self, store, quant, starts: list[int], lengths: list[int], capacity: int) -> None:
        self.quant = quant
        if quant.enabled:
            q = store.quantized()
            parts = {"codes": q.codes, "scale": q.scale, "zero": q.zero}
        else:
            parts = {"fp": store.fp.view()}
        self.bufs = {k: _right_aligned(t, starts, lengths, capacity) for k, t in parts.items() if t is not None}

    def pairs(self, latent: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(row, buffer) pairs that store latent (B, 1, R) at a slot (see :func:`_write_slots`): fp, the latent
        itself; quantized, its codes / scale / zero, quantized first into staging rows as the eager cache does."""
        if not self.quant.enabled:
            return [(latent, self.bufs["fp"])]
        from .modules.cache import quantize_into_views

        staged = {k: buf.new_empty(buf.shape[0], 1, *buf.shape[2:]) for k, buf in self.bufs.items()}
        quantize_into_views(latent, self.quant, staged["codes"], staged["scale"], staged.get("zero"))
        return [(staged[k], buf) for k, buf in self.bufs.items()]

    def view(self, first: int):
        """kernels.LatentView of slots [first, capacity)."""
        from kernels import LatentView

        span = {k: buf[:, first:] for k, buf in self.bufs.items()}
        if not self.quant.enabled:
            return LatentView(span["fp"], None, None, None)
        return LatentView(None, span["codes"], span["scale"], span.get("zero"), bits=self.quant.bits,
                          quant_group_size=self.quant.group_size)

    def slot_bytes(self) -> int:
        return sum(buf[0, 0].numel() * buf.element_size() for buf in self.bufs.values())

    def nbytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for buf in self.bufs.values())


class GraphDecoder:
    """Greedy decode steps over right-aligned copies of a filled PaluCache (see the module docstring).

    cache: every layer a PaluLatentLayer of S slots with kv_start set (a prefill's left padding); next_token (B, 1)
    int64, the token to feed first; next_position (B,) int64, its position. ``step()`` feeds it and returns the
    following token (B, 1); ``capacity`` bounds the slots (S plus the tokens to be fed). ``consume``: empty each
    cache layer once copied, so that the copies need one layer's latents more than the cache, not twice the cache.
    """

    def __init__(self, model, cache: PaluCache, next_token: torch.Tensor, next_position: torch.Tensor,
                 capacity: int, cfg: GraphDecodeConfig, consume: bool = False) -> None:
        device = next_token.device
        why = graph_decode_problem(model, device, cfg.use_graph, capacity)
        if why:
            raise ValueError(why)
        self.model, self.cfg = model, cfg
        self.modules = list(palu_modules(model))
        batch = next_token.shape[0]
        layers = [cache.layers[m.layer_idx] if m.layer_idx < len(cache.layers) else None for m in self.modules]
        for m, layer in zip(self.modules, layers):
            if not isinstance(layer, PaluLatentLayer) or layer.kv_start is None or not (
                    layer.k.n_quantized == layer.get_seq_length() if m.quant.enabled else not layer.k.n_quantized):
                raise ValueError("the cache must hold every layer's latents in the model's format (all quantized with "
                                 "latent quantization, else all fp) with kv_start set (a prefill with left padding "
                                 "only), as PaluAttention leaves it")
        starts = layers[0].kv_start.tolist()  # one sync, at setup
        slots = layers[0].get_seq_length()
        self.lengths = [slots - s for s in starts]  # valid slots per sequence
        self.capacity = -(-max(capacity, max(self.lengths) + 1) // cfg.bucket) * cfg.bucket
        # Right-aligned copies: sequence b's valid slots [start_b, S) go to [capacity - n_b, capacity).
        self.k, self.v, self.pos = [], [], []
        for m, layer in zip(self.modules, layers):
            self.k.append(_LatentBuffers(layer.k, m.quant, starts, self.lengths, self.capacity))
            self.v.append(_LatentBuffers(layer.v, m.quant, starts, self.lengths, self.capacity))
            self.pos.append(_right_aligned(layer.positions.view(), starts, self.lengths, self.capacity))
            if consume:
                layer.reset()
        lengths = torch.tensor(self.lengths, device=device)
        self.write_slot = (self.capacity - lengths - 1).to(torch.int64)  # (B,) where the fed token goes
        self.kv_start = torch.zeros(batch, dtype=torch.int32, device=device)  # span-relative, set per span
        self.token = next_token.clone()
        self.position = next_position.view(batch, 1).to(torch.int64).clone()
        self.fed = 0  # tokens fed so far
        self.span = 0
        self._replay = None

    def _body(self, span: int):
        """One step reading the last ``span`` slots of the buffers: feeds self.token, leaves the next one there."""
        model, inner = self.model, self.model.model
        batch = self.token.shape[0]
        first = self.capacity - span
        views = [DecodeSlots(kb.view(first), vb.view(first), pb[:, first:], self.kv_start)
                 for kb, vb, pb in zip(self.k, self.v, self.pos)]

        def body() -> None:
            h = inner.embed_tokens(self.token)
            cos, sin = inner.rotary_emb(h, self.position)
            pos32 = self.position.to(torch.int32)
            for layer, m, kb, vb, pb, slots in zip(inner.layers, self.modules, self.k, self.v, self.pos, views):
                # PaluAttention's decode path, over the span's views instead of a cache layer
                x = layer.input_layernorm(h)
                q = m.q_proj(x).view(batch, 1, m.num_heads, m.head_dim).transpose(1, 2)  # before RoPE
                # (B, 1, R_k), (B, 1, R_v) latents and the position at each sequence's write slot
                _store_latents(x, m, kb, vb, pb, self.write_slot, pos32)
                h = h + m.decode_output(q, (cos, sin), slots)
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            logits = model.lm_head(inner.norm(h))
            self.token.copy_(logits[:, -1].argmax(-1, keepdim=True))
            self.position.add_(1)
            self.write_slot.sub_(1)
            self.kv_start.sub_(1)

        return body

    def step(self) -> torch.Tensor:
        """Feed the current token; returns the next one (B, 1), a view the next step overwrites (clone to keep)."""
        longest = max(self.lengths) + self.fed + 1  # slots of the longest sequence once this token is written
        if longest > self.capacity:
            raise RuntimeError(f"capacity {self.capacity} slots exhausted: create the decoder with a larger capacity")
        span = min(self.capacity, -(-longest // self.cfg.bucket) * self.cfg.bucket)
        self.fed += 1
        if span == self.span and self._replay is not None:
            self._replay()
            return self.token
        # A new span: kv_start[b] = span - (slots of sequence b once this token is written), then one eager step
        # (it builds any kernel not built yet) and a capture for the span's later steps.
        self.kv_start.copy_((span - (self.capacity - self.write_slot)).to(torch.int32))
        self.span = span
        body = self._body(span)
        body()
        self._replay = self._capture(body) if self.cfg.use_graph else body
        return self.token

    def _capture(self, body):
        # The previous span's graph (and its private memory pool) is released before the capture; a pool shared
        # between captures would have to outlive every graph (torch asserts on capturing into a released one).
        self._replay = None
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        return graph.replay

    def nbytes(self, used_only: bool = False) -> int:
        """Bytes of the latent and position buffers: all ``capacity`` slots, or (``used_only``) the slots the
        sequences fill (written tokens included), as :func:`palu.modules.cache.cache_nbytes` counts a cache."""
        if not used_only:
            return sum(b.nbytes() for b in self.k + self.v) + sum(p.numel() * p.element_size() for p in self.pos)
        slots = sum(self.lengths) + self.fed * len(self.lengths)
        return slots * (sum(b.slot_bytes() for b in self.k + self.v) + sum(p.element_size() for p in self.pos))


@dataclasses.dataclass
class GraphGenerateOutput:
    """sequences (B, P + new tokens) int64, as ``model.generate`` returns them; cache_bytes: latent cache bytes
    held at the end (used slots: latents and positions)."""

    sequences: torch.Tensor
    cache_bytes: int


@torch.no_grad()
def graph_generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                   cfg: GraphDecodeConfig) -> GraphGenerateOutput:
    """Greedy generation: input_ids (B, P) (left padding in attention_mask) -> sequences (B, P + max_new_tokens,
    fewer once every sequence has stopped), the tokens ``model.generate(do_sample=False)`` gives, with the steps after
    the prefill replayed from CUDA graphs."""
    device = input_ids.device
    why = graph_decode_problem(model, device, cfg.use_graph, input_ids.shape[1] + cfg.max_new_tokens)
    if why:  # before the prefill: it can take minutes
        raise ValueError(why)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = PaluCache(max_len=input_ids.shape[1])
    out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True)
    first = out.logits[:, -1].argmax(-1, keepdim=True)
    del out
    tokens = [first]
    cache_bytes = cache.nbytes()
    eos = None if cfg.eos_token_id is None else torch.tensor(list(cfg.eos_token_id), device=device)
    if cfg.max_new_tokens > 1:
        decoder = GraphDecoder(model, cache, first, position_ids[:, -1] + 1,
                               input_ids.shape[1] + cfg.max_new_tokens, cfg, consume=True)
        del cache
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        for i in range(cfg.max_new_tokens - 1):
            if eos is not None:
                done |= torch.isin(tokens[-1][:, 0], eos)
                if (i + 1) % cfg.sync_every == 0 and bool(done.all()):
                    break
            tokens.append(decoder.step().clone())
        cache_bytes = decoder.nbytes(used_only=True)
    new = torch.cat(tokens, dim=1)
    if eos is not None:  # tokens after a sequence's first EOS become padding, as generate() pads them
        hit = torch.isin(new, eos)
        after = (hit.int().cumsum(1) - hit.int()) > 0
        new = new.masked_fill(after, cfg.pad_token_id)
    return GraphGenerateOutput(torch.cat([input_ids, new], dim=1), cache_bytes)
