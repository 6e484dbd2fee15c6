"""Budget-driven ranks + bits (palu.budget) and the frontier script, on tiny random models (CPU, offline)."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from palu import LatentQuantConfig, RankSearchConfig, configure, search_ranks
from palu.adapters import attention_shape
from palu.budget import (
    KVBudgetConfig,
    compress_to_budget,
    fit_allocation,
    fp16_kv_bytes_per_token,
    gaussian_rel_mse,
    latent_kv_bytes_per_token,
    measure_latent_bytes_per_token,
    quant_noise,
    search_budget,
)
from palu.config import CalibrationConfig, DecompositionConfig
from palu.pipeline import CompressionConfig

from .helpers import tiny_model

REPO = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog while seven red birds sing in tall green trees".split()


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS, ".", "\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(WORDS), (3000,), generator=gen).tolist()
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(" ".join(WORDS[i] for i in idx))
    return path


def _compression(corpus: Path, search: str = "sensitivity", method: str = "whiten_fisher") -> CompressionConfig:
    return CompressionConfig("tiny", CalibrationConfig(str(corpus), 2, 2, 64, 0), RankSearchConfig(search, 0.5, 4),
                             DecompositionConfig(method, 1))


def test_config_validates_and_round_trips():
    cfg = KVBudgetConfig(fp16_fraction=0.25, bits_candidates=(4, 2), scorer="ppl")
    assert KVBudgetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({}, {"fp16_fraction": 0.2, "bytes_per_token": 10.0}, {"fp16_fraction": 1.5}, {"bytes_per_token": 0.0},
                {"fp16_fraction": 0.2, "bits_candidates": (5,)}, {"fp16_fraction": 0.2, "scorer": "x"}):
        with pytest.raises(ValueError):
            KVBudgetConfig(**bad)


def test_latent_bytes_match_hand_count():
    shape = attention_shape(tiny_model().config)  # 2 layers, 2 KV heads of 16
    ranks = {"0": {"k": [8, 4], "v": [4, 4]}, "1": {"k": [16, 4], "v": [4, 8]}}  # latent rows: 12, 8, 20, 12
    assert fp16_kv_bytes_per_token(shape) == 256
    assert latent_kv_bytes_per_token(shape, ranks, LatentQuantConfig(), 10) == 2 * 52 + 4 * 2
    # 4-bit, groups of 8, residual 2 of 10 tokens: row of R -> 4·ceil(R/8) + 2·2·ceil(R/8) quantized, 2R full precision
    quant = LatentQuantConfig(bits=4, group_size=8, residual_length=2)
    q_rows = sum(8 * -(-r // 8) for r in (12, 8, 20, 12))
    assert latent_kv_bytes_per_token(shape, ranks, quant, 10) == (8 * q_rows + 2 * 2 * 52) / 10 + 8


@pytest.mark.parametrize("quant", [LatentQuantConfig(), LatentQuantConfig(bits=3, group_size=8, residual_length=5),
                                   LatentQuantConfig(bits=2, group_size=4, sym=True, hadamard=True)])
def test_latent_bytes_equal_a_real_cache(compressed_pair, quant):
    _, model = compressed_pair
    configure(model, quant=quant)
    shape = attention_shape(model.config)
    ranks = {str(m.layer_idx): {"k": m.k_proj.ranks, "v": m.v_proj.ranks} for m in model.modules() if hasattr(m, "k_proj") and hasattr(m.k_proj, "ranks")}
    assert measure_latent_bytes_per_token(model, 37) == latent_kv_bytes_per_token(shape, ranks, quant, 37, fp_bytes=4)


@pytest.mark.parametrize("search", ["uniform", "fisher_uniform", "sensitivity"])
def test_fit_allocation_never_exceeds_the_budget_and_is_maximal(search):
    shape = attention_shape(tiny_model().config)
    gen = torch.Generator().manual_seed(1)
    fisher = {(layer, p): torch.rand(32, generator=gen) for layer in range(2) for p in "kv"}
    spectra = {(layer, p, g): torch.rand(16, generator=gen).sort(descending=True).values for layer in range(2) for p in "kv" for g in range(2)}
    rank_cfg = RankSearchConfig(search, 0.5, 4)
    step = 4 * (2 if search == "fisher_uniform" else 1)
    for bits in (16, 8, 4, 3, 2):
        quant = LatentQuantConfig(bits=bits, group_size=8)
        for budget in torch.linspace(10, 300, 30).tolist():
            cand = fit_allocation(shape, 1, rank_cfg, quant, budget, 64, fisher, spectra)
            if cand is None:  # infeasible only below every group keeping one granule
                floor = {"0": {"k": [4, 4], "v": [4, 4]}, "1": {"k": [4, 4], "v": [4, 4]}}
                assert latent_kv_bytes_per_token(shape, floor, quant, 64) > budget
                continue
            assert cand.bytes_per_token <= budget
            assert cand.bytes_per_token == latent_kv_bytes_per_token(shape, cand.allocation.ranks, quant, 64)
            ranks = [r for kv in cand.allocation.ranks.values() for r in kv["k"] + kv["v"]]
            assert all(4 <= r <= 16 and r % 4 == 0 for r in ranks)
            if cand.allocation.kept_dims + step <= 128:  # one more step of rank would not fit
                more = dict(cand.rank_search.to_dict(), param_ratio_target=(cand.allocation.kept_dims + step) / 128)
                bigger = search_ranks(shape, 1, RankSearchConfig.from_dict(more), fisher, spectra)
                assert latent_kv_bytes_per_token(shape, bigger.ranks, quant, 64) > budget


def test_proxy_terms_behave():
    sigma2 = torch.tensor([16.0, 9.0, 4.0, 1.0, 0.25, 0.0625, 0.01, 0.0])
    rho = [gaussian_rel_mse(LatentQuantConfig(bits=b, group_size=4)) for b in (2, 3, 4, 8)]
    assert rho == sorted(rho, reverse=True) and gaussian_rel_mse(LatentQuantConfig()) == 0.0
    noise = [quant_noise(sigma2, 4, LatentQuantConfig(bits=b, group_size=4, hadamard=True)) for b in (2, 4, 8)]
    assert noise == sorted(noise, reverse=True) and noise[-1] > 0


@pytest.mark.parametrize("scorer", ["proxy", "ppl"])
def test_search_budget_fits_and_leaves_the_model_alone(corpus, tmp_path, scorer):
    model, tok = tiny_model(vocab_size=len(_word_tokenizer())), _word_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = KVBudgetConfig(fp16_fraction=0.3, context_length=64, scorer=scorer, n_score_windows=2, quant_group_size=8)
    result = search_budget(model, tok, _compression(corpus), budget, tmp_path)
    assert result.chosen.bytes_per_token <= result.budget_bytes_per_token == pytest.approx(0.3 * 256)
    assert result.bits in budget.bits_candidates and len(result.candidates) == len(budget.bits_candidates)
    feasible = [c for c in result.candidates if c["feasible"]]
    assert min(c["score"] for c in feasible) == next(c["score"] for c in feasible if c["bits"] == result.bits)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    json.dumps(result.to_dict())
    with pytest.raises(ValueError, match="fits"):
        search_budget(model, tok, _compression(corpus), KVBudgetConfig(bytes_per_token=12.0, context_length=64), tmp_path)


def test_compress_to_budget_measures_what_it_promised(corpus, tmp_path):
    model, tok = tiny_model(vocab_size=len(_word_tokenizer())), _word_tokenizer()
    budget = KVBudgetConfig(fp16_fraction=0.2, context_length=50, residual_length=6, quant_group_size=8)
    compressed, result, report = compress_to_budget(copy.deepcopy(model), tok, _compression(corpus, "fisher_uniform"), budget, tmp_path)
    assert result.chosen.bytes_per_token <= 0.2 * 256
    assert result.measured_fp_bytes == 4 and result.measured_bytes_per_token is not None
    ranks = {layer: {"k": kv["k_ranks"], "v": kv["v_ranks"]} for layer, kv in report["layers"].items()}
    assert report["kv_budget"]["bits"] == result.bits and report["kv_budget"]["allocation"]["ranks"] == ranks
    assert compressed.model.layers[0].self_attn.quant == result.chosen.quant
    with torch.no_grad():
        assert torch.isfinite(compressed(torch.randint(0, 20, (1, 16))).logits).all()


def _frontier():
    spec = importlib.util.spec_from_file_location("_script_frontier", REPO / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontier_help(capsys):
    with pytest.raises(SystemExit) as exc:
        _frontier().main(["--help"])
    assert exc.value.code == 0 and "--budgets" in capsys.readouterr().out


def test_frontier_smoke_writes_json_and_png(corpus, tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_model(vocab_size=len(_word_tokenizer())).save_pretrained(model_dir)
    _word_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "out"
    rc = _frontier().main([
        "--model_id", str(model_dir), "--eval_dataset", str(corpus), "--calib_dataset", str(corpus), "--seqlen", "64",
        "--n_samples", "2", "--ratios", "0.5", "--bits", "16,4", "--budgets", "0.25", "--budget_bits", "8,4",
        "--budget_scorer", "proxy", "--kv_bits", "4", "--kv_group_size", "8", "--kivi_residual", "8", "--lt_group_size", "8",
        "--rank_multiple", "4", "--head_group_size", "1", "--n_whiten_calib_samples", "2", "--n_fisher_calib_samples", "2",
        "--calib_seqlen", "64", "--output_dir", str(out),
    ])
    assert rc == 0
    result = json.loads((out / "frontier.json").read_text())
    methods = [p["method"] for p in result["points"]]
    assert methods.count("uncompressed") == 1 and methods.count("kivi") == 1 and methods.count("per_token") == 1
    assert methods.count("palu") == 2 and methods.count("palu+hadamard") == 1 and methods.count("palu-budget") == 1
    assert all(p["kv_bytes_per_token"] > 0 and p["ppl"] > 0 and "bits_per_element" in p for p in result["points"])
    assert result["config"]["seqlen"] == 64 and result["argv"]
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"

    # Merging runs of the same evaluation keeps every point and its device; a different eval is refused.
    second = tmp_path / "second.json"
    second.write_text(json.dumps({**result, "device": "other", "points": result["points"][:2]}))
    merged_dir = tmp_path / "merged"
    assert _frontier().main(["--merge", str(out / "frontier.json"), str(second), "--output_dir", str(merged_dir)]) == 0
    merged = json.loads((merged_dir / "frontier.json").read_text())
    assert len(merged["points"]) == len(result["points"]) + 2
    assert [p["device"] for p in merged["points"][-2:]] == ["other", "other"]
    assert (merged_dir / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    other_eval = tmp_path / "other_eval.json"
    other_eval.write_text(json.dumps({**result, "config": {**result["config"], "seqlen": 128}}))
    with pytest.raises(SystemExit):
        _frontier().main(["--merge", str(out / "frontier.json"), str(other_eval), "--output_dir", str(tmp_path / "m2")])
    # --replot redraws from the JSON, and says what is missing when there is none.
    assert _frontier().main(["--replot", "--output_dir", str(merged_dir)]) == 0
    with pytest.raises(SystemExit):
        _frontier().main(["--replot", "--output_dir", str(tmp_path / "empty")])
