"""LongBench task table: metric, generation budget and a default prompt per dataset.

The prompts are this project's own wording; they keep LongBench's placeholders
``{context}`` and ``{input}``, so the official ``dataset2prompt.json`` can be passed
instead (``--prompt_config``) to reproduce published numbers. The metric and
``max_new_tokens`` per dataset follow the LongBench paper and repository (facts, not
code). ``completion`` tasks are few-shot continuations and code completion: they get
no chat template. ``first_line`` tasks are scored on the first generated line only.

Two local tasks built from the held-out Wikipedia summaries
(:mod:`palu.eval.local_tasks`) use the same machinery.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LongBenchTask:
    name: str
    metric: str
    max_new_tokens: int
    prompt: str
    completion: bool = False
    first_line: bool = False


_QA_LONG = "Answer the question using the text below. Reply with as few words as possible.\n\n"
_QA_MULTI = "Answer the question using the passages below. Reply with the answer only, no explanation.\n\n"

_TASKS = [
    LongBenchTask("narrativeqa", "qa_f1", 128,
                  "You are given a story and a question about it. " + _QA_LONG
                  + "Story:\n{context}\n\nNow answer briefly, without explanation.\n\nQuestion: {input}\n\nAnswer:"),
    LongBenchTask("qasper", "qa_f1", 128,
                  "You are given a scientific paper and a question about it. Answer with a short phrase or sentence. "
                  "If the paper does not answer it, reply \"unanswerable\"; for a yes/no question reply \"yes\", "
                  "\"no\" or \"unanswerable\".\n\nPaper:\n{context}\n\nQuestion: {input}\n\nAnswer:"),
    LongBenchTask("multifieldqa_en", "qa_f1", 64,
                  _QA_LONG + "Text:\n{context}\n\nQuestion: {input}\nAnswer:"),
    LongBenchTask("hotpotqa", "qa_f1", 32, _QA_MULTI + "{context}\n\nQuestion: {input}\nAnswer:"),
    LongBenchTask("2wikimqa", "qa_f1", 32, _QA_MULTI + "{context}\n\nQuestion: {input}\nAnswer:"),
    LongBenchTask("musique", "qa_f1", 32, _QA_MULTI + "{context}\n\nQuestion: {input}\nAnswer:"),
    LongBenchTask("gov_report", "rouge_l", 512,
                  "Below is a government report. Summarize it.\n\nReport:\n{context}\n\nSummary:"),
    LongBenchTask("qmsum", "rouge_l", 512,
                  "Below is a meeting transcript and a request about it. Answer the request in a few sentences.\n\n"
                  "Transcript:\n{context}\n\nRequest: {input}\nAnswer:"),
    LongBenchTask("multi_news", "rouge_l", 512,
                  "Below are several news articles. Write one summary that covers all of them.\n\n"
                  "{context}\n\nSummary:"),
    LongBenchTask("trec", "classification", 64,
                  "Classify the question by the type of its answer. Examples follow.\n\n{context}\n{input}",
                  completion=True, first_line=True),
    LongBenchTask("triviaqa", "qa_f1", 32,
                  "Answer the question using the passage. Examples follow.\n\n{context}\n\n{input}",
                  completion=True, first_line=True),
    LongBenchTask("samsum", "rouge_l", 128,
                  "Summarize the dialogue. Examples follow.\n\n{context}\n\n{input}",
                  completion=True, first_line=True),
    LongBenchTask("passage_count", "count", 32,
                  "Below are several paragraphs, some of them repeated. How many different paragraphs are there? "
                  "Reply with a number only.\n\n{context}\n\nNumber of different paragraphs:"),
    LongBenchTask("passage_retrieval_en", "retrieval", 32,
                  "Below are numbered paragraphs and a summary of one of them. Which paragraph does the summary "
                  "describe? Reply like \"Paragraph 3\".\n\n{context}\n\nSummary: {input}\n\nAnswer:"),
    LongBenchTask("lcc", "code_sim", 64, "Continue the code with its next line.\n{context}", completion=True),
    LongBenchTask("repobench-p", "code_sim", 64,
                  "Continue the code with its next line.\n{context}{input}", completion=True),
    # Local tasks (palu.eval.local_tasks): held-out Wikipedia summaries, no download.
    LongBenchTask("wiki_title_qa", "qa_f1", 16,
                  "Below are encyclopedia articles, each under its title.\n\n{context}\n\n"
                  "Question: {input}\nAnswer with the article's title only.\nAnswer:", first_line=True),
    LongBenchTask("wiki_passage_retrieval", "retrieval", 16,
                  "Below are numbered paragraphs from an encyclopedia.\n\n{context}\n\n"
                  "Which paragraph is about {input}? Answer with its label only, such as \"Paragraph N\".\nAnswer:",
                  first_line=True),
]

TASKS: dict[str, LongBenchTask] = {t.name: t for t in _TASKS}
LOCAL_TASKS = ("wiki_title_qa", "wiki_passage_retrieval")
DEFAULT_DATASETS = ("triviaqa", "qasper", "trec", "samsum", "lcc", "repobench-p", "qmsum", "multi_news")
