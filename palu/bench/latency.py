"""Decode latency of one attention module or a whole model: Palu latent cache vs the uncompressed baseline.

Weights and cached states are random (speed and memory do not depend on values); the
modules are the same ones the accuracy scripts run: transformers' LlamaAttention /
LlamaForCausalLM for the baseline, :class:`PaluAttention` swapped in for Palu.
Caches are filled directly with ``prompt_len`` random tokens instead of running a prefill.
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
from typing import Any, Callable, Optional

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import Cache, StaticLayer

from ..config import LatentQuantConfig, PaluConfig
from ..integrations.hf import apply_palu, configure, fused_kernel_flags_problem, palu_modules
from ..modules.attention import apply_rope
from ..modules.cache import PaluCache, cache_nbytes, latent_layer_for, quantize_into_views
from .timing import peak_memory_bytes, peak_memory_reset, time_fn

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """Llama-2-7B shape by default; ranks are totals per layer, split equally over groups."""

    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    rank_k: int = 1024
    rank_v: int = 3072
    group_size: int = 4
    prompt_len: int = 65536
    batch_size: int = 1
    lt_bits: int = 16
    lt_group_size: int = 32
    dtype: str = "float16"
    rope_theta: float = 10000.0
    backend: str = "auto"
    fused_kernel: str = "auto"  # Palu's decode path on the Triton backend: a key of kernels.FUSED_KERNELS
    cuda_graph: bool = False
    warmup: int = 5
    reps: int = 50
    device: str = "cuda"

    def __post_init__(self) -> None:
        why = fused_kernel_flags_problem(self.fused_kernel, self.backend, self.device)
        if why:
            raise ValueError(why)
        if self.cuda_graph and not str(self.device).startswith("cuda"):
            raise ValueError(f"--cuda_graph needs a CUDA device, got --device {self.device}: drop --cuda_graph")
        n_groups = self.num_kv_heads // self.group_size
        if self.num_kv_heads % self.group_size:
            raise ValueError(f"group_size {self.group_size} must divide num_kv_heads {self.num_kv_heads}")
        for name in ("rank_k", "rank_v"):
            total = getattr(self, name)
            if total % n_groups or not 0 < total // n_groups <= self.group_size * self.head_dim:
                raise ValueError(f"--{name} {total} must split into {n_groups} equal group ranks in [1, {self.group_size * self.head_dim}]")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def decode_slots(self) -> int:
        """Cache slots beyond prompt_len that a timed run may append (warm-up, repeats, margin)."""
        return self.warmup + self.reps + 8

    def llama_config(self, num_layers: Optional[int] = None) -> LlamaConfig:
        return LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, num_hidden_layers=num_layers or self.num_layers,
            vocab_size=32000, max_position_embeddings=max(4096, self.prompt_len + 1024),
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta}, attn_implementation="sdpa",
        )

    def palu_config(self, num_layers: int) -> PaluConfig:
        n_groups = self.num_kv_heads // self.group_size
        ranks = {str(i): {"k": [self.rank_k // n_groups] * n_groups, "v": [self.rank_v // n_groups] * n_groups}
                 for i in range(num_layers)}
        return PaluConfig(head_group_size=self.group_size, ranks=ranks)

    def quant(self) -> LatentQuantConfig:
        return LatentQuantConfig(bits=self.lt_bits, group_size=self.lt_group_size)


def _random_init(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, p.shape[-1] ** -0.5)
            elif p.dim() == 1:
                p.fill_(1.0)


def build_model(cfg: LatencyConfig, num_layers: Optional[int] = None, palu: bool = False) -> LlamaForCausalLM:
    from transformers import AutoModelForCausalLM

    with torch.device(cfg.device):
        model = AutoModelForCausalLM.from_config(cfg.llama_config(num_layers), dtype=cfg.torch_dtype).eval()
    if palu:
        apply_palu(model, cfg.palu_config(model.config.num_hidden_layers))
        for m in palu_modules(model):  # random factors: speed does not depend on the values
            _random_init(m.k_proj)
            _random_init(m.v_proj)
        configure(model, quant=cfg.quant(), backend=cfg.backend, fused_kernel=cfg.fused_kernel)
    return model


def filled_baseline_cache(cfg: LatencyConfig, num_layers: int, kind: str, extra: int) -> Cache:
    """DynamicCache or a static cache holding prompt_len random K/V per layer."""
    shape = (cfg.batch_size, cfg.num_kv_heads, cfg.prompt_len, cfg.head_dim)
    if kind == "dynamic":
        cache = DynamicCache()
        for i in range(num_layers):
            k = torch.randn(shape, device=cfg.device, dtype=cfg.torch_dtype)
            cache.update(k, torch.randn_like(k), i)
        return cache
    layers = []
    for _ in range(num_layers):
        layer = StaticLayer(max_cache_len=cfg.prompt_len + extra)
        k = torch.empty((cfg.batch_size, cfg.num_kv_heads, 1, cfg.head_dim), device=cfg.device, dtype=cfg.torch_dtype)
        layer.lazy_initialization(k, k)
        layer.keys.normal_()
        layer.values.normal_()
        layer.cumulative_length.fill_(cfg.prompt_len)
        layers.append(layer)
    return Cache(layers=layers)


def filled_palu_cache(model: torch.nn.Module, cfg: LatencyConfig, extra: int) -> Cache:
    """A cache whose Palu layers hold prompt_len random latents (quantized as configured), sized
    once for ``extra`` more tokens (like the baseline's static cache: no growth while timing)."""
    cache = PaluCache(max_len=cfg.prompt_len + extra)
    pos = torch.arange(cfg.prompt_len, device=cfg.device, dtype=torch.int32).expand(cfg.batch_size, -1)
    for m in palu_modules(model):
        layer = latent_layer_for(cache, m.layer_idx, m.quant)
        chunk = 2048  # bounded temporaries while filling (torch quantization of a chunk holds fp32 copies of it)
        for s in range(0, cfg.prompt_len, chunk):
            n = min(chunk, cfg.prompt_len - s)
            k = torch.randn(cfg.batch_size, n, m.k_proj.rank_total, device=cfg.device, dtype=cfg.torch_dtype)
            v = torch.randn(cfg.batch_size, n, m.v_proj.rank_total, device=cfg.device, dtype=cfg.torch_dtype)
            layer.append_latents(k, v, pos[:, s : s + n])
        layer.kv_start = torch.zeros(cfg.batch_size, dtype=torch.int32, device=cfg.device)
    return cache


def _decode_step(model, cache: Cache, cfg: LatencyConfig, start: int):
    """One-token forward; returns a closure that advances the position each call."""
    token = torch.randint(0, 32000, (cfg.batch_size, 1), device=cfg.device)
    state = {"pos": start}

    def step():
        pos = torch.full((cfg.batch_size, 1), state["pos"], device=cfg.device, dtype=torch.long)
        state["pos"] += 1
        return model(token, position_ids=pos, past_key_values=cache, use_cache=True)

    return step


@torch.no_grad()
def model_decode(cfg: LatencyConfig, palu: bool, cache_kind: str = "dynamic", num_layers: Optional[int] = None) -> dict[str, Any]:
    """Time whole-model decoding at prompt_len with a pre-filled cache; report tokens/s and peak memory.

    Eager (default): ``model.forward`` appending one token per call, as ``generate()`` runs it. With
    ``cfg.cuda_graph``: every layer's step in one CUDA graph over a fixed cache (the baseline's is then a static
    cache: a DynamicCache grows by concatenation, which a graph cannot replay), see :mod:`.model_step`.
    """
    from .model_step import static_model_step  # (it imports this module)

    if cfg.cuda_graph and not palu:
        cache_kind = "static"
    model = build_model(cfg, num_layers, palu)
    n_layers = model.config.num_hidden_layers
    peak_memory_reset(cfg.device)
    extra = cfg.decode_slots
    cache = filled_palu_cache(model, cfg, extra) if palu else filled_baseline_cache(cfg, n_layers, cache_kind, extra)
    if cfg.cuda_graph:
        token = torch.randint(0, model.config.vocab_size, (cfg.batch_size, 1), device=cfg.device)
        step = graph_replay(static_model_step(model, cache, token, cfg, palu))
    else:
        step = _decode_step(model, cache, cfg, cfg.prompt_len)
    timing = time_fn(step, cfg.warmup, cfg.reps, cfg.device)
    out = {
        "palu": palu, "cache": "palu_latent" if palu else cache_kind, "layers": n_layers, "cuda_graph": cfg.cuda_graph,
        "time_per_token_ms": timing["median_ms"], "tokens_per_s": cfg.batch_size * 1e3 / timing["median_ms"],
        "cache_bytes": cache_nbytes(cache), "peak_memory_bytes": peak_memory_bytes(cfg.device), "timing": timing,
    }
    del model, cache
    if str(cfg.device).startswith("cuda"):
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def graph_decoder_decode(cfg: LatencyConfig, bucket: int = 256) -> dict[str, Any]:
    """Time Palu's whole-model decoding through :class:`palu.graph_decode.GraphDecoder` (what
    :func:`palu.graph_decode.graph_generate` runs after its prefill) over a random cache of prompt_len slots: every
    timed step appends its token, advances on the device and replays the span's CUDA graph (on CUDA; eager
    elsewhere). The first step of a span runs eagerly and captures the graph: it falls in the warm-up unless the
    timed steps cross a multiple of ``bucket`` slots."""
    from ..graph_decode import GraphDecodeConfig, GraphDecoder

    on_cuda = str(cfg.device).startswith("cuda")
    model = build_model(cfg, None, True)
    peak_memory_reset(cfg.device)
    steps = cfg.warmup + cfg.reps
    cache = filled_palu_cache(model, cfg, 0)
    token = torch.randint(0, model.config.vocab_size, (cfg.batch_size, 1), device=cfg.device)
    position = torch.full((cfg.batch_size,), cfg.prompt_len, dtype=torch.long, device=cfg.device)
    decoder = GraphDecoder(model, cache, token, position, cfg.prompt_len + steps,
                           GraphDecodeConfig(max_new_tokens=steps, bucket=bucket, use_graph=on_cuda), consume=True)
    del cache  # the decoder holds right-aligned copies
    if on_cuda:
        torch.cuda.empty_cache()
    timing = time_fn(decoder.step, cfg.warmup, cfg.reps, cfg.device)
    out = {
        "palu": True, "cache": "palu_graph_decode", "layers": model.config.num_hidden_layers, "cuda_graph": on_cuda,
        "bucket": bucket, "time_per_token_ms": timing["median_ms"],
        "tokens_per_s": cfg.batch_size * 1e3 / timing["median_ms"], "cache_bytes": decoder.nbytes(),
        "peak_memory_bytes": peak_memory_bytes(cfg.device), "timing": timing,
    }
    del model, decoder
    if on_cuda:
        torch.cuda.empty_cache()
    return out


def attention_setup(cfg: LatencyConfig, palu: bool, cache_kind: str = "static"):
    """(model, attention module, rotary embedding, filled cache, input x (B, 1, d_model)) of a 1-layer model."""
    model = build_model(cfg, 1, palu)
    extra = cfg.decode_slots
    cache = filled_palu_cache(model, cfg, extra) if palu else filled_baseline_cache(cfg, 1, cache_kind, extra)
    x = torch.randn(cfg.batch_size, 1, cfg.hidden_size, device=cfg.device, dtype=cfg.torch_dtype)
    return model, model.model.layers[0].self_attn, model.model.rotary_emb, cache, x


@torch.no_grad()
def attention_decode(cfg: LatencyConfig, palu: bool, cache_kind: str = "static") -> dict[str, Any]:
    """Time one decode step of a single attention module (layer 0 of a 1-layer model)."""
    model, attn, rotary, cache, x = attention_setup(cfg, palu, cache_kind)
    state = {"pos": cfg.prompt_len}

    def step():
        pos = torch.full((cfg.batch_size, 1), state["pos"], device=cfg.device, dtype=torch.long)
        state["pos"] += 1
        return attn(x, position_embeddings=rotary(x, pos), attention_mask=None, past_key_values=cache, position_ids=pos)

    if cfg.cuda_graph:
        step = graphed_step(attn, cache, x, rotary, cfg, palu)
    timing = time_fn(step, cfg.warmup, cfg.reps, cfg.device)
    out = {"palu": palu, "cache": "palu_latent" if palu else cache_kind, "time_ms": timing["median_ms"],
           "cache_bytes": cache_nbytes(cache), "timing": timing}
    del model, cache
    return out


def static_step_body(attn, cache: Cache, x, rotary, cfg: LatencyConfig, palu: bool):
    """One decode step of layer 0 over a fixed cache, with static shapes (for CUDA graphs and profiling): a
    closure giving the module output (B, 1, d_model) for the fixed input ``x`` (B, 1, d_model); see
    :func:`static_attention`."""
    attend = static_attention(attn, cache.layers[0], *step_rope(rotary, cfg), cfg, palu)
    return lambda: attend(x)


def step_rope(rotary, cfg: LatencyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, head_dim) of a static step's position, prompt_len - 1 (the slot every replay rewrites)."""
    pos = torch.full((cfg.batch_size, 1), cfg.prompt_len - 1, device=cfg.device, dtype=torch.long)
    like = torch.empty(cfg.batch_size, 1, cfg.hidden_size, device=cfg.device, dtype=cfg.torch_dtype)  # dtype, device
    return rotary(like, pos)


def static_attention(attn, layer, cos, sin, cfg: LatencyConfig, palu: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """One attention module's decode step over its cache layer's fixed slots, as a function of its input
    x (B, 1, d_model) -> output (B, 1, d_model): all four projections, RoPE (cos / sin of the step's
    position, (B, 1, head_dim)), the new token's K/V (or latents) written into the layer's last slot and
    attention over all prompt_len slots.

    Graphs need static shapes, so every replay rewrites the same slot instead of appending: the
    cache holds prompt_len slots, the last one standing for the new token (Palu: in the fp window,
    or quantized into the packed part when the window is empty, as in a real step).
    """
    b, hd = cfg.batch_size, cfg.head_dim

    def query(x):  # (B, H, 1, D) before RoPE
        return attn.q_proj(x).view(b, 1, cfg.num_heads, hd).transpose(1, 2)

    if palu:
        def body(x):  # the decode path of PaluAttention.forward: RoPE of q inside the kernels
            q = query(x)
            _write_last_slot(layer.k, attn.k_proj.down(x))
            _write_last_slot(layer.v, attn.v_proj.down(x))
            return attn.decode_output(q, (cos, sin), layer)
    else:
        keys, values = layer.keys[:, :, : cfg.prompt_len], layer.values[:, :, : cfg.prompt_len]

        def body(x):
            q = apply_rope(query(x), cos, sin)
            k = apply_rope(attn.k_proj(x).view(b, 1, cfg.num_kv_heads, hd).transpose(1, 2), cos, sin)
            keys[:, :, -1:].copy_(k)
            values[:, :, -1:].copy_(attn.v_proj(x).view(b, 1, cfg.num_kv_heads, hd).transpose(1, 2))
            o = torch.nn.functional.scaled_dot_product_attention(
                q, keys, values, scale=attn.scaling, enable_gqa=cfg.num_heads != cfg.num_kv_heads)
            return attn.o_proj(o.transpose(1, 2).reshape(b, 1, -1))

    return body


def graphed_step(attn, cache: Cache, x, rotary, cfg: LatencyConfig, palu: bool):
    """CUDA-graph replay of :func:`static_step_body`."""
    return graph_replay(static_step_body(attn, cache, x, rotary, cfg, palu))


def graph_replay(body: Callable[[], Any]) -> Callable[[], None]:
    """Capture ``body`` (static shapes, no host sync; on CUDA: LatencyConfig refuses cuda_graph elsewhere) in a
    CUDA graph after three warm-up calls on a side stream (they build the Triton kernels and settle the
    allocator); returns the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def _write_last_slot(store, latent: torch.Tensor) -> None:
    """Overwrite a LatentStore's newest slot with ``latent`` (B, 1, R), in place (graph-capturable)."""
    if store.fp.length:
        store.fp.view()[:, -1:].copy_(latent)
        return
    zero = store.zero.view()[:, -1:] if store.zero.length else None
    quantize_into_views(latent, store.quant, store.codes.view()[:, -1:], store.scale.view()[:, -1:], zero)


def run_rounds(runs: list[Callable[[], dict]], rounds: int) -> list[list[dict]]:
    """Each of ``runs`` (zero-argument timings, baseline first) once per round, ``rounds`` times; every other round
    in reverse order, so that neither side always runs right after the other (a warm clock, a full allocator pool).
    Returns the rounds' results, each in the order of ``runs``."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out = []
    for r in range(rounds):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        results = {i: runs[i]() for i in order}
        out.append([results[i] for i in range(len(runs))])
    return out


def speedup_summary(rounds: list[list[dict]], key: str) -> dict[str, Any]:
    """Speed-up of Palu (each round's last run) over the baseline (its first run) per round, and the median, min and
    max over rounds: with a fresh model and cache in every round, their spread is the run-to-run noise that one
    run's median cannot show."""
    per_round = [runs[0][key] / runs[-1][key] for runs in rounds]
    return {"per_round": per_round, "median": statistics.median(per_round), "min": min(per_round),
            "max": max(per_round)}


@torch.no_grad()
def max_batch(cfg: LatencyConfig, palu: bool, limit: int = 512) -> dict[str, Any]:
    """Largest batch whose cache at prompt_len fits and decodes a token, found by real allocation.

    A batch-1 run measures the model's own peak and the cache bytes per sequence; the
    prediction from free memory is then checked upward and downward (a few trials, not a
    bisection over the whole range).
    """

    def fits(batch: int) -> bool:
        try:
            model_decode(dataclasses.replace(cfg, batch_size=batch, warmup=0, reps=1, cuda_graph=False), palu)
            return True
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False

    # eager: what fits is the cache and one step's temporaries, not a graph's private pool
    one = model_decode(dataclasses.replace(cfg, batch_size=1, warmup=0, reps=1, cuda_graph=False), palu)
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    guess = max(1, min(limit, int((total - one["peak_memory_bytes"]) // max(one["cache_bytes"], 1)) + 1))
    batch = guess
    trials = []
    while batch > 0 and not fits(batch):
        trials.append((batch, False))
        batch -= 1
    while batch < limit and fits(batch + 1):
        trials.append((batch + 1, True))
        batch += 1
    return {"palu": palu, "lt_bits": cfg.lt_bits if palu else 16, "prompt_len": cfg.prompt_len, "max_batch": batch,
            "cache_bytes_per_sequence": one["cache_bytes"], "predicted": guess, "trials": trials}
