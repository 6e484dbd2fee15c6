"""LongBench long-context evaluation (Bai et al., 2023; Palu paper Sec. 5.1, Table 3).

Protocol, as in LongBench's own prediction script: each prompt is tokenized and, if
longer than the budget, cut in the middle (first and last halves kept, decoded back
to text); instruction-style datasets go through the tokenizer's chat template when
it has one, completion datasets (few-shot, code) never do; decoding is greedy with a
per-dataset ``max_new_tokens``; the dataset score is 100 × the mean best-over-answers
metric (:mod:`palu.eval.longbench_metrics`).

Data come from ``data_dir/<dataset>.jsonl`` when given (LongBench's record format:
``input``, ``context``, ``answers``, optional ``all_classes`` and ``_id``), otherwise
from the official ``data.zip`` of the hub dataset ``THUDM/LongBench`` (its loading
script no longer runs under ``datasets`` >= 4, so the zip is read directly).
"""
from __future__ import annotations

import json
import logging
import string
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .longbench_metrics import score_item
from .longbench_prompts import DEFAULT_DATASETS, LOCAL_TASKS, TASKS, LongBenchTask

logger = logging.getLogger(__name__)

HUB_REPO = "THUDM/LongBench"
REQUIRED_KEYS = ("input", "context", "answers")


@dataclass(frozen=True)
class LongBenchConfig:
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    max_length: Optional[int] = None  # prompt tokens after middle truncation; None: fit the model's positions
    data_dir: Optional[str] = None
    prompt_config: Optional[str] = None  # JSON {dataset: template with {context} and {input}}
    limit: Optional[int] = None  # first N items per dataset
    graph_decode: bool = False  # Palu dumps on a GPU: decode through palu.graph_decode (same greedy tokens)

    def __post_init__(self) -> None:
        unknown = [d for d in self.datasets if d not in TASKS]
        if unknown or not self.datasets:
            raise ValueError(f"unknown LongBench dataset(s) {unknown}; valid: {', '.join(TASKS)}")
        if self.max_length is not None and self.max_length < 16:
            raise ValueError(f"max_length must be >= 16 tokens, got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "datasets": list(self.datasets)}


# ---------------------------------------------------------------------------- data
def parse_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    """Records of a LongBench jsonl text; errors name ``source`` and the 1-based line."""
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}:{lineno}: not valid JSON ({err.msg})") from None
        missing = [k for k in REQUIRED_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"{source}:{lineno}: record lacks {missing} (needs {list(REQUIRED_KEYS)})")
        if isinstance(rec["answers"], str):
            rec["answers"] = [rec["answers"]]
        records.append(rec)
    if not records:
        raise ValueError(f"{source}: no records")
    return records


def data_file(data_dir: str | Path, dataset: str) -> Path:
    directory = Path(data_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"--data_dir {directory} does not exist or is not a directory")
    path = directory / f"{dataset}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected one <dataset>.jsonl per dataset in {directory})")
    return path


def check_data(cfg: LongBenchConfig) -> None:
    """Fail before loading a model: every local file exists; local-only tasks have a data_dir."""
    for name in cfg.datasets:
        if cfg.data_dir:
            data_file(cfg.data_dir, name)
        elif name in LOCAL_TASKS:
            raise ValueError(f"{name} is a local task: build it with --build_local_tasks DIR and pass --data_dir DIR")


def _hub_jsonl(dataset: str) -> tuple[str, str]:
    from huggingface_hub import hf_hub_download  # lazy: only the online path needs it

    archive = hf_hub_download(HUB_REPO, "data.zip", repo_type="dataset")
    member = f"data/{dataset}.jsonl"
    with zipfile.ZipFile(archive) as zf:
        return zf.read(member).decode("utf-8"), f"{archive}!{member}"


def load_records(dataset: str, data_dir: Optional[str] = None) -> list[dict[str, Any]]:
    if data_dir:
        path = data_file(data_dir, dataset)
        return parse_jsonl(path.read_text(encoding="utf-8"), str(path))
    if dataset in LOCAL_TASKS:
        raise ValueError(f"{dataset} is a local task: build it with --build_local_tasks DIR and pass --data_dir DIR")
    return parse_jsonl(*_hub_jsonl(dataset))


