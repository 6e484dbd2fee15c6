"""compress -> save -> `import palu; AutoModelForCausalLM.from_pretrained(dump)` -> identical logits and generations."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import palu
from palu import LatentQuantConfig, configure, save_palu_model
from palu.integrations.hf import is_palu_dump
from palu.modules import PaluAttention

from .helpers import compress_plain, tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_dump_reload_identical_logits_and_generation(tmp_path, arch):
    model = compress_plain(tiny_model(arch, tie_word_embeddings=(arch == "llama")), ratio=0.5, multiple=4)
    out = save_palu_model(model, None, tmp_path / "dump", {"ranks.json": {"ranks": model.config.palu["ranks"]}})
    assert is_palu_dump(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "palu" and cfg["palu"]["ranks"] == model.config.palu["ranks"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(reloaded.model.layers[0].self_attn, PaluAttention)
    x = torch.randint(3, 128, (2, 17))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)
        g1 = reloaded.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)
        g0 = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)
    assert torch.equal(g0, g1)


def test_hadamard_state_survives_reload(tmp_path):
    model = compress_plain(tiny_model(), ratio=0.5, multiple=4)
    configure(model, quant=LatentQuantConfig(hadamard=True))
    out = save_palu_model(model, None, tmp_path / "dump", {})
    reloaded = palu.load_palu_model(out)
    assert reloaded.config.palu["hadamard_fused"]
    x = torch.randint(3, 128, (1, 9))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)


def test_save_refuses_non_empty_dir_and_leaves_no_partial_dump(tmp_path):
    model = compress_plain(tiny_model(), ratio=0.5, multiple=4)
    target = tmp_path / "dump"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        save_palu_model(model, None, target, {})
    assert (target / "keep.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["dump"]  # no temp dir left behind
