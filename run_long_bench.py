#!/usr/bin/env python
"""LongBench (greedy generation, per-dataset metrics) of an original checkpoint or a Palu dump.

Data: the official hub data by default, or ``--data_dir`` with one ``<dataset>.jsonl``
per dataset (LongBench's format). Offline, use the local long-context tasks built from
held-out Wikipedia summaries:

    python run_long_bench.py --build_local_tasks /tmp/palu_tasks
    python run_long_bench.py --model_name_or_path /tmp/smollm2-palu-50 --data_dir /tmp/palu_tasks \\
        --datasets wiki_title_qa,wiki_passage_retrieval --max_length 2048 --output_json lb.json
"""
from __future__ import annotations

import argparse
import sys

from palu import cli
from palu.eval.longbench_prompts import DEFAULT_DATASETS, TASKS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_args(p)
    cli.add_latent_quant_args(p)
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help=f"comma list of: {', '.join(TASKS)}")
    p.add_argument("--max_length", type=int, default=None,
                   help="prompt tokens kept by middle truncation (default: the model's positions minus the answer)")
    p.add_argument("--data_dir", default=None,
                   help="directory of <dataset>.jsonl files (default: the hub's THUDM/LongBench)")
    p.add_argument("--prompt_config", default=None,
                   help="JSON {dataset: template with {context} and {input}}, e.g. LongBench's dataset2prompt.json")
    p.add_argument("--limit", type=int, default=None, help="first N items per dataset")
    p.add_argument("--graph_decode", action="store_true",
                   help="Palu dumps on a GPU (fp latents, or --lt_bits without --lt_residual): greedy decoding with its steps "
                        "replayed from CUDA graphs "
                        "(palu.graph_decode; the same tokens as model.generate, faster)")
    cli.add_local_tasks_args(p)
    p.add_argument("--output_json", default=None, help="write the results (with every prediction) here, atomically")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    if cli.build_local_tasks_from_args(args):
        return 0
    cli.check_output_file(args.output_json)
    from palu.eval import longbench

    try:
        cli.latent_quant_from_args(args)  # validates the --lt_* flags before loading anything
        cfg = longbench.LongBenchConfig(
            datasets=cli.comma_list(args.datasets), max_length=args.max_length,
            data_dir=args.data_dir, prompt_config=args.prompt_config, limit=args.limit,
            graph_decode=args.graph_decode,
        )
        longbench.check_data(cfg)
        longbench.load_prompts(cfg.prompt_config)
    except (ValueError, FileNotFoundError) as err:
        cli.fail(str(err))
    if args.graph_decode and not args.device.startswith("cuda"):
        cli.fail(f"--graph_decode replays CUDA graphs: pass --device cuda (got --device {args.device})")
    model, tokenizer, applied_quant = cli.load_for_eval(args)
    if args.graph_decode:
        import torch

        from palu.graph_decode import graph_decode_problem

        why = graph_decode_problem(model, torch.device(args.device), True, 0)
        if why:
            cli.fail(f"--graph_decode: {why}")
    try:
        summary = longbench.evaluate(model, tokenizer, cfg)
    except (ValueError, FileNotFoundError) as err:  # malformed data found while reading
        cli.fail(str(err))
    out = cli.eval_record(args, model, applied_quant, summary, longbench=cfg.to_dict())
    if args.output_json:
        cli.write_json_atomic(args.output_json, out)
    print(longbench.markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
