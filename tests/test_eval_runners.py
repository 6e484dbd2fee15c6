"""run_lm_eval.py / run_long_bench.py end to end on a tiny random Llama with local tasks (CPU, offline)."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from palu.eval.local_tasks import LocalTasksConfig, build_local_tasks

from .helpers import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"chat": save_tiny_model(root / "chat", True), "plain": save_tiny_model(root / "plain", False)}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    build_local_tasks(out, LocalTasksConfig(mc_items=4, long_items=2, articles_per_context=2, seed=0))
    return out


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, flag", [("run_lm_eval", "--include_path"), ("run_long_bench", "--prompt_config")])
def test_help(name, flag, capsys):
    # In-process: a subprocess would pay ~15 s of torch/transformers imports per script on 2 cores.
    with pytest.raises(SystemExit) as exc:
        _script(name).main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert flag in out and "--lt_bits" in out and "--build_local_tasks" in out and "--output_json" in out


def test_lm_eval_end_to_end(tiny_models, task_dir, tmp_path, capsys):
    out_json = tmp_path / "lm.json"
    rc = _script("run_lm_eval").main([
        "--model_name_or_path", str(tiny_models["plain"]), "--tasks", "palu_wiki_mc", "--include_path", str(task_dir),
        "--include_defaults", "false", "--limit", "2", "--batch_size", "2", "--output_json", str(out_json),
    ])
    assert rc == 0
    out = json.loads(out_json.read_text())
    assert out["config"]["lm_eval"]["tasks"] == ["palu_wiki_mc"] and out["config"]["lm_eval"]["limit"] == 2
    assert out["config"]["latent_quant"]["bits"] == 16
    row = out["results"]["tasks"]["palu_wiki_mc"]
    assert row["n_samples"] == 2
    for key in ("acc", "acc_norm"):
        assert 0.0 <= row[key] <= 1.0
    assert out["results"]["mean_acc"] == pytest.approx(row["acc"])
    assert "| palu_wiki_mc |" in capsys.readouterr().out


def test_lm_eval_unknown_task_lists_valid(tiny_models, task_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        _script("run_lm_eval").main(["--model_name_or_path", str(tiny_models["plain"]), "--tasks", "palu_wiki_mcq",
                                     "--include_path", str(task_dir), "--include_defaults", "false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s): palu_wiki_mcq" in err and "valid tasks: palu_wiki_mc" in err


def test_long_bench_end_to_end(tiny_models, task_dir, tmp_path, capsys):
    out_json = tmp_path / "lb.json"
    rc = _script("run_long_bench").main([
        "--model_name_or_path", str(tiny_models["chat"]), "--data_dir", str(task_dir), "--limit", "2",
        "--datasets", "wiki_title_qa,wiki_passage_retrieval", "--max_length", "96", "--output_json", str(out_json),
    ])
    assert rc == 0
    out = json.loads(out_json.read_text())
    cfg = json.loads((tiny_models["chat"] / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 4
    assert out["config"]["longbench"]["datasets"] == ["wiki_title_qa", "wiki_passage_retrieval"]
    results = out["results"]
    assert results["chat_template"] is True
    for name, metric in (("wiki_title_qa", "qa_f1"), ("wiki_passage_retrieval", "retrieval")):
        r = results["datasets"][name]
        assert r["metric"] == metric and r["n"] == 2 and len(r["samples"]) == 2
        assert 0.0 <= r["score"] <= 100.0 and r["truncated"] == 2  # 2 articles > 96 tokens
        assert all(isinstance(s["prediction"], str) and 0.0 <= s["score"] <= 1.0 for s in r["samples"])
        # The cache held the prompt (and the answer but its last token): whole tokens of full K/V, fp32.
        for s in r["samples"]:
            assert s["kv_cache_bytes"] % per_token == 0 and s["kv_cache_bytes"] >= s["prompt_tokens"] * per_token
        assert r["max_kv_cache_bytes"] == max(s["kv_cache_bytes"] for s in r["samples"])
        assert r["peak_memory_bytes"] is None  # CPU
    assert 0.0 <= results["average"] <= 100.0
    assert "| **average** |" in capsys.readouterr().out


def test_no_chat_template_falls_back_with_warning(tiny_models, task_dir, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from palu.eval import longbench
    from palu.eval.longbench_prompts import TASKS

    model = AutoModelForCausalLM.from_pretrained(tiny_models["plain"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["plain"])
    cfg = longbench.LongBenchConfig(datasets=("wiki_title_qa",), data_dir=str(task_dir), limit=1, max_length=64)
    with caplog.at_level(logging.WARNING, logger="palu.eval.longbench"):
        summary = longbench.evaluate(model, tokenizer, cfg, show_progress=False)
    assert "no chat template" in caplog.text
    assert summary["chat_template"] is False and summary["datasets"]["wiki_title_qa"]["n"] == 1
    # Without a template the prompt is the plain text (plus BOS if the tokenizer adds one).
    record = {"context": "ctx", "input": "q"}
    ids, _ = longbench.build_input_ids(record, "{context}|{input}", TASKS["wiki_title_qa"], tokenizer, 64)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ctx|q"


def test_long_bench_bad_inputs(tiny_models, tmp_path, capsys):
    run = _script("run_long_bench").main
    model = ["--model_name_or_path", str(tiny_models["plain"])]
    with pytest.raises(SystemExit):
        run([*model, "--datasets", "triviaqa,not_a_dataset", "--data_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "not_a_dataset" in err and "triviaqa" in err and "wiki_title_qa" in err
    with pytest.raises(SystemExit):
        run([*model, "--datasets", "triviaqa", "--data_dir", str(tmp_path / "missing")])
    assert "missing does not exist" in capsys.readouterr().err
    bad = tmp_path / "triviaqa.jsonl"
    bad.write_text(json.dumps({"input": "q", "context": "c", "answers": ["a"]}) + "\nnot json\n")
    with pytest.raises(SystemExit):
        run([*model, "--datasets", "triviaqa", "--data_dir", str(tmp_path), "--max_length", "64"])
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err


def test_long_bench_graph_decode_needs_cuda(tiny_models, task_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _script("run_long_bench").main(["--model_name_or_path", str(tiny_models["chat"]), "--data_dir", str(task_dir),
                                        "--datasets", "wiki_title_qa", "--graph_decode",
                                        "--output_json", str(tmp_path / "lb.json")])
    assert "--device cuda" in str(exc.value.code) + capsys.readouterr().err
    assert not (tmp_path / "lb.json").exists()


@pytest.mark.parametrize("first_line", [False, True])
def test_long_bench_graph_decode_gives_generate_text(tiny_models, monkeypatch, first_line):
    """longbench.generate through palu.graph_decode (its steps eager here: no GPU) gives model.generate's text and
    the same first-line stop; the cache bytes count the latents of the used slots."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from palu import graph_decode
    from palu.eval import longbench

    from .helpers import compress_plain

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["chat"])
    base = AutoModelForCausalLM.from_pretrained(tiny_models["chat"]).eval()
    model = compress_plain(copy.deepcopy(base), head_group_size=2, ranks={str(i): {"k": [20], "v": [24]}
                                                                           for i in range(2)})
    eager_config = graph_decode.GraphDecodeConfig
    monkeypatch.setattr(graph_decode, "GraphDecodeConfig",
                        lambda **kw: eager_config(**{**kw, "use_graph": False}))
    torch.manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (30,)).tolist()
    want, want_bytes = longbench.generate(model, tokenizer, ids, 24, stop_at_newline=first_line)
    got, got_bytes = longbench.generate(model, tokenizer, ids, 24, stop_at_newline=first_line, graph_decode=True)
    assert got == want
    assert got_bytes > 0


def test_first_line_end_matches_the_stopping_criterion(tiny_models):
    from transformers import AutoTokenizer

    from palu.eval import longbench

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["chat"])
    newline = tokenizer.encode("\n", add_special_tokens=False)
    word = tokenizer.encode("ab", add_special_tokens=False)
    tokens = newline + word + newline + word
    assert longbench.first_line_end(tokenizer, tokens) == len(newline) * 2 + len(word)
    assert longbench.first_line_end(tokenizer, word) == len(word)
