#!/usr/bin/env python
"""Perplexity of an original checkpoint or a Palu dump over non-overlapping windows.

Example:
    python run_ppl_eval.py --model_name_or_path outputs/smollm2-palu-50 --datasets wiki_summaries --seqlen 1024
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from palu import cli, data


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_args(p)
    cli.add_latent_quant_args(p)
    p.add_argument("--datasets", default="wiki_summaries", help=f"comma list of {data.known_names()} or text file paths")
    p.add_argument("--seqlen", type=int, default=1024, help="tokens per window")
    p.add_argument("--n_samples", type=int, default=None, help="limit the number of windows per dataset")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--output_json", default=None, help="write the results here (atomically)")
    p.add_argument("--compare_json", default=None, help="an earlier run's --output_json: print a before/after table")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    cli.check_output_file(args.output_json)
    before = None
    if args.compare_json:
        try:
            before = json.loads(Path(args.compare_json).read_text())["results"]
        except (OSError, ValueError, KeyError) as err:
            cli.fail(f"--compare_json {args.compare_json}: not a run_ppl_eval.py result ({err})")
    names = cli.comma_list(args.datasets)
    try:
        cli.latent_quant_from_args(args)  # validates the --lt_* flags before loading anything
        for name in names:
            data.check_source(name)
        if args.seqlen < 2:
            raise ValueError("--seqlen must be >= 2")
    except (ValueError, FileNotFoundError) as err:
        cli.fail(str(err))
    from palu.eval.perplexity import perplexity

    model, tokenizer, applied_quant = cli.load_for_eval(args)
    results = {}
    for name in names:
        ids = data.tokenize_stream(data.load_texts(name, "eval"), tokenizer)
        results[name] = perplexity(model, data.eval_windows(ids, args.seqlen, args.n_samples), args.batch_size)
        print(f"{name}: ppl {results[name]['ppl']:.4f} over {results[name]['n_tokens']} tokens")
    out = cli.eval_record(args, model, applied_quant, results)
    if args.output_json:
        cli.write_json_atomic(args.output_json, out)
    if before is not None:
        print(comparison_table(before, results, args.compare_json, args.model_name_or_path))
    return 0


def comparison_table(before: dict, after: dict, before_name: str, after_name: str) -> str:
    lines = [f"| dataset | ppl ({before_name}) | ppl ({after_name}) | ratio | tokens |", "|---|---|---|---|---|"]
    for name, res in after.items():
        old = before.get(name, {}).get("ppl")
        ratio = f"{res['ppl'] / old:.3f}x" if old else "n/a"
        old_s = f"{old:.3f}" if old else "n/a"
        lines.append(f"| {name} | {old_s} | {res['ppl']:.3f} | {ratio} | {res['n_tokens']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
