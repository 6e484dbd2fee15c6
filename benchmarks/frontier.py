#!/usr/bin/env python
"""Accuracy vs KV-memory frontier: perplexity against KV-cache bytes per token.

Points: the uncompressed model; Palu at --ratios x --bits with and without Hadamard (one
compression per ratio, bits/Hadamard re-configured on copies); the budget-driven allocation
(palu.budget) at --budgets (fractions of the fp16 cache); KIVI and per-token KV quantization
(palu.kv_quant) at --kv_bits. Bytes are exact cache layouts in fp16 (packing, scales,
zero-points, residual windows amortized over --seqlen, Palu's int32 positions included).
Writes <output_dir>/frontier.json and frontier.png.

    python benchmarks/frontier.py --device cuda --output_dir benchmarks/results/frontier
    python benchmarks/frontier.py --n_samples 2 --seqlen 256 --ratios 0.5 --bits 16,4 --budgets 0.25 \
        --kv_bits 4 --output_dir /tmp/frontier_smoke      # CPU smoke test
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

import palu
from palu import cli, data
from palu.adapters import attention_shape, default_group_size
from palu.budget import KVBudgetConfig, compress_to_budget, fp16_kv_bytes_per_token, latent_kv_bytes_per_token
from palu.config import CalibrationConfig, DecompositionConfig, LatentQuantConfig, RankSearchConfig
from palu.eval.perplexity import perplexity
from palu.kv_quant import KVQuantConfig, apply_kv_quant, bits_per_kv_element, kv_bytes_per_token, nominal_bits_per_element
from palu.kv_quant import remove_kv_quant
from palu.pipeline import CompressionConfig
from palu.quant import bits_per_element

FAMILIES = ("uncompressed", "kv_quant", "palu", "budget")


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_id", default=None, help="hub id, local HF folder or .gguf; default: embedded SmolLM2-135M-Instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--eval_dataset", default="wiki_summaries", help="eval split of a known dataset or a text file")
    p.add_argument("--calib_dataset", default="wiki_summaries")
    p.add_argument("--seqlen", type=int, default=1024, help="eval window; also the context that residual windows amortize over")
    p.add_argument("--n_samples", type=int, default=40, help="eval windows")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"subset of {FAMILIES}")
    p.add_argument("--ratios", default="0.25,0.375,0.5,0.75", help="Palu param_ratio_target values (fraction of K+V dims)")
    p.add_argument("--bits", default="16,4,3,2", help="Palu latent bits (16 = off)")
    p.add_argument("--hadamard", default="false,true", help="Palu runs with/without Hadamard (quantized bits only)")
    p.add_argument("--lt_group_size", type=int, default=32)
    p.add_argument("--lt_residual", type=int, default=0, help="Palu latents kept in full precision (paper: 0)")
    p.add_argument("--budgets", default="0.0625,0.125,0.25,0.5", help="budget-driven points, fractions of the fp16 cache")
    p.add_argument("--budget_bits", default="16,8,4,3,2", help="bit widths the budget search may choose")
    p.add_argument("--budget_scorer", default="ppl", choices=["ppl", "proxy"])
    p.add_argument("--budget_score_windows", type=int, default=4, help="calibration windows for --budget_scorer ppl")
    p.add_argument("--kv_bits", default="2,3,4", help="bits of the KIVI / per-token baselines")
    p.add_argument("--kv_group_size", type=int, default=32)
    p.add_argument("--kivi_residual", type=int, default=128, help="KIVI full-precision recent tokens (KIVI: 32-128)")
    p.add_argument("--search_method", default=RankSearchConfig().method.value)
    p.add_argument("--decompose_method", default=DecompositionConfig().method.value)
    p.add_argument("--head_group_size", type=int, default=None, help="default: largest divisor of the KV heads <= 4")
    p.add_argument("--rank_multiple", type=int, default=RankSearchConfig().rank_multiple)
    p.add_argument("--n_whiten_calib_samples", type=int, default=CalibrationConfig().n_whiten_samples)
    p.add_argument("--n_fisher_calib_samples", type=int, default=CalibrationConfig().n_fisher_samples)
    p.add_argument("--calib_seqlen", type=int, default=CalibrationConfig().seqlen)
    p.add_argument("--cache_dir", default=None, help="calibration statistics (default: <output_dir>/.calib_cache)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="only combine the points of earlier runs (same model, eval set and seqlen) into "
                        "<output_dir>/frontier.json + .png; each point keeps the device it ran on")
    p.add_argument("--replot", action="store_true",
                   help="only redraw <output_dir>/frontier.png from its frontier.json (e.g. on a machine with matplotlib)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    unknown = set(args.families.split(",")) - set(FAMILIES)
    if unknown:
        p.error(f"--families: unknown {sorted(unknown)}")
    return args


def _point(method: str, model_config, ppl: float, nbytes: float, bpe: float, t0: float, **extra) -> dict:
    fp16 = kv_bytes_per_token(model_config, None, 1)
    point = {"method": method, "ppl": ppl, "kv_bytes_per_token": nbytes, "kv_cache_ratio": nbytes / fp16,
             "bits_per_element": bpe, "bits_per_kv_element": bits_per_kv_element(model_config, nbytes),
             "eval_s": round(time.perf_counter() - t0, 2), **extra}
    brief = {k: v for k, v in extra.items() if not isinstance(v, dict)}
    print(f"{method:<14} ppl {ppl:9.3f}  {nbytes:9.1f} B/token ({point['kv_cache_ratio']:.4f} of fp16)  {brief}", flush=True)
    return point


def kv_quant_points(base, windows, args) -> list[dict]:
    points = []
    for method in ("kivi", "per_token"):
        for bits in _ints(args.kv_bits):
            cfg = KVQuantConfig(method, bits, args.kv_group_size, args.kivi_residual if method == "kivi" else 0)
            t0 = time.perf_counter()
            try:
                ppl = perplexity(apply_kv_quant(base, cfg), windows, show_progress=False)["ppl"]
            finally:
                remove_kv_quant(base)
            nbytes = kv_bytes_per_token(base.config, cfg, args.seqlen)
            points.append(_point(method, base.config, ppl, nbytes, nominal_bits_per_element(cfg), t0, bits=bits, kv_quant=cfg.to_dict()))
    return points


def palu_points(base, tokenizer, windows, cfg: CompressionConfig, args) -> list[dict]:
    points, shape = [], attention_shape(base.config)
    for ratio in _floats(args.ratios):
        run_cfg = dataclasses.replace(cfg, rank_search=dataclasses.replace(cfg.rank_search, param_ratio_target=ratio))
        clean, allocation, _ = palu.compress_model(copy.deepcopy(base), tokenizer, run_cfg, Path(args.cache_dir))
        rotated = None
        for hadamard in [cli.str2bool(h) for h in args.hadamard.split(",")]:
            for bits in _ints(args.bits):
                if hadamard and bits == 16:
                    continue  # the rotation is exact: identical to the unrotated 16-bit point
                quant = LatentQuantConfig(bits, args.lt_group_size, hadamard=hadamard, residual_length=args.lt_residual)
                if hadamard and rotated is None:
                    rotated = palu.configure(copy.deepcopy(clean), quant=quant)  # fuses once; `clean` stays unrotated
                model = palu.configure(rotated if hadamard else clean, quant=quant)
                t0 = time.perf_counter()
                ppl = perplexity(model, windows, show_progress=False)["ppl"]
                nbytes = latent_kv_bytes_per_token(shape, allocation.ranks, quant, args.seqlen)
                points.append(_point("palu+hadamard" if hadamard else "palu", base.config, ppl, nbytes, bits_per_element(quant), t0,
                                     ratio_target=ratio, param_ratio=allocation.param_ratio, bits=bits, hadamard=hadamard))
        del clean, rotated
    return points


def budget_points(base, tokenizer, windows, cfg: CompressionConfig, args) -> list[dict]:
    points = []
    for fraction in _floats(args.budgets):
        budget = KVBudgetConfig(fp16_fraction=fraction, bits_candidates=tuple(_ints(args.budget_bits)),
                                quant_group_size=args.lt_group_size, residual_length=args.lt_residual,
                                context_length=args.seqlen, scorer=args.budget_scorer, n_score_windows=args.budget_score_windows)
        t0 = time.perf_counter()
        try:
            model, result, _ = compress_to_budget(copy.deepcopy(base), tokenizer, cfg, budget, Path(args.cache_dir))
        except ValueError as err:
            print(f"budget {fraction}: {err}", flush=True)
            continue
        ppl = perplexity(model, windows, show_progress=False)["ppl"]
        info = result.to_dict()
        points.append(_point("palu-budget", base.config, ppl, result.chosen.bytes_per_token, bits_per_element(result.chosen.quant),
                             t0, budget_fraction=fraction, bits=result.bits, param_ratio=result.chosen.allocation.param_ratio,
                             hadamard=result.chosen.quant.hadamard, budget=info))
        del model
    return points


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    out = Path(args.output_dir)
    if args.replot:
        try:
            result = json.loads((out / "frontier.json").read_text())
        except (OSError, ValueError) as err:
            cli.fail(f"--replot: no readable frontier.json in {out} ({err}); run frontier.py there first")
        plot(result, out / "frontier.png")
        print(f"wrote {out / 'frontier.png'}")
        return 0
    if args.merge:
        try:
            result = merge_runs([json.loads(Path(p).read_text()) for p in args.merge], args.merge)
        except (OSError, ValueError, KeyError) as err:
            cli.fail(f"--merge: {err}")
        cli.write_json_atomic(out / "frontier.json", result)
        plot(result, out / "frontier.png")
        print(f"wrote {out / 'frontier.json'} and {out / 'frontier.png'}")
        return 0
    args.cache_dir = args.cache_dir or str(out / ".calib_cache")
    families = set(args.families.split(","))
    base, tokenizer = palu.load_model(args.model_id, device=args.device, dtype=args.dtype)
    gs = args.head_group_size or default_group_size(attention_shape(base.config).num_kv_heads)
    cfg = CompressionConfig(
        model_id=args.model_id or palu.models.DEFAULT_MODEL,
        calibration=CalibrationConfig(args.calib_dataset, args.n_whiten_calib_samples, args.n_fisher_calib_samples, args.calib_seqlen, 0),
        rank_search=RankSearchConfig(args.search_method, 0.5, args.rank_multiple),
        decomposition=DecompositionConfig(args.decompose_method, gs), use_cache=True, verbose=args.verbose,
    )
    windows = data.eval_windows(data.tokenize_stream(data.load_texts(args.eval_dataset, "eval"), tokenizer), args.seqlen, args.n_samples)
    points = []
    t0 = time.perf_counter()
    ref = perplexity(base, windows, show_progress=False)
    if "uncompressed" in families:
        points.append(_point("uncompressed", base.config, ref["ppl"], kv_bytes_per_token(base.config, None, args.seqlen), 16.0, t0))
    if "kv_quant" in families:
        points += kv_quant_points(base, windows, args)
    if "palu" in families:
        points += palu_points(base, tokenizer, windows, cfg, args)
    if "budget" in families:
        points += budget_points(base, tokenizer, windows, cfg, args)
    result = {"argv": sys.argv, "config": vars(args), "compression": cfg.to_dict(), "device": _device_name(args.device),
              "torch": torch.__version__, "n_tokens": ref["n_tokens"], "uncompressed_ppl": ref["ppl"],
              "fp16_kv_bytes_per_token": fp16_kv_bytes_per_token(attention_shape(base.config)), "points": points}
    cli.write_json_atomic(out / "frontier.json", result)
    try:
        plot(result, out / "frontier.png")
    except ImportError:  # the JSON is the result; draw it later with --replot
        print(f"matplotlib is not installed: wrote {out / 'frontier.json'} only; redraw with --replot")
        return 0
    print(f"wrote {out / 'frontier.json'} and {out / 'frontier.png'}")
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"


def _series(point: dict) -> str:
    if point["method"] in ("palu", "palu+hadamard"):
        return f"Palu {point['bits']}-bit" + (" + Hadamard" if point["hadamard"] else "")
    if point["method"] in ("kivi", "per_token"):
        return {"kivi": "KIVI", "per_token": "per-token quant"}[point["method"]]
    return {"palu-budget": "Palu budget (joint ranks + bits)"}.get(point["method"], point["method"])


def merge_runs(runs: list[dict], names: list[str]) -> dict:
    """One frontier from several runs of the same evaluation (e.g. fixed points on a GPU, budget
    points on a CPU): points are concatenated, each tagged with its run's device."""
    first = runs[0]
    same = ("eval_dataset", "seqlen", "n_samples", "model_id")
    for run, name in zip(runs[1:], names[1:]):
        diff = [k for k in same if run["config"].get(k) != first["config"].get(k)]
        if diff or run["n_tokens"] != first["n_tokens"]:
            raise ValueError(f"{name} differs from {names[0]} in {diff or ['n_tokens']}: not the same evaluation")
    points = [{**p, "device": run["device"]} for run in runs for p in run["points"]]
    return {**first, "argv": sys.argv, "merged_from": names, "device": " + ".join(sorted({r["device"] for r in runs})),
            "uncompressed_ppl_by_run": [r["uncompressed_ppl"] for r in runs], "points": points}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = result["uncompressed_ppl"]
    series: dict[str, list[dict]] = {}
    for point in result["points"]:
        if point["method"] != "uncompressed":
            series.setdefault(_series(point), []).append(point)
    fig, ax = plt.subplots(figsize=(9, 6))
    ppls = [q["ppl"] for q in result["points"]]
    top = min(ref * 3, max(ppls) * 1.05)  # a collapsed 2-bit point would flatten everything else
    for name, pts in series.items():
        pts = sorted(pts, key=lambda q: q["kv_bytes_per_token"])
        style = "--" if "Hadamard" in name else ("-." if "KIVI" in name or "per-token" in name else "-")
        ax.plot([q["kv_bytes_per_token"] for q in pts], [min(q["ppl"], top) for q in pts], style, marker="o", label=name)
    ax.axhline(ref, color="black", lw=1, label=f"uncompressed fp16 ({result['fp16_kv_bytes_per_token']} B/token)")
    ax.set_xscale("log")
    ax.set_ylim(bottom=min(ppls) * 0.98, top=top * 1.02)
    ax.set_xlabel("KV cache bytes per token (fp16 layout, scales/zero-points/positions/residual included)")
    ax.set_ylabel(f"perplexity (points above {top:.1f} drawn at the top)")
    ax.set_title(f"Perplexity vs KV memory, {result['n_tokens']} tokens, {result['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
