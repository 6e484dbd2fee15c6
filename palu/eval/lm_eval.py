"""Zero/few-shot accuracy through lm-eval's Python API (paper Sec. 5.1, Table 2).

The already-loaded model (original or Palu dump, configured with the latent-quant
flags) is wrapped in ``lm_eval.models.huggingface.HFLM``, so lm-eval scores exactly
the attention code path that the latency scripts time. ``lm_eval`` is imported
inside the functions: the GPU image does not ship it.

Local tasks (e.g. the one built by :mod:`palu.eval.local_tasks`) come in through
``include_path``; ``include_defaults=False`` skips indexing lm-eval's ~15k built-in
task configs (about 30 s on a small CPU) when only local tasks are run.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("openbookqa", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
REPORTED_METRICS = ("acc", "acc_norm")
_MAX_LISTED = 60


@dataclass(frozen=True)
class LMEvalConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    num_fewshot: Optional[int] = None  # None: each task's own default (0 for the defaults)
    batch_size: int = 1
    limit: Optional[float] = None  # items per task; < 1 means a fraction
    include_path: Optional[str] = None
    include_defaults: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("give at least one task")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be > 0, got {self.limit}")
        if not self.include_defaults and not self.include_path:
            raise ValueError("include_defaults=False needs an include_path with task configs")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": list(self.tasks)}


def task_manager(cfg: LMEvalConfig):
    """lm-eval's TaskManager over the built-in tasks (unless disabled) and ``cfg.include_path``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=cfg.include_path, include_defaults=cfg.include_defaults)


def unknown_task_message(unknown: list[str], known: list[str], local: list[str]) -> str:
    """Error text naming the unknown tasks, close matches, and the valid names (all of them when few)."""
    lines = [f"unknown lm-eval task(s): {', '.join(unknown)}"]
    close = sorted({m for name in unknown for m in difflib.get_close_matches(name, known, n=5, cutoff=0.6)})
    if close:
        lines.append(f"did you mean: {', '.join(close)}")
    if len(known) <= _MAX_LISTED:
        lines.append(f"valid tasks: {', '.join(known)}")
    else:
        if local:
            lines.append(f"tasks from --include_path: {', '.join(local)}")
        lines.append(f"{len(known)} tasks are valid in all; list them with `lm-eval ls tasks`")
    return "\n".join(lines)


def check_tasks(manager, tasks: tuple[str, ...], include_path: Optional[str] = None) -> None:
    """Raise ValueError (with the valid names) if a task name or glob matches nothing in ``manager``."""
    known = manager.all_tasks
    unknown = [t for t in tasks if not (t in known or ("*" in t and fnmatch.filter(known, t)))]
    if unknown:
        root = Path(include_path).resolve() if include_path else None
        local = sorted(e.name for e in manager.task_index.values()
                       if root and e.yaml_path and root in Path(e.yaml_path).resolve().parents)
        raise ValueError(unknown_task_message(unknown, known, local))


def _finite(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per-task acc / acc_norm (+ stderr, sample counts) and their plain means from simple_evaluate's output."""
    per_task: dict[str, dict[str, Any]] = {}
    for task, metrics in sorted(results["results"].items()):
        row: dict[str, Any] = {}
        for name in REPORTED_METRICS:
            if f"{name},none" in metrics:
                row[name] = _finite(metrics[f"{name},none"])
                row[f"{name}_stderr"] = _finite(metrics.get(f"{name}_stderr,none"))
        if not row:
            continue  # a group row, or a task without accuracy metrics
        row["n_samples"] = results.get("n-samples", {}).get(task, {}).get("effective")
        per_task[task] = row
    means = {}
    for name in REPORTED_METRICS:
        values = [r[name] for r in per_task.values() if r.get(name) is not None]
        means[f"mean_{name}"] = sum(values) / len(values) if values else None
    return {"tasks": per_task, **means}


def evaluate(model, tokenizer, cfg: LMEvalConfig, manager=None) -> dict[str, Any]:
    """Run ``cfg.tasks`` on an in-memory model; returns :func:`summarize` plus the lm-eval version."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = manager if manager is not None else task_manager(cfg)
    check_tasks(manager, cfg.tasks, cfg.include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit, task_manager=manager,
        log_samples=False, random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed, bootstrap_iters=1000,
    )
    if results is None:  # only non-zero ranks return None under multi-process runs
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    return {**summarize(results), "lm_eval_version": getattr(lm_eval, "__version__", None)}


def markdown_table(summary: dict[str, Any]) -> str:
    def fmt(v: Optional[float]) -> str:
        return "—" if v is None else f"{100 * v:.2f}"

    lines = ["| task | acc | acc_norm | n |", "|---|---:|---:|---:|"]
    for task, row in summary["tasks"].items():
        n = row.get("n_samples") or "—"
        lines.append(f"| {task} | {fmt(row.get('acc'))} | {fmt(row.get('acc_norm'))} | {n} |")
    lines.append(f"| **mean** | {fmt(summary['mean_acc'])} | {fmt(summary['mean_acc_norm'])} | |")
    return "\n".join(lines)
