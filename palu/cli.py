"""Argparse groups shared by the top-level scripts (scripts never import each other).

Each ``add_*`` adds one group of flags; the matching ``*_from_args`` builds the typed
config, so a flag accepted is a flag used.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from .config import SUPPORTED_BITS, LatentQuantConfig


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model_name_or_path", default=None,
                   help="original checkpoint (hub id, HF folder, .gguf) or a Palu dump; default: embedded SmolLM2-135M-Instruct")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto = float32 on CPU, the checkpoint's dtype on GPU")
    g.add_argument("--cache_dir", default=None, help="where converted models live (default ~/.cache/palu or $PALU_CACHE)")
    g.add_argument("--cache_mode", default=None, choices=["latent", "simulate"],
                   help="Palu dumps: cache latents (default) or rebuild full K/V like the published code")
    g.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"], help="latent attention implementation")
    add_fused_kernel_arg(g)


def add_fused_kernel_arg(parser) -> None:
    """--fused_kernel: the decode path of the Triton backend (kernels.FUSED_KERNELS)."""
    from kernels import FUSED_KERNELS

    parser.add_argument("--fused_kernel", default="auto", choices=sorted(FUSED_KERNELS),
                        help="Palu dumps, Triton backend: the decode path (auto = the dispatcher's choice; fold, "
                             "reconstruct = the paper's key reconstruction kernel, single_pass_ws = the Gluon "
                             "single-pass kernel, sm_90, with its quantized variant for --lt_bits latents)")


def add_latent_quant_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("latent quantization (Palu dumps only)")
    g.add_argument("--lt_bits", type=int, default=16, choices=[*SUPPORTED_BITS, 16], help="bits per latent (16 = off)")
    g.add_argument("--lt_group_size", type=int, default=32, help="latent channels per quantization group (per token)")
    g.add_argument("--lt_sym", type=str2bool, default=False, help="symmetric quantization")
    g.add_argument("--lt_clip_ratio", type=float, default=1.0, help="scale the per-group range by this factor (0, 1]")
    g.add_argument("--lt_hadamard", type=str2bool, default=False, help="fuse a Hadamard rotation into the factors first")
    g.add_argument("--lt_residual", type=int, default=0,
                   help="latent cache: newest tokens kept in full precision (0 = quantize all, as the simulation does)")


def add_local_tasks_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("local offline tasks")
    g.add_argument("--build_local_tasks", metavar="DIR", default=None,
                   help="write the local tasks (lm-eval YAML + LongBench jsonl) into DIR and exit")
    g.add_argument("--local_articles_per_context", type=int, default=6,
                   help="with --build_local_tasks: articles per long-context item (~110 tokens each)")


def build_local_tasks_from_args(args: argparse.Namespace) -> bool:
    """Build the local tasks if --build_local_tasks was given (then the script exits): returns whether it did."""
    if not args.build_local_tasks:
        return False
    from .eval.local_tasks import LocalTasksConfig, build_local_tasks

    try:
        task_cfg = LocalTasksConfig(articles_per_context=args.local_articles_per_context)
    except ValueError as err:
        fail(str(err))
    for name, path in build_local_tasks(args.build_local_tasks, task_cfg).items():
        print(f"{name}: {path}")
    return True


def latent_quant_from_args(args: argparse.Namespace) -> LatentQuantConfig:
    return LatentQuantConfig(
        bits=args.lt_bits, group_size=args.lt_group_size, sym=args.lt_sym, clip_ratio=args.lt_clip_ratio,
        hadamard=args.lt_hadamard, residual_length=args.lt_residual,
    )


def load_for_eval(args: argparse.Namespace):
    """(model, tokenizer, latent quantization applied) from the model/quant flags: original
    checkpoints as-is, Palu dumps configured (a ``--kv_budget`` dump's saved bits unless --lt_* override)."""
    from .integrations.hf import configure, fused_kernel_flags_problem, palu_modules
    from .models import load_model

    quant = latent_quant_from_args(args)
    why = fused_kernel_flags_problem(args.fused_kernel, args.backend, args.device)
    if why:
        fail(why)
    model, tokenizer = load_model(args.model_name_or_path, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    saved = (getattr(model.config, "palu", None) or {}).get("latent_quant")
    if saved and not quant.enabled:  # a --kv_budget dump carries its chosen bits; explicit --lt_bits override them
        quant = LatentQuantConfig.from_dict(saved)
    if any(True for _ in palu_modules(model)):
        configure(model, quant=quant, cache_mode=args.cache_mode, backend=args.backend, fused_kernel=args.fused_kernel)
    elif quant.enabled or quant.hadamard or args.cache_mode or args.fused_kernel != "auto":
        raise SystemExit("error: --lt_*, --cache_mode and --fused_kernel apply to Palu dumps; this model is not "
                         "compressed (run compress.py)")
    return model, tokenizer, quant


def comma_list(text: str) -> tuple[str, ...]:
    """A comma-separated flag value, items stripped, empty items dropped: "a, b,," -> ("a", "b")."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def eval_record(args: argparse.Namespace, model, applied_quant: LatentQuantConfig, results: Any, **configs: Any) -> dict:
    """What every evaluation runner writes: its flags plus typed sub-configs (``configs``), the latent
    quantization it applied, the dump's ``palu`` section, argv and the results."""
    return {
        "config": {**vars(args), **configs, "latent_quant": applied_quant.to_dict(),
                   "palu": getattr(model.config, "palu", None)},
        "argv": sys.argv, "results": results,
    }


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON via a temp file + rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def check_output_file(path: str | None) -> None:
    if path and Path(path).is_dir():
        raise SystemExit(f"error: --output_json {path} is a directory; give a file path")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