def load_prompts(path: Optional[str]) -> dict[str, str]:
    """Default templates, overridden by a JSON file {dataset: template} (e.g. LongBench's dataset2prompt.json)."""
    prompts = {name: task.prompt for name, task in TASKS.items()}
    if path is None:
        return prompts
    try:
        override = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--prompt_config {path}: {err}") from None
    if not isinstance(override, dict) or not all(isinstance(v, str) for v in override.values()):
        raise ValueError(f"--prompt_config {path}: expected a JSON object mapping dataset -> template string")
    for name, template in override.items():
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if not fields <= {"context", "input"}:
            raise ValueError(f"--prompt_config {path}: template of {name!r} uses {sorted(fields)}; "
                             "only {context} and {input} are filled")
    return {**prompts, **override}


# ---------------------------------------------------------------------------- prompts
def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first ⌊max/2⌋ and last ⌈max/2⌉ tokens: the question sits at the ends of LongBench prompts."""
    if len(ids) <= max_tokens:
        return ids
    head = max_tokens // 2
    return ids[:head] + ids[len(ids) - (max_tokens - head):]


def uses_chat_template(tokenizer, task: LongBenchTask) -> bool:
    return not task.completion and bool(getattr(tokenizer, "chat_template", None))


def _chat_overhead(tokenizer) -> int:
    text = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def prompt_budget(model, tokenizer, task: LongBenchTask, max_length: Optional[int]) -> int:
    """Prompt tokens allowed before truncation: ``max_length``, or what fits the model's positions with the answer."""
    if max_length is not None:
        return max_length
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is None:
        raise ValueError("the model config has no max_position_embeddings: pass --max_length")
    overhead = _chat_overhead(tokenizer) if uses_chat_template(tokenizer, task) else 1
    budget = positions - task.max_new_tokens - overhead
    if budget < 16:
        raise ValueError(f"{task.name}: {positions} positions leave no room for a prompt "
                         f"and {task.max_new_tokens} new tokens; pass --max_length")
    return budget


def build_input_ids(
    record: dict[str, Any], template: str, task: LongBenchTask, tokenizer, budget: int
) -> tuple[list[int], bool]:
    """Token ids of one prompt (middle-truncated to ``budget``, chat-wrapped if applicable) and whether it was cut."""
    prompt = template.format(context=record["context"], input=record["input"])
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    truncated = len(ids) > budget
    if truncated:
        prompt = tokenizer.decode(truncate_middle(ids, budget), skip_special_tokens=True)
    if uses_chat_template(tokenizer, task):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids, truncated
    return tokenizer(prompt).input_ids, truncated


# ---------------------------------------------------------------------------- generation
def _first_line_complete(tokenizer, new_tokens) -> bool:
    """Whether the answer so far (leading newlines ignored) has a complete first line."""
    return "\n" in tokenizer.decode(new_tokens, skip_special_tokens=True).lstrip("\n")


class FirstLineDone(StoppingCriteria):
    """Stop once the answer (leading newlines ignored) has a complete first line; batch size 1."""

    def __init__(self, tokenizer, prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = _first_line_complete(self.tokenizer, input_ids[0, self.prompt_len:])
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def first_line_end(tokenizer, new_tokens: list[int]) -> int:
    """How many of ``new_tokens`` generate() keeps under :class:`FirstLineDone` (it stops after the token that
    completes the first line)."""
    for k in range(1, len(new_tokens) + 1):
        if _first_line_complete(tokenizer, new_tokens[:k]):
            return k
    return len(new_tokens)


def _eos_ids(model, tokenizer) -> Optional[list[int]]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return None if eos is None else ([eos] if isinstance(eos, int) else list(eos))


@torch.no_grad()
def generate(model, tokenizer, input_ids: list[int], max_new_tokens: int, stop_at_newline: bool,
             graph_decode: bool = False) -> tuple[str, int]:
    """Greedy continuation of one prompt: (text decoded without special tokens, KV-cache bytes at the end).
    ``graph_decode``: through :func:`palu.graph_decode.graph_generate` (the same tokens, steps replayed from CUDA
    graphs; the first-line stop applied to its output)."""
    from ..modules.cache import cache_nbytes

    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if graph_decode:
        from ..graph_decode import GraphDecodeConfig, graph_generate

        out = graph_generate(model, ids, torch.ones_like(ids),
                             GraphDecodeConfig(max_new_tokens=max_new_tokens, eos_token_id=_eos_ids(model, tokenizer),
                                               pad_token_id=pad if pad is not None else 0))
        new = out.sequences[0, ids.shape[1]:].tolist()
        if stop_at_newline:
            new = new[: first_line_end(tokenizer, new)]
        return tokenizer.decode(new, skip_special_tokens=True), out.cache_bytes
    stopping = StoppingCriteriaList([FirstLineDone(tokenizer, ids.shape[1])]) if stop_at_newline else None
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        temperature=None, top_p=None, top_k=None, pad_token_id=pad, stopping_criteria=stopping,
        return_dict_in_generate=True,
    )
    kv_bytes = cache_nbytes(out.past_key_values) if out.past_key_values is not None else 0
    return tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True), kv_bytes


