"""Text sources: hub datasets are requested with the published ids and splits (datasets mocked:
no hub here), files are read whole, bad files fail with their name and line."""
from __future__ import annotations

import pytest

from palu import data

datasets = pytest.importorskip("datasets")


@pytest.fixture
def hub_calls(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, data_files=None, cache_dir=None):
        calls.append({"path": path, "name": name, "split": split, "data_files": data_files, "cache_dir": cache_dir})
        if path == "wikitext":
            return dict(text=[" = Title = \n", " body line \n"])
        if path == "ptb_text_only":
            return dict(sentence=["a b", "c d"])
        return dict(text=[f"doc {i}" for i in range(1200)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_wikitext2_and_ptb_use_train_for_calibration_and_test_for_evaluation(hub_calls):
    assert data.load_texts("wikitext2", "eval", cache_dir="/c") == [" = Title = \n\n\n body line \n"]
    assert data.load_texts("wikitext2", "calib") == [" = Title = \n\n\n body line \n"]
    assert data.load_texts("ptb", "eval") == ["a b c d"]
    assert [(c["path"], c["name"], c["split"]) for c in hub_calls] == [
        ("wikitext", "wikitext-2-raw-v1", "test"), ("wikitext", "wikitext-2-raw-v1", "train"),
        ("ptb_text_only", "penn_treebank", "test"),
    ]
    assert hub_calls[0]["cache_dir"] == "/c"


def test_c4_reads_one_shard_per_split_and_evaluates_the_first_1100_documents(hub_calls):
    assert len(data.load_texts("c4", "eval")) == 1100
    assert len(data.load_texts("c4", "calib")) == 1200
    files = [c["data_files"] for c in hub_calls]
    assert files == [{"eval": "en/c4-validation.00000-of-00008.json.gz"}, {"calib": "en/c4-train.00000-of-01024.json.gz"}]
    assert all(c["path"] == "allenai/c4" for c in hub_calls)


def test_unknown_name_and_missing_file_fail_clearly(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="nope"):
        data.check_source("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        data.load_texts(str(bad), "eval")
