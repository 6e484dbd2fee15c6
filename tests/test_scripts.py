"""compress.py / run_ppl_eval.py / run_latency_*.py: --help, flags reaching the code, tiny end-to-end runs, bad input."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from palu.integrations.hf import is_palu_dump

from .helpers import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
TEXT = " ".join(f"the quick brown fox number {i} jumps over the lazy dog." for i in range(400))


def _script(name: str):
    # In-process: a subprocess pays ~15 s of imports per script on 2 cores.
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["compress", "run_ppl_eval", "run_latency_attention", "run_latency_kernel",
                                  "run_lm_eval", "run_long_bench"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        _script(name).main(["--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    (root / "calib.txt").write_text(TEXT)
    (root / "eval.jsonl").write_text("\n".join(json.dumps({"text": TEXT[i * 900 : (i + 1) * 900]}) for i in range(6)))
    save_tiny_model(root / "tiny")
    return root


def test_compress_then_ppl_end_to_end(workspace, capsys):
    out = workspace / "dump"
    rc = _script("compress").main([
        "--model_id", str(workspace / "tiny"), "--calib_dataset", str(workspace / "calib.txt"),
        "--param_ratio_target", "0.5", "--search_method", "fisher", "--head_group_size", "1",
        "--decompose_method", "whiten", "--rank_multiple", "4", "--n_fisher_calib_samples", "2",
        "--n_whiten_calib_samples", "3", "--calib_seqlen", "64", "--seed", "3", "--kfac_damp", "0.5", "--output_dir", str(out),
        "--cache_dir", str(workspace / "cache"),
    ])
    assert rc == 0 and is_palu_dump(out)
    report = json.loads((out / "compression_report.json").read_text())
    cfg = report["config"]
    # every flag reached the typed config
    assert cfg["calibration"] == {"dataset": str(workspace / "calib.txt"), "n_whiten_samples": 3, "n_fisher_samples": 2,
                                  "seqlen": 64, "seed": 3}
    assert cfg["rank_search"] == {"method": "fisher", "param_ratio_target": 0.5, "rank_multiple": 4}
    assert cfg["decomposition"]["method"] == "whiten" and cfg["decomposition"]["head_group_size"] == 1
    assert cfg["decomposition"]["kfac_damp"] == 0.5
    assert report["report"]["param_ratio"] == 0.5
    assert all(r % 4 == 0 for kv in json.loads((out / "ranks.json").read_text())["ranks"].values() for r in kv["k"] + kv["v"])
    assert sorted(p.name for p in (workspace / "cache").iterdir())  # calibration statistics were cached there
    palu_cfg = json.loads((out / "config.json").read_text())["palu"]
    assert palu_cfg["calibration"]["n_whiten_samples"] == 3 and palu_cfg["search_method"] == "fisher"

    res_path = workspace / "ppl.json"
    rc = _script("run_ppl_eval").main([
        "--model_name_or_path", str(out), "--datasets", f"{workspace / 'eval.jsonl'},{workspace / 'calib.txt'}",
        "--seqlen", "32", "--n_samples", "3", "--lt_bits", "4", "--lt_hadamard", "true", "--lt_group_size", "8",
        "--lt_sym", "true", "--lt_clip_ratio", "0.9", "--output_json", str(res_path),
    ])
    assert rc == 0
    res = json.loads(res_path.read_text())
    for name in (str(workspace / "eval.jsonl"), str(workspace / "calib.txt")):
        assert res["results"][name]["n_tokens"] == 3 * 31 and res["results"][name]["ppl"] > 1
    assert res["config"]["latent_quant"] == {"bits": 4, "group_size": 8, "sym": True, "clip_ratio": 0.9,
                                             "hadamard": True, "residual_length": 0}
    assert res["config"]["palu"]["hadamard_fused"]


def test_use_cache_reuses_statistics(workspace, monkeypatch):
    import palu.calibration as calibration

    args = ["--model_id", str(workspace / "tiny"), "--calib_dataset", str(workspace / "calib.txt"),
            "--n_fisher_calib_samples", "1", "--n_whiten_calib_samples", "1", "--calib_seqlen", "32",
            "--rank_multiple", "4", "--cache_dir", str(workspace / "cache2"), "--dump_huggingface_model", "false"]
    assert _script("compress").main(args + ["--output_dir", str(workspace / "a")]) == 0
    assert not (workspace / "a" / "config.json").exists() and (workspace / "a" / "ranks.json").exists()

    def boom(*a, **k):
        raise AssertionError("statistics were recomputed despite --use_cache")

    monkeypatch.setattr(calibration, "collect_grams", boom)
    monkeypatch.setattr(calibration, "collect_fisher", boom)
    assert _script("compress").main(args + ["--output_dir", str(workspace / "b"), "--use_cache"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--param_ratio_target", "1.5"], "(0, 1]"),
    (["--param_ratio_target", "0"], "(0, 1]"),
    (["--calib_dataset", "/nonexistent/file.txt"], "does not exist"),
    (["--calib_dataset", "wikitext3"], "unknown dataset"),
    (["--head_group_size", "3"], "does not divide"),
])
def test_compress_bad_input_fails_clearly(workspace, capsys, extra, message):
    out = workspace / f"bad{abs(hash(tuple(extra)))}"
    argv = ["--model_id", str(workspace / "tiny"), "--calib_dataset", str(workspace / "calib.txt"),
            "--output_dir", str(out), *extra]
    with pytest.raises(SystemExit) as exc:
        _script("compress").main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_compress_refuses_non_empty_output_dir(workspace, capsys):
    out = workspace / "taken"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        _script("compress").main(["--model_id", str(workspace / "tiny"), "--output_dir", str(out)])
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_empty_dataset_and_unknown_architecture(workspace, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SystemExit):
        _script("run_ppl_eval").main(["--model_name_or_path", str(workspace / "tiny"), "--datasets", str(empty)])
    assert "empty" in capsys.readouterr().err
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(SystemExit):
        _script("compress").main(["--model_id", str(tmp_path / "gpt2"), "--calib_dataset", str(workspace / "calib.txt"),
                                  "--output_dir", str(tmp_path / "o")])
    assert "not supported" in capsys.readouterr().err


def test_lt_flags_on_uncompressed_model_are_refused(workspace, capsys):
    with pytest.raises(SystemExit) as exc:
        _script("run_ppl_eval").main(["--model_name_or_path", str(workspace / "tiny"), "--lt_bits", "4",
                                      "--datasets", str(workspace / "calib.txt")])
    assert "Palu dumps" in str(exc.value.code)


def test_latency_script_smoke_on_cpu(tmp_path):
    out = tmp_path / "lat.json"
    rc = _script("run_latency_attention").main([
        "--device", "cpu", "--scope", "model", "--prompt_len", "40", "--batch_size", "2", "--palu", "--num_heads", "4",
        "--num_kv_heads", "2", "--head_dim", "16", "--hidden_size", "64", "--rank_k", "16", "--rank_v", "24",
        "--group_size", "1", "--num_layers", "2", "--lt_bits", "4", "--lt_group_size", "8", "--reps", "2", "--warmup", "1",
        "--rounds", "2", "--output_json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    base, palu_run = rows[0]["runs"]
    assert len(rows[0]["rounds"]) == 2 and len(rows[0]["speedup"]["per_round"]) == 2
    assert rows[0]["rounds"][0] == rows[0]["runs"]
    # 62.5% of K+V dims at 4 bits + fp16 scale/zero per 8 (= 8 bits/element) + positions: about a third
    assert palu_run["cache_bytes"] < base["cache_bytes"] * 0.36


def test_kv_budget_records_bits_and_eval_applies_them(workspace):
    out = workspace / "budget"
    rc = _script("compress").main([
        "--model_id", str(workspace / "tiny"), "--calib_dataset", str(workspace / "calib.txt"), "--kv_budget", "0.3",
        "--rank_multiple", "4", "--n_fisher_calib_samples", "1", "--n_whiten_calib_samples", "2", "--calib_seqlen", "64",
        "--head_group_size", "2", "--output_dir", str(out), "--cache_dir", str(workspace / "cache3"),
    ])
    assert rc == 0
    saved = json.loads((out / "config.json").read_text())["palu"]["latent_quant"]
    assert saved["bits"] in (2, 3, 4, 8, 16)
    report = json.loads((out / "compression_report.json").read_text())["report"]
    assert report["kv_budget"]["bytes_per_token"] <= 0.3 * report["kv_budget"]["fp16_bytes_per_token"]
    assert report["kv_budget"]["quant"] == saved
    res_path = workspace / "budget_ppl.json"
    assert _script("run_ppl_eval").main(["--model_name_or_path", str(out), "--datasets", str(workspace / "calib.txt"),
                                         "--seqlen", "32", "--n_samples", "2", "--output_json", str(res_path)]) == 0
    assert json.loads(res_path.read_text())["config"]["latent_quant"] == saved


def test_latency_cuda_graph_without_cuda_fails_before_work(tmp_path, capsys):
    out = tmp_path / "lat.json"
    with pytest.raises(SystemExit) as exc:
        _script("run_latency_attention").main(["--device", "cpu", "--scope", "model", "--cuda_graph", "--palu",
                                               "--output_json", str(out)])
    assert "--cuda_graph needs a CUDA device" in str(exc.value.code) + capsys.readouterr().err
    assert not out.exists()


def test_latency_graph_decode_smoke_on_cpu(tmp_path):
    """--graph_decode on CPU: the graph decoder's steps (4-bit latents) run eagerly (Triton interpreter) against the
    eager baseline."""
    out = tmp_path / "lat.json"
    rc = _script("run_latency_attention").main([
        "--device", "cpu", "--scope", "model", "--graph_decode", "--palu", "--prompt_len", "40", "--batch_size", "2",
        "--num_heads", "4", "--num_kv_heads", "2", "--head_dim", "16", "--hidden_size", "64", "--rank_k", "16",
        "--rank_v", "24", "--group_size", "1", "--num_layers", "2", "--reps", "2", "--warmup", "1", "--bucket", "16",
        "--lt_bits", "4", "--lt_group_size", "8", "--output_json", str(out)])
    assert rc == 0
    base, palu_run = json.loads(out.read_text())["rows"][0]["runs"]
    assert palu_run["cache"] == "palu_graph_decode" and base["cache"] == "dynamic"
    assert palu_run["cache_bytes"] < base["cache_bytes"]


@pytest.mark.parametrize("extra,message", [
    (["--scope", "attention"], "--scope model"),
    (["--scope", "model", "--cuda_graph"], "drop --cuda_graph"),
    (["--scope", "model", "--bucket", "0"], "--bucket must be >= 1"),
])
def test_latency_graph_decode_bad_flags_fail_before_work(tmp_path, capsys, extra, message):
    out = tmp_path / "lat.json"
    with pytest.raises(SystemExit) as exc:
        _script("run_latency_attention").main(["--device", "cpu", "--graph_decode", "--palu", *extra,
                                               "--output_json", str(out)])
    assert message in str(exc.value.code) + capsys.readouterr().err
    assert not out.exists()


def test_latency_bucket_without_graph_decode_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _script("run_latency_attention").main(["--device", "cpu", "--scope", "model", "--palu", "--bucket", "64",
                                               "--output_json", str(tmp_path / "lat.json")])
    assert "add --graph_decode" in str(exc.value.code) + capsys.readouterr().err
    assert not (tmp_path / "lat.json").exists()
