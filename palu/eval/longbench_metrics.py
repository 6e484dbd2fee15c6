"""LongBench scoring functions (Bai et al., 2023, Sec. 3), written for this project.

Every metric maps ``(prediction, reference, **context)`` to a score in [0, 1];
:func:`score_item` takes the best score over an item's references, and the runner
reports the mean over items times 100, as LongBench does. English only: the Chinese
metrics (character-level F1 / ROUGE) are not implemented.

* ``qa_f1`` — token F1 after SQuAD-style normalization (lowercase, no punctuation,
  no English articles, collapsed whitespace).
* ``rouge_l`` — ROUGE-L F1 from the longest common subsequence of lowercase
  alphanumeric tokens (one "sentence": no summary-level union).
* ``classification`` — 1/k when the reference is among the k class names mentioned
  in the prediction (class names that are strict substrings of the reference are
  not counted against it), else 0.
* ``retrieval`` — share of the numbers in the prediction that equal the reference
  paragraph number ("Paragraph 7" → 7).
* ``count`` — share of the numbers in the prediction that equal the reference count.
* ``code_sim`` — edit similarity 2·LCS/(|a|+|b|) of characters (the indel-distance
  ratio) between the first prediction line that is not a comment or code fence and
  the reference line.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Optional, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"\d+")
_WORD = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """Harmonic mean of token precision and recall (multiset overlap)."""
    overlap = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str, **_) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence; O(|a|·|b|) time, O(min) memory."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            keep = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = keep
    return row[-1]


def rouge_l(prediction: str, reference: str, **_) -> float:
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def classification(prediction: str, reference: str, all_classes: Optional[Sequence[str]] = None, **_) -> float:
    if not all_classes:
        raise ValueError("classification scoring needs the item's all_classes")
    mentioned = [c for c in all_classes if c in prediction]
    # A class name inside the reference (e.g. "city" in "capital city") is not a competing answer.
    mentioned = [c for c in mentioned if c == reference or c not in reference]
    return 1.0 / len(mentioned) if reference in mentioned else 0.0


def _share_equal(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def retrieval(prediction: str, reference: str, **_) -> float:
    match = re.search(r"Paragraph (\d+)", reference)
    if match is None:
        raise ValueError(f"retrieval reference {reference!r} does not name a paragraph ('Paragraph N')")
    return _share_equal(prediction, match.group(1))


def count(prediction: str, reference: str, **_) -> float:
    return _share_equal(prediction, str(reference).strip())


def first_code_line(prediction: str) -> str:
    """The first generated line that is code, not a comment or a markdown fence."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def edit_similarity(a: str, b: str) -> float:
    """1 − indel_distance/(|a|+|b|) = 2·LCS/(|a|+|b|); 1.0 for two empty strings."""
    if not a and not b:
        return 1.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


def code_sim(prediction: str, reference: str, **_) -> float:
    return edit_similarity(first_code_line(prediction), reference)


METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1,
    "rouge_l": rouge_l,
    "classification": classification,
    "retrieval": retrieval,
    "count": count,
    "code_sim": code_sim,
}


def score_item(
    metric: str, prediction: str, references: Sequence[str], all_classes=None, first_line: bool = False
) -> float:
    """Best score over the references, in [0, 1]. ``first_line``: score the first generated line only."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    if not references:
        raise ValueError("item has no reference answers")
    if first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    fn = METRICS[metric]
    return max(fn(prediction, ref, all_classes=all_classes) for ref in references)
