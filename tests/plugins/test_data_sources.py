"""The built-in data sources: both register, every split file shares train's label set, the hub source
maps its splits and columns, real data parses whole. How files parse and how bad rows are named is
tested through the files source in tests/core/data/test_readers.py (the readers are core's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alambic.config import DataConfig
from alambic.data.report import DataReport
from alambic.errors import DataError
from alambic.plugins import data_sources
from alambic.plugins.data_sources import HFSource
from alambic.registry import KindRegistry
from tests.core.data.test_readers import NAMES_ZH, TSV, load, rows, write

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
THUCNEWS = SHARED / "thucnews-title"


# --- layouts that work -----------------------------------------------------------------------


def test_registers_both_sources() -> None:
    register = KindRegistry("datasets")
    data_sources.alambic_register_datasets(register=register)
    assert register.ids() == ["files", "hf"]


def test_every_split_file_shares_the_train_label_set(tmp_path: Path) -> None:
    dsd, _ = load(train=write(tmp_path, "a.tsv", TSV), test=write(tmp_path, "b.tsv", "新闻\t2\n"),
                  text_column=0, label_column=1)
    assert list(dsd) == ["train", "test"]
    assert dsd["test"].features["label"] == dsd["train"].features["label"]
    assert rows(dsd["test"]) == [("新闻", "2")]


# --- hf source -------------------------------------------------------------------------------


def _fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    import datasets

    calls: list[tuple[Any, ...]] = []
    feats = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                               "y": datasets.ClassLabel(names=["neg", "pos"])})

    def load_dataset(path: str, name: str | None = None) -> datasets.DatasetDict:
        calls.append((path, name))
        split = {"sentence": ["好", "坏", ""], "y": [1, 0, 1], "idx": [0, 1, 2]}
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(split, features=feats),
                                     "dev": datasets.Dataset.from_dict(split, features=feats)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hf_source_renames_columns_and_maps_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_hub(monkeypatch)
    config = DataConfig(source="hf", dataset="someone/reviews", dataset_config="zh", text_column="sentence",
                        label_column="y", split_names={"validation": "dev"}, bad_rows="skip")
    report = DataReport(on_bad_row="skip")
    dsd = HFSource().load(config, report)
    assert calls == [("someone/reviews", "zh")]
    assert list(dsd) == ["train", "validation"]
    assert rows(dsd["validation"]) == [("好", "pos"), ("坏", "neg")]
    assert [str(r) for r in report.bad_rows] == ["someone/reviews[train]:3: empty text",
                                                 "someone/reviews[dev]:3: empty text"]
    assert report.source_fingerprint


def test_hf_source_unknown_split_lists_the_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch)
    config = DataConfig(source="hf", dataset="x", text_column="sentence", label_column="y",
                        split_names={"test": "testing"})
    with pytest.raises(DataError, match="no split 'testing'; splits: train, dev"):
        HFSource().load(config, DataReport())


def test_hf_split_of_bad_rows_only_names_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch)
    config = DataConfig(source="hf", dataset="someone/reviews", text_column="sentence", label_column="y",
                        label_names=["bad", "good"], label_type="name", bad_rows="skip")
    # row 3 (empty text) is found first, rows 1-2 once labels are checked: row 3 is where error mode stops
    expected = r"^someone/reviews\[train\]: all 3 row\(s\) are bad; the first: someone/reviews\[train\]:3: empty text$"
    with pytest.raises(DataError, match=expected):
        HFSource().load(config, DataReport(on_bad_row="skip"))


def test_hf_source_offline_says_to_use_files(hub_offline: None, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so the id cannot be read as a local folder
    config = DataConfig(source="hf", dataset="alambic-tests/no-such-dataset")
    with pytest.raises(DataError, match="hub could not be reached.*`source: files`"):
        HFSource().load(config, DataReport())


# --- real data -------------------------------------------------------------------------------


@pytest.mark.skipif(not THUCNEWS.is_dir(), reason=f"shared data not found at {THUCNEWS} (fresh clone)")
def test_thucnews_title_parses_whole() -> None:
    dsd, report = load(train=str(THUCNEWS / "train.txt"), validation=str(THUCNEWS / "dev.txt"),
                       test=str(THUCNEWS / "test.txt"), label_names=str(THUCNEWS / "class_zh.txt"),
                       text_column=0, label_column=1)
    assert {s: len(ds) for s, ds in dsd.items()} == {"train": 45_000, "validation": 10_000, "test": 10_000}
    assert dsd["train"].features["label"].names == NAMES_ZH
    assert report.skipped == 0
    assert rows(dsd["train"])[0] == ("中华女子学院：本科层次仅1专业招男生", "教育")
