"""LongBench metrics, prompt helpers and the local task builders, on worked examples."""
from __future__ import annotations

import json

import pytest

from palu.eval import longbench_metrics as M
from palu.eval.local_tasks import LocalTasksConfig, build_local_tasks, mask_title
from palu.eval.longbench import load_prompts, parse_jsonl, truncate_middle


def test_normalize_answer():
    assert M.normalize_answer("  The Eiffel-Tower, in  PARIS! ") == "eiffeltower in paris"
    assert M.normalize_answer("an apple a day") == "apple day"


@pytest.mark.parametrize("pred, ref, expected", [
    ("The Eiffel Tower", "eiffel tower", 1.0),
    ("in Paris, France", "Paris", 0.5),  # P = 1/3, R = 1
    ("London", "Paris", 0.0),
    ("", "Paris", 0.0),
    ("paris paris", "paris", 2 * 0.5 * 1 / 1.5),  # repeated tokens count once per match
])
def test_qa_f1(pred, ref, expected):
    assert M.qa_f1(pred, ref) == pytest.approx(expected)


def test_lcs_length():
    assert M.lcs_length("ABCBDAB", "BDCABA") == 4
    assert M.lcs_length([], ["a"]) == 0
    assert M.lcs_length("kitten", "sitting") == 4


@pytest.mark.parametrize("pred, ref, expected", [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat"
    ("Police killed the gunman", "the gunman was killed by police", 2 * (2 / 4) * (2 / 6) / (2 / 4 + 2 / 6)),
    ("same words", "SAME words!", 1.0),
    ("", "anything", 0.0),
])
def test_rouge_l(pred, ref, expected):
    assert M.rouge_l(pred, ref) == pytest.approx(expected)


def test_rouge_l_agrees_with_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("the quick brown fox jumps", "a quick brown dog jumps high"),
             ("meeting decided to delay the launch by two weeks", "the launch was delayed two weeks after the meeting")]
    for pred, ref in pairs:
        assert M.rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)


def test_classification():
    classes = ["Location", "Human being", "Number", "city", "capital city"]
    assert M.classification("Location", "Location", all_classes=classes) == 1.0
    assert M.classification("Location or Number", "Location", all_classes=classes) == 0.5
    assert M.classification("Number", "Location", all_classes=classes) == 0.0
    # "city" is inside the reference "capital city": it does not compete with it.
    assert M.classification("capital city", "capital city", all_classes=classes) == 1.0
    with pytest.raises(ValueError, match="all_classes"):
        M.classification("x", "Location")


def test_retrieval_and_count():
    assert M.retrieval("Paragraph 3", "Paragraph 3") == 1.0
    assert M.retrieval("Paragraph 3 or paragraph 12", "Paragraph 3") == 0.5
    assert M.retrieval("I do not know", "Paragraph 3") == 0.0
    assert M.retrieval("Paragraph 30", "Paragraph 3") == 0.0  # whole numbers only
    with pytest.raises(ValueError, match="Paragraph N"):
        M.retrieval("3", "three")
    assert M.count("There are 7 unique paragraphs", "7") == 1.0
    assert M.count("7 or 8", 7) == 0.5


def test_code_sim():
    assert M.first_code_line("\n```python\n# set up\nx = foo(1)\ny = 2") == "x = foo(1)"
    assert M.edit_similarity("kitten", "sitting") == pytest.approx(8 / 13)
    assert M.edit_similarity("", "") == 1.0
    assert M.code_sim("```\nreturn a + b\n```", "return a + b") == 1.0
    assert M.code_sim("// comment only", "x") == 0.0


def test_score_item_best_reference_and_first_line():
    assert M.score_item("qa_f1", "Paris", ["London", "Paris"]) == 1.0
    assert M.score_item("qa_f1", "\nParis\nand more text", ["Paris"], first_line=True) == 1.0
    assert M.score_item("qa_f1", "\nParis\nand more text", ["Paris"]) < 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        M.score_item("bleu", "a", ["a"])


def test_truncate_middle():
    ids = list(range(10))
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 5) == [0, 1, 7, 8, 9]
    assert truncate_middle(ids, 10) == ids


def test_parse_jsonl_errors_name_file_and_line():
    good = json.dumps({"input": "q", "context": "c", "answers": "a"})
    assert parse_jsonl(good + "\n\n", "f.jsonl")[0]["answers"] == ["a"]
    with pytest.raises(ValueError, match=r"f\.jsonl:2: not valid JSON"):
        parse_jsonl(good + "\n{oops\n", "f.jsonl")
    with pytest.raises(ValueError, match=r"f\.jsonl:1: record lacks \['answers'\]"):
        parse_jsonl(json.dumps({"input": "q", "context": "c"}), "f.jsonl")


def test_prompt_config_override_and_validation(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"triviaqa": "Q {input} C {context}"}))
    assert load_prompts(str(good))["triviaqa"] == "Q {input} C {context}"
    assert "{context}" in load_prompts(None)["qasper"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"triviaqa": "{question}"}))
    with pytest.raises(ValueError, match="question"):
        load_prompts(str(bad))


def test_local_tasks_are_deterministic_and_gradeable(tmp_path):
    cfg = LocalTasksConfig(mc_items=6, long_items=3, articles_per_context=4, seed=1)
    files = build_local_tasks(tmp_path / "a", cfg)
    build_local_tasks(tmp_path / "b", cfg)
    for name, path in files.items():
        other = tmp_path / "b" / path.name
        if path.suffix == ".jsonl":
            assert path.read_text() == other.read_text(), name
    mc = [json.loads(line) for line in (tmp_path / "a" / "palu_wiki_mc.jsonl").read_text().splitlines()]
    assert len(mc) == 6
    for item in mc:
        assert len(set(item["choices"])) == 4 and item["choices"][item["label"]] == item["title"]
    assert str((tmp_path / "a" / "palu_wiki_mc.jsonl").resolve()) in files["palu_wiki_mc"].read_text()
    for name in ("wiki_title_qa", "wiki_passage_retrieval"):
        records = parse_jsonl(files[name].read_text(), name)
        assert len(records) == 3
        metric = "qa_f1" if name == "wiki_title_qa" else "retrieval"
        for rec in records:
            assert M.score_item(metric, rec["answers"][0], rec["answers"]) == 1.0
    rec = parse_jsonl(files["wiki_passage_retrieval"].read_text(), "r")[0]
    paragraph = rec["context"].split(f"{rec['answers'][0]}: ")[1].split("\n\n")[0]
    assert rec["input"].split(" (")[0].lower() in paragraph.lower()


def test_mask_title():
    assert mask_title("Mercury is a planet. MERCURY is small.", "Mercury (planet)") == "___ is a planet. ___ is small."
