"""Offline evaluation tasks built from the held-out Wikipedia summaries (``palu.data``, "eval" split).

Compression calibrates on the "calib" split, so none of these articles is seen
before evaluation. Everything is deterministic for a given seed. The defaults are sized for a 135M
model on a small CPU (~700-token contexts); raise ``articles_per_context`` (~110
tokens each) for long-context models. One directory
holds all tasks, so it serves both runners:

* ``palu_wiki_mc.yaml`` + ``palu_wiki_mc.jsonl`` — an lm-eval multiple-choice task
  (``run_lm_eval.py --include_path DIR --tasks palu_wiki_mc``): the first sentences
  of a summary with its title masked, and four titles from the same topic to choose from.
* ``wiki_title_qa.jsonl`` — LongBench format (``run_long_bench.py --data_dir DIR``):
  many titled articles as context; which article contains a quoted sentence?
  The answer is the title, graded by token F1.
* ``wiki_passage_retrieval.jsonl`` — LongBench format: numbered untitled
  paragraphs; which paragraph is about a given title? Graded like LongBench's
  passage retrieval ("Paragraph N").

The lm-eval YAML names its data file by absolute path (lm-eval resolves relative
``data_files`` against the working directory, not the YAML), so move the directory
by rebuilding it.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import is_eval_article, wiki_summaries_path

logger = logging.getLogger(__name__)

MC_TASK = "palu_wiki_mc"
MASK = "___"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class LocalTasksConfig:
    """Sizes of the built tasks (see the module docstring)."""

    mc_items: int = 200
    long_items: int = 30
    articles_per_context: int = 6
    mc_max_sentences: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.mc_items, self.long_items) < 1:
            raise ValueError("mc_items and long_items must be >= 1")
        if self.articles_per_context < 2:
            raise ValueError("articles_per_context must be >= 2")
        if self.mc_max_sentences < 1:
            raise ValueError("mc_max_sentences must be >= 1")


def eval_articles() -> list[dict[str, str]]:
    """Held-out articles ({"title", "extract", "topic", "description"}), sorted by title."""
    data = json.loads(wiki_summaries_path().read_text(encoding="utf-8"))
    out = []
    for title in sorted(data):
        rec = data[title]
        if is_eval_article(title) and (rec.get("extract") or "").strip():
            out.append({"title": title, "extract": rec["extract"].strip(), "topic": rec.get("topic") or "",
                        "description": rec.get("description") or ""})
    return out


def _title_stem(title: str) -> str:
    return re.sub(r"\s*\(.*\)$", "", title).strip()  # "Mercury (planet)" -> "Mercury"


def mask_title(text: str, title: str) -> str:
    return re.sub(re.escape(_title_stem(title)), MASK, text, flags=re.IGNORECASE)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def build_mc_items(articles: list[dict[str, str]], n: int, seed: int, max_sentences: int = 2) -> list[dict[str, Any]]:
    """Multiple choice: which title does the masked summary (first sentences) describe? Distractors share the topic."""
    rng = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    for a in articles:
        by_topic.setdefault(a["topic"], []).append(a["title"])
    all_titles = [a["title"] for a in articles]
    items = []
    for a in rng.sample(articles, min(n, len(articles))):
        pool = [t for t in by_topic[a["topic"]] if t != a["title"]]
        if len(pool) < 3:
            pool = [t for t in all_titles if t != a["title"]]
        choices = rng.sample(pool, 3) + [a["title"]]
        rng.shuffle(choices)
        summary = " ".join(sentences(a["extract"])[:max_sentences])
        items.append({"summary": mask_title(summary, a["title"]), "choices": choices,
                      "label": choices.index(a["title"]), "title": a["title"]})
    return items


def _longbench_record(name: str, idx: int, context: str, question: str, answer: str) -> dict[str, Any]:
    return {"input": question, "context": context, "answers": [answer], "length": len(context.split()),
            "dataset": name, "language": "en", "all_classes": None, "_id": f"{name}-{idx}"}


def build_title_qa(articles: list[dict[str, str]], n: int, k: int, seed: int) -> list[dict[str, Any]]:
    """Context: k titled articles; question: which one contains a quoted (non-first) sentence. Answer: its title."""
    rng = random.Random(seed)
    needles = [a for a in articles if len(sentences(a["extract"])) >= 2]
    out = []
    for idx, target in enumerate(rng.sample(needles, min(n, len(needles)))):
        others = rng.sample([a for a in articles if a["title"] != target["title"]], k - 1)
        docs = others + [target]
        rng.shuffle(docs)
        context = "\n\n".join(f"Title: {d['title']}\n{d['extract']}" for d in docs)
        quote = rng.choice(sentences(target["extract"])[1:])
        out.append(_longbench_record("wiki_title_qa", idx, context,
                                     f"Which article contains this sentence: \"{quote}\"?", target["title"]))
    return out


def build_passage_retrieval(articles: list[dict[str, str]], n: int, k: int, seed: int) -> list[dict[str, Any]]:
    """Context: k numbered paragraphs without titles; input: a title named in its paragraph. Answer: "Paragraph i"."""
    rng = random.Random(seed + 1)
    needles = [a for a in articles if _title_stem(a["title"]).lower() in a["extract"].lower()]
    out = []
    for idx, target in enumerate(rng.sample(needles, min(n, len(needles)))):
        others = rng.sample([a for a in articles if a["title"] != target["title"]], k - 1)
        docs = others + [target]
        rng.shuffle(docs)
        context = "\n\n".join(f"Paragraph {i}: {d['extract']}" for i, d in enumerate(docs, 1))
        answer = f"Paragraph {docs.index(target) + 1}"
        out.append(_longbench_record("wiki_passage_retrieval", idx, context, target["title"], answer))
    return out


def mc_task_yaml(data_file: Path) -> str:
    """lm-eval task config for the multiple-choice items in ``data_file`` (absolute path)."""
    path = json.dumps(str(data_file.resolve()))  # a JSON string is a valid YAML scalar, quoting included
    question = f"Which article is this summary from ({MASK} hides its name)?"
    return f"""task: {MC_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Summary: {{{{summary}}}}\\nQuestion: {question}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_local_tasks(out_dir: str | Path, cfg: LocalTasksConfig = LocalTasksConfig()) -> dict[str, Path]:
    """Write all local tasks into ``out_dir`` (created); returns {task name: file written}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    articles = eval_articles()
    if len(articles) < cfg.articles_per_context:
        raise ValueError(f"only {len(articles)} held-out articles, fewer than {cfg.articles_per_context} per context")
    mc_file = out / f"{MC_TASK}.jsonl"
    _write_jsonl(mc_file, build_mc_items(articles, cfg.mc_items, cfg.seed, cfg.mc_max_sentences))
    yaml_file = out / f"{MC_TASK}.yaml"
    yaml_file.write_text(mc_task_yaml(mc_file), encoding="utf-8")
    files = {MC_TASK: yaml_file}
    for name, builder in (("wiki_title_qa", build_title_qa), ("wiki_passage_retrieval", build_passage_retrieval)):
        files[name] = out / f"{name}.jsonl"
        _write_jsonl(files[name], builder(articles, cfg.long_items, cfg.articles_per_context, cfg.seed))
    logger.info("wrote local tasks to %s: %s", out, sorted(files))
    return files
