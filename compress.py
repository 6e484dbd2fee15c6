#!/usr/bin/env python
"""Compress a checkpoint's KV cache with Palu: calibrate, search ranks, decompose, dump.

Example (embedded SmolLM2 demo, CPU, a few minutes):
    python compress.py --param_ratio_target 0.5 --output_dir outputs/smollm2-palu-50
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import palu
from palu import cli, data
from palu.adapters import attention_shape, default_group_size
from palu.budget import KVBudgetConfig, compress_to_budget
from palu.config import CalibrationConfig, DecompositionConfig, RankSearchConfig
from palu.decomposition import DECOMPOSITIONS
from palu.pipeline import CompressionConfig
from palu.rank_search import SEARCH_METHODS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_id", default=None, help="hub id, local HF folder or .gguf file; default: embedded SmolLM2-135M-Instruct")
    p.add_argument("--calib_dataset", default="wiki_summaries", help=f"one of {data.known_names()} or a .txt/.json/.jsonl/.parquet path")
    p.add_argument("--param_ratio_target", type=float, default=0.5, help="fraction of K+V dims kept, in (0, 1]")
    p.add_argument("--search_method", default=RankSearchConfig().method.value, choices=sorted(SEARCH_METHODS),
                   help="rank allocation; the paper's are uniform/fisher/fisher_uniform (see README for measurements)")
    p.add_argument("--head_group_size", type=int, default=None,
                   help="KV heads per group: 1 = M-LRD, all = J-LRD; default: largest divisor of the KV heads <= 4")
    p.add_argument("--decompose_method", default=DecompositionConfig().method.value, choices=sorted(DECOMPOSITIONS),
                   help="the paper's are svd/whiten; whiten_fisher/whiten_kfac also weight by Fisher information")
    p.add_argument("--kfac_damp", type=float, default=DecompositionConfig().kfac_damp,
                   help="whiten_kfac: relative diagonal load on the output-gradient covariance (K-FAC damping)")
    p.add_argument("--rank_multiple", type=int, default=32, help="ranks are rounded to multiples of this")
    cal = CalibrationConfig()
    p.add_argument("--n_fisher_calib_samples", type=int, default=cal.n_fisher_samples, help="windows for Fisher statistics (paper: 2048)")
    p.add_argument("--n_whiten_calib_samples", type=int, default=cal.n_whiten_samples, help="windows for whitening Grams (paper: 256)")
    p.add_argument("--calib_seqlen", type=int, default=cal.seqlen, help="tokens per calibration window (paper: 2048)")
    p.add_argument("--kv_budget", type=float, default=None,
                   help="choose ranks AND latent bits for a KV budget: <= 1 = fraction of the fp16 cache, > 1 = bytes/token "
                        "(replaces --param_ratio_target)")
    p.add_argument("--use_cache", action="store_true", help="reuse calibration statistics found in --cache_dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--dump_huggingface_model", type=cli.str2bool, default=True, help="write the compressed model (false: ranks/report only)")
    p.add_argument("--output_dir", required=True, help="new or empty directory for the dump and results")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    p.add_argument("--cache_dir", default=None, help="calibration statistics cache (default: <output_dir>/../.palu_calib_cache)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    out = Path(args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        cli.fail(f"--output_dir {out} exists and is not empty; choose a new directory or pass --overwrite")
    try:  # every config validates itself before any model is loaded
        cfg = CompressionConfig(
            model_id=args.model_id or palu.models.DEFAULT_MODEL,
            calibration=CalibrationConfig(args.calib_dataset, args.n_whiten_calib_samples, args.n_fisher_calib_samples,
                                          args.calib_seqlen, args.seed),
            rank_search=RankSearchConfig(args.search_method, args.param_ratio_target, args.rank_multiple),
            decomposition=DecompositionConfig(args.decompose_method, args.head_group_size or 1, kfac_damp=args.kfac_damp),
            use_cache=args.use_cache, verbose=args.verbose,
        )
        data.check_source(args.calib_dataset)
        budget = None
        if args.kv_budget is not None:
            budget = (KVBudgetConfig(fp16_fraction=args.kv_budget) if args.kv_budget <= 1
                      else KVBudgetConfig(bytes_per_token=args.kv_budget))
    except (ValueError, FileNotFoundError) as err:
        cli.fail(str(err))
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.resolve().parent / ".palu_calib_cache"
    palu.set_seed(args.seed)
    model, tokenizer = palu.load_model(args.model_id, device=args.device, dtype="float32")
    if args.head_group_size is None:
        gs = default_group_size(attention_shape(model.config).num_kv_heads)
        cfg = dataclasses.replace(cfg, decomposition=dataclasses.replace(cfg.decomposition, head_group_size=gs))
    try:
        if budget is None:
            model, allocation, report = palu.compress_model(model, tokenizer, cfg, cache_dir=cache_dir)
        else:
            model, result, report = compress_to_budget(model, tokenizer, cfg, budget, cache_dir)
            allocation = result.chosen.allocation
            model.config.palu = {**model.config.palu, "latent_quant": result.chosen.quant.to_dict()}
    except ValueError as err:
        cli.fail(str(err))
    results = {"config": cfg.to_dict(), "argv": sys.argv, "report": report}
    files = {"ranks.json": allocation.to_dict(), "compression_report.json": results}
    if args.overwrite and out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    if args.dump_huggingface_model:
        palu.save_palu_model(model, tokenizer, out, files)
    else:
        for name, obj in files.items():
            cli.write_json_atomic(out / name, obj)
    kv = report["kv_bytes_per_token_fp16"]
    if budget is None:
        print(f"kept {report['param_ratio']:.4f} of K+V dims (target {args.param_ratio_target}); "
              f"KV bytes/token fp16 {kv['before']} -> {kv['after_with_positions']}; wrote {out}")
    else:
        b = report["kv_budget"]
        print(f"budget {b['budget_bytes_per_token']:.1f} B/token: {b['bits']}-bit latents, kept {report['param_ratio']:.4f} "
              f"of K+V dims; {b['bytes_per_token']:.1f} of {b['fp16_bytes_per_token']} fp16 B/token; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
