"""GPU: the Triton backend, the torch backend and the simulation path give the same logits."""
import copy

import pytest
import torch

from palu import LatentQuantConfig, PaluCache, configure

from .helpers import compress_plain, tiny_model

pytestmark = pytest.mark.gpu


def _decode_logits(model, x, mask, forced):
    """Prefill x, then decode the given tokens (teacher forcing keeps both backends on one sequence)."""
    cache = PaluCache()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(x, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    for step in range(forced.shape[1]):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = (mask.cumsum(-1) - 1)[:, -1:]
        out = model(forced[:, step : step + 1], attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1).float()


def _triton_vs_torch(model, x, mask, forced, **triton_options) -> torch.Tensor:
    """Relative error of the Triton backend's logits (configured with triton_options) against the torch one's."""
    with torch.no_grad():
        configure(model, backend="triton", **triton_options)
        tri = _decode_logits(model, x, mask, forced)
        configure(model, backend="torch")  # the torch backend ignores the Triton options
        ref = _decode_logits(model, x, mask, forced)
    return (tri - ref).norm() / ref.norm()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [16, 4, 3, 2])
@pytest.mark.parametrize("head_dim,group_size", [(64, 1), (128, 2)])
def test_triton_and_torch_backends_agree(dtype, bits, head_dim, group_size):
    base = tiny_model("llama", num_heads=8, num_kv_heads=2, head_dim=head_dim, hidden_size=256)
    ranks = {str(i): {"k": [40, 24][: 2 // group_size], "v": [24, 56][: 2 // group_size]} for i in range(2)}
    model = compress_plain(copy.deepcopy(base), head_group_size=group_size, ranks=ranks).to("cuda", dtype)
    configure(model, quant=LatentQuantConfig(bits=bits, group_size=8, residual_length=4 if bits < 16 else 0))
    x = torch.randint(3, 128, (3, 37), device="cuda")
    mask = torch.ones_like(x)
    mask[0, :5] = 0  # left padding
    forced = torch.randint(3, 128, (3, 16), device="cuda")
    rel = _triton_vs_torch(model, x, mask, forced)
    assert rel < (2e-2 if dtype == torch.bfloat16 else 5e-3), rel


def test_generate_on_gpu_matches_simulation():
    model = compress_plain(tiny_model("llama", num_kv_heads=2, head_dim=32), ratio=0.5, multiple=8).to("cuda")
    x = torch.randint(3, 128, (2, 12), device="cuda")
    with torch.no_grad():
        lat = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False)
        configure(model, cache_mode="simulate")
        sim = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False)
    assert torch.equal(lat, sim)


@pytest.mark.parametrize("bits", [16, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fused_kernel", ["fold", "reconstruct", "single_pass_ws"])
def test_each_named_decode_path_agrees_with_torch(fused_kernel, dtype, bits):
    """configure(fused_kernel=...) on a shape every path takes (n_rep 1, equal ranks: key a power of two, value x64,
    head_dim 64, groups of 4): same logits as the torch backend. single_pass_ws needs sm_90; with 4-bit latents
    (quant groups of 8, a 4-token full-precision window) it is the quantized Gluon kernel plus the fp16 one."""
    if fused_kernel == "single_pass_ws" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon single-pass kernel needs an sm_90 GPU")
    base = tiny_model("llama", num_heads=8, num_kv_heads=8, head_dim=64, hidden_size=512)
    ranks = {str(i): {"k": [64, 64], "v": [192, 192]} for i in range(2)}
    model = compress_plain(copy.deepcopy(base), head_group_size=4, ranks=ranks).to("cuda", dtype)
    if bits < 16:
        configure(model, quant=LatentQuantConfig(bits=bits, group_size=8, residual_length=4))
    x = torch.randint(3, 128, (3, 150), device="cuda")
    mask = torch.ones_like(x)
    mask[1, :7] = 0  # left padding
    forced = torch.randint(3, 128, (3, 8), device="cuda")
    rel = _triton_vs_torch(model, x, mask, forced, fused_kernel=fused_kernel)
    assert rel < (2e-2 if dtype == torch.bfloat16 else 5e-3), rel
