#!/usr/bin/env python
"""Accuracy sweep: perplexity of compressed SmolLM2 (or any model) over ratios x search x group size x decomposition.

Calibration statistics are computed once (cached under --cache_dir) and reused by every
configuration; each configuration compresses a fresh copy of the model.

    python benchmarks/accuracy_sweep.py --device cuda --output_json benchmarks/results/accuracy/sweep.json
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

import palu
from palu import cli, data
from palu.config import CalibrationConfig, DecompositionConfig, RankSearchConfig
from palu.eval.perplexity import perplexity
from palu.pipeline import CompressionConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_id", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ratios", default="0.3,0.5,0.7,0.9")
    p.add_argument("--search_methods", default="uniform,fisher,fisher_uniform")
    p.add_argument("--group_sizes", default="1,3")
    p.add_argument("--decompose_methods", default="whiten,svd")
    p.add_argument("--rank_multiples", default="32")
    p.add_argument("--n_whiten_calib_samples", type=int, default=CalibrationConfig().n_whiten_samples)
    p.add_argument("--n_fisher_calib_samples", type=int, default=CalibrationConfig().n_fisher_samples)
    p.add_argument("--calib_seqlen", type=int, default=512)
    p.add_argument("--eval_dataset", default="wiki_summaries")
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--n_samples", type=int, default=40)
    p.add_argument("--cache_dir", default="/tmp/palu_sweep_cache")
    p.add_argument("--output_json", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base, tokenizer = palu.load_model(args.model_id, device=args.device, dtype="float32")
    ids = data.tokenize_stream(data.load_texts(args.eval_dataset, "eval"), tokenizer)
    windows = data.eval_windows(ids, args.seqlen, args.n_samples)
    t0 = time.perf_counter()
    ref = perplexity(base, windows, show_progress=False)
    rows = [{"method": "original", "ppl": ref["ppl"], "eval_s": round(time.perf_counter() - t0, 2)}]
    print(f"original ppl {ref['ppl']:.4f} ({ref['n_tokens']} tokens)", flush=True)
    grid = itertools.product(
        [float(r) for r in args.ratios.split(",")], args.search_methods.split(","),
        [int(g) for g in args.group_sizes.split(",")], args.decompose_methods.split(","),
        [int(m) for m in args.rank_multiples.split(",")],
    )
    for ratio, search, gs, decomp, multiple in grid:
        cfg = CompressionConfig(
            model_id=args.model_id or palu.models.DEFAULT_MODEL,
            calibration=CalibrationConfig("wiki_summaries", args.n_whiten_calib_samples,
                                          args.n_fisher_calib_samples, args.calib_seqlen, 0),
            rank_search=RankSearchConfig(search, ratio, multiple), decomposition=DecompositionConfig(decomp, gs), use_cache=True,
        )
        t0 = time.perf_counter()
        model, allocation, report = palu.compress_model(copy.deepcopy(base), tokenizer, cfg, Path(args.cache_dir))
        t_c = time.perf_counter() - t0
        res = perplexity(model, windows, show_progress=False)
        row = {"ratio_target": ratio, "param_ratio": allocation.param_ratio, "search": search, "group_size": gs,
               "decompose": decomp, "rank_multiple": multiple, "ppl": res["ppl"], "ppl_rel": res["ppl"] / ref["ppl"], "compress_s": round(t_c, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    out = {"argv": sys.argv, "config": vars(args), "device": _device_name(args.device), "n_tokens": ref["n_tokens"],
           "torch": torch.__version__, "rows": rows}
    cli.write_json_atomic(args.output_json, out)
    print(to_markdown(out))
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"


def to_markdown(result: dict) -> str:
    base = result["rows"][0]["ppl"]
    lines = [f"original ppl {base:.3f} on {result['n_tokens']} tokens ({result['device']})", "",
             "| target | kept | search | group size | decomposition | rank multiple | ppl | × original |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"][1:]:
        lines.append(f"| {r['ratio_target']} | {r['param_ratio']:.3f} | {r['search']} | {r['group_size']} | "
                     f"{r['decompose']} | {r.get('rank_multiple', 32)} | {r['ppl']:.3f} | {r['ppl_rel']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