def evaluate_dataset(model, tokenizer, name: str, records: list[dict[str, Any]], template: str,
                     max_length: Optional[int], show_progress: bool = True, graph_decode: bool = False
                     ) -> dict[str, Any]:
    """Score one dataset: {"score" (0-100), "metric", "n", "truncated", "avg_prompt_tokens",
    "max_kv_cache_bytes" (cache held after the largest item), "peak_memory_bytes" (CUDA only), "samples"}."""
    task = TASKS[name]
    budget = prompt_budget(model, tokenizer, task, max_length)
    samples, n_truncated, n_tokens = [], 0, 0
    device = next(model.parameters()).device
    if device.type == "cuda":  # peak over this dataset: weights + cache + activations of the longest prompt
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for rec in tqdm(records, desc=name, disable=not show_progress):
        ids, truncated = build_input_ids(rec, template, task, tokenizer, budget)
        prediction, kv_bytes = generate(model, tokenizer, ids, task.max_new_tokens, stop_at_newline=task.first_line,
                                        graph_decode=graph_decode)
        score = score_item(task.metric, prediction, rec["answers"], rec.get("all_classes"), task.first_line)
        samples.append({"id": rec.get("_id"), "prediction": prediction, "answers": rec["answers"], "score": score,
                        "prompt_tokens": len(ids), "kv_cache_bytes": kv_bytes})
        n_truncated += truncated
        n_tokens += len(ids)
    return {
        "score": 100 * sum(s["score"] for s in samples) / len(samples), "metric": task.metric, "n": len(samples),
        "max_new_tokens": task.max_new_tokens, "prompt_budget": budget, "truncated": n_truncated,
        "avg_prompt_tokens": n_tokens / len(samples),
        "max_kv_cache_bytes": max(s["kv_cache_bytes"] for s in samples),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "samples": samples,
    }


def evaluate(model, tokenizer, cfg: LongBenchConfig, show_progress: bool = True) -> dict[str, Any]:
    """All of ``cfg.datasets``: {"datasets": {name: evaluate_dataset(...)}, "average", "chat_template": bool}."""
    check_data(cfg)
    prompts = load_prompts(cfg.prompt_config)
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if not has_chat and any(not TASKS[d].completion for d in cfg.datasets):
        logger.warning("the tokenizer has no chat template: instruction prompts are fed as plain text")
    results = {}
    for name in cfg.datasets:
        records = load_records(name, cfg.data_dir)
        records = records[: cfg.limit] if cfg.limit else records
        results[name] = evaluate_dataset(model, tokenizer, name, records, prompts[name], cfg.max_length, show_progress,
                                         cfg.graph_decode)
    average = sum(r["score"] for r in results.values()) / len(results)
    return {"datasets": results, "average": average, "chat_template": has_chat}


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| dataset | metric | score | n | truncated | avg prompt tokens | max KV cache MiB | peak memory MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    for name, r in summary["datasets"].items():
        lines.append(f"| {name} | {r['metric']} | {r['score']:.2f} | {r['n']} | {r['truncated']} | "
                     f"{r['avg_prompt_tokens']:.0f} | {mib(r['max_kv_cache_bytes'])} | {mib(r['peak_memory_bytes'])} |")
    lines.append(f"| **average** | | {summary['average']:.2f} | | | | | |")
    return "\n".join(lines)
