"""palu.graph_decode: greedy decoding over right-aligned latent buffers, one CUDA graph per span of slots.

On CPU the same steps run eagerly (use_graph=False) through the Triton interpreter; the GPU test replays graphs."""
from __future__ import annotations

import copy

import pytest
import torch

from palu import LatentQuantConfig, configure
from palu.graph_decode import GraphDecodeConfig, GraphDecoder, graph_generate
from palu.modules.cache import PaluCache

from .helpers import compress_plain, tiny_model


def _model(arch: str = "llama", v_rank: int = 24, device: str = "cpu", dtype=torch.float32, **kw):
    """A tiny compressed model, both KV heads in one group (J-LRD); v ranks above head_dim 16 keep o_proj unfolded
    (the merge's up-projection path)."""
    base = tiny_model(arch, **kw)
    ranks = {str(i): {"k": [20], "v": [v_rank]} for i in range(2)}
    return compress_plain(copy.deepcopy(base), head_group_size=2, ranks=ranks).to(device, dtype)


def _prompts(device: str = "cpu"):
    torch.manual_seed(1)
    x = torch.randint(3, 128, (3, 11), device=device)
    mask = torch.ones_like(x)
    mask[0, :4] = 0  # left padding
    mask[2, :1] = 0
    return x, mask


def _generate(model, x, mask, new: int):
    with torch.no_grad():
        return model.generate(x, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                              eos_token_id=None)


@pytest.mark.parametrize("arch,v_rank,num_heads", [("llama", 24, 4), ("llama", 12, 4), ("qwen2", 24, 4),
                                                    ("mistral", 24, 2)],
                         ids=["unfolded-gqa", "folded-gqa", "qwen2-bias", "mistral-mha"])
def test_eager_steps_give_generate_tokens(arch, v_rank, num_heads):
    """The graph decoder's step, run eagerly with a span of 4 slots (a new span every 4 tokens), gives
    model.generate's greedy tokens for a left-padded batch: folded and unfolded o_proj, GQA, k/v bias."""
    model = _model(arch, v_rank, num_heads=num_heads)
    x, mask = _prompts()
    want = _generate(model, x, mask, 13)
    got = graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=13, bucket=4, use_graph=False))
    assert torch.equal(got.sequences, want)
    # latents and positions of the used slots: 11 + 13 - 1 written per sequence, minus the left padding
    per_slot = 2 * (20 + v_rank) * 4 + 2 * 4
    assert got.cache_bytes == per_slot * (3 * 23 - 4 - 1)


@pytest.mark.parametrize("bits,sym", [(4, False), (2, True), (8, False)])
def test_eager_steps_with_quantized_latents(bits, sym):
    """Quantized latents (no full-precision window): each new token is quantized into its slot of the packed
    buffers as the eager cache quantizes it, and the tokens are model.generate's."""
    model = _model()
    configure(model, quant=LatentQuantConfig(bits=bits, group_size=8, sym=sym))
    x, mask = _prompts()
    want = _generate(model, x, mask, 10)
    got = graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=10, bucket=4, use_graph=False))
    assert torch.equal(got.sequences, want)
    words, groups = (20 * bits + 31) // 32 + (24 * bits + 31) // 32, 20 // 8 + 1 + 24 // 8
    per_slot = 2 * (words * 4 + groups * 4 * (1 if sym else 2) + 4)  # codes, fp32 scale (and zero), position
    assert got.cache_bytes == per_slot * (3 * 20 - 4 - 1)


def _record_decoders(monkeypatch) -> list:
    """A list that collects every GraphDecoder graph_generate creates from now on."""
    import palu.graph_decode as gd

    decoders = []

    class Recording(gd.GraphDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            decoders.append(self)

    monkeypatch.setattr(gd, "GraphDecoder", Recording)
    return decoders


@pytest.mark.parametrize("bits,fused", [(16, False), (16, True), (4, True)], ids=["fp-write", "fp-fused", "4bit"])
def test_kernel_writes_fill_the_buffers_as_indexing_does(bits, fused, monkeypatch):
    """The Triton writes the decoder runs on CUDA (here through the interpreter) fill every buffer (latents or codes /
    scales / zeros, positions) as plain torch does after a few steps: the slot writes (kernels.slot_write) bit-equal;
    the fused down-projection and write of fp latents (kernels.latent_down) equal to fp32 rounding (its dot sums in
    another order than F.linear), positions bit-equal. Tokens alone would not show a wrong latent: a tiny model's
    greedy tokens survived a key latent left unwritten."""
    import kernels.latent_down as ld
    import palu.graph_decode as gd

    decoders = _record_decoders(monkeypatch)
    monkeypatch.setattr(gd, "FUSED_DOWN", fused)
    model = _model()
    if bits < 16:
        configure(model, quant=LatentQuantConfig(bits=bits, group_size=8))
    x, mask = _prompts()
    cfg = GraphDecodeConfig(max_new_tokens=6, bucket=4, use_graph=False)
    want = graph_generate(model, x, mask, cfg).sequences
    launches, project = [], ld.project_latents

    def recording(*args, **kwargs):
        launches.append(1)
        return project(*args, **kwargs)

    monkeypatch.setattr(gd, "_kernels_for", lambda t: True)
    monkeypatch.setattr(ld, "project_latents", recording)
    assert torch.equal(graph_generate(model, x, mask, cfg).sequences, want)
    assert bool(launches) == (fused and bits == 16)  # the fused launch ran exactly where it applies
    ref, kernel = decoders
    for a, b in zip(ref.k + ref.v, kernel.k + kernel.v):
        assert a.bufs.keys() == b.bufs.keys() == ({"fp"} if bits == 16 else {"codes", "scale", "zero"})
        for name in a.bufs:
            if fused and bits == 16:
                torch.testing.assert_close(a.bufs[name], b.bufs[name], atol=1e-5, rtol=1e-5)
            else:
                assert torch.equal(a.bufs[name], b.bufs[name]), name
    for a, b in zip(ref.pos, kernel.pos):
        assert torch.equal(a, b)
    assert int(ref.write_slot.min()) < ref.capacity - 11  # the steps wrote before the prompt's slots


def test_eos_pads_and_stops():
    model = _model()
    x, mask = _prompts()
    free = graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=9, bucket=4, use_graph=False)).sequences
    eos = int(free[0, 11 + 2])  # sequence 0's third new token
    got = graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=9, bucket=4, use_graph=False,
                                                           eos_token_id=[eos], pad_token_id=0, sync_every=1)).sequences
    hit = (free[:, 11:] == eos).int()
    after = (hit.cumsum(1) - hit) > 0
    expect = free[:, 11:].masked_fill(after, 0)
    assert torch.equal(got[:, 11:], expect[:, : got.shape[1] - 11])
    assert got[0, 11 + 3:].eq(0).all()


