#!/usr/bin/env python
"""Zero/few-shot accuracy (lm-eval) of an original checkpoint or a Palu dump.

Reports acc and acc_norm per task and their plain means. Offline, use the local
multiple-choice task built from held-out Wikipedia summaries:

    python run_lm_eval.py --build_local_tasks /tmp/palu_tasks
    python run_lm_eval.py --model_name_or_path /tmp/smollm2-palu-50 --lt_bits 3 --lt_hadamard true \\
        --include_path /tmp/palu_tasks --include_defaults false --tasks palu_wiki_mc --output_json mc.json
"""
from __future__ import annotations

import argparse
import json
import sys

from palu import cli

DEFAULT_TASKS = "openbookqa,hellaswag,piqa,arc_easy,arc_challenge,winogrande"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_args(p)
    cli.add_latent_quant_args(p)
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="comma list of lm-eval task names (globs allowed)")
    p.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples (default: each task's own, 0 here)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--limit", type=float, default=None, help="items per task (< 1: a fraction); for quick checks only")
    p.add_argument("--include_path", default=None, help="directory of extra task YAMLs (e.g. from --build_local_tasks)")
    p.add_argument("--include_defaults", type=cli.str2bool, default=True,
                   help="also index lm-eval's built-in tasks (false: only --include_path, ~30 s faster)")
    p.add_argument("--seed", type=int, default=0, help="lm-eval's random/numpy/torch/few-shot seeds")
    cli.add_local_tasks_args(p)
    p.add_argument("--output_json", default=None, help="write the results here (atomically)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    if cli.build_local_tasks_from_args(args):
        return 0
    cli.check_output_file(args.output_json)
    from palu.eval import lm_eval as lme

    try:
        cli.latent_quant_from_args(args)  # validates the --lt_* flags before loading anything
        cfg = lme.LMEvalConfig(
            tasks=cli.comma_list(args.tasks), num_fewshot=args.num_fewshot,
            batch_size=args.batch_size, limit=int(args.limit) if args.limit and args.limit >= 1 else args.limit,
            include_path=args.include_path, include_defaults=args.include_defaults, seed=args.seed,
        )
        manager = lme.task_manager(cfg)
        lme.check_tasks(manager, cfg.tasks, cfg.include_path)  # before the model is loaded
    except (ValueError, FileNotFoundError) as err:
        cli.fail(str(err))
    model, tokenizer, applied_quant = cli.load_for_eval(args)
    summary = lme.evaluate(model, tokenizer, cfg, manager=manager)
    out = cli.eval_record(args, model, applied_quant, summary, lm_eval=cfg.to_dict())
    if args.output_json:
        cli.write_json_atomic(args.output_json, out)
    print(lme.markdown_table(summary))
    if args.verbose:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