def test_refusals_come_before_the_prefill():
    model = _model()
    x, mask = _prompts()
    configure(model, quant=LatentQuantConfig(bits=4, residual_length=4))
    with pytest.raises(ValueError, match="residual_length"):
        graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=4, use_graph=False))
    configure(model, quant=LatentQuantConfig(bits=16))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=4, use_graph=True))
    configure(model, backend="torch")
    with pytest.raises(ValueError, match="Triton decode kernels"):
        graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=4, use_graph=False))
    with pytest.raises(ValueError, match="max_new_tokens"):
        GraphDecodeConfig(max_new_tokens=0)


def test_sliding_window_beyond_the_length_is_refused():
    model = _model("mistral", num_heads=2, sliding_window=12)
    x, mask = _prompts()
    with pytest.raises(ValueError, match="sliding window"):
        graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=4, use_graph=False))


def test_capacity_is_enforced():
    model = _model()
    x, mask = _prompts()
    cache = PaluCache()
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(x, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        dec = GraphDecoder(model, cache, out.logits[:, -1:].argmax(-1), pos[:, -1] + 1, 12,
                           GraphDecodeConfig(max_new_tokens=4, bucket=4, use_graph=False))
        assert dec.capacity == 12  # a multiple of the bucket, at least one slot past the longest prompt (11)
        dec.step()
        with pytest.raises(RuntimeError, match="capacity"):
            dec.step()


def test_consume_frees_the_cache_and_decodes_the_same():
    model = _model()
    x, mask = _prompts()
    tokens = []
    for consume in (False, True):
        cache = PaluCache()
        with torch.no_grad():
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(x, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
            dec = GraphDecoder(model, cache, out.logits[:, -1:].argmax(-1), pos[:, -1] + 1, 16,
                               GraphDecodeConfig(max_new_tokens=4, bucket=4, use_graph=False), consume=consume)
            assert (cache.nbytes() == 0) == consume
            tokens.append(torch.cat([dec.step().clone() for _ in range(3)], dim=1))
    assert torch.equal(tokens[0], tokens[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("v_rank,bits", [(24, 16), (12, 16), (24, 4)], ids=["unfolded", "folded", "4-bit"])
def test_gpu_graphs_replay_the_eager_steps(dtype, v_rank, bits):
    """Replayed graphs (a new capture every 4 tokens) give exactly the tokens of the same steps run eagerly (same
    spans, so the same kernels and splits), and fp16 ones those of eager model.generate (other splits: equal unless a
    near-tie flips)."""
    model = _model("llama", v_rank, device="cuda", dtype=dtype)
    if bits < 16:
        configure(model, quant=LatentQuantConfig(bits=bits, group_size=8))
    x, mask = _prompts("cuda")
    eager = graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=20, bucket=4, use_graph=False)).sequences
    graphed = graph_generate(model, x, mask, GraphDecodeConfig(max_new_tokens=20, bucket=4)).sequences
    assert torch.equal(graphed, eager)
    if dtype == torch.float16 and bits == 16:
        assert torch.equal(graphed, _generate(model, x, mask, 20))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_fused_down_projection_gives_the_same_tokens(dtype, monkeypatch):
    """With kernels.latent_down (both down-projections and the writes in one launch), replayed graphs give the
    tokens of the cuBLAS projections and slot writes (the latents differ by fp32 summation order: equal unless a
    near-tie flips), and every buffer matches to the latents' rounding."""
    import palu.graph_decode as gd

    decoders = _record_decoders(monkeypatch)
    model = _model("llama", 24, device="cuda", dtype=dtype)
    x, mask = _prompts("cuda")
    cfg = GraphDecodeConfig(max_new_tokens=20, bucket=4)
    monkeypatch.setattr(gd, "FUSED_DOWN", False)
    want = graph_generate(model, x, mask, cfg).sequences
    monkeypatch.setattr(gd, "FUSED_DOWN", True)
    assert torch.equal(graph_generate(model, x, mask, cfg).sequences, want)
    ref, fused = decoders
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    for a, b in zip(ref.k + ref.v, fused.k + fused.v):
        torch.testing.assert_close(a.bufs["fp"], b.bufs["fp"], atol=tol, rtol=tol)
    for a, b in zip(ref.pos, fused.pos):
        assert torch.equal(a, b)
