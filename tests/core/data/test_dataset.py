"""Core data handling: splits, checks, fingerprints, describe (the tokenizer side: test_tokenize.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from alambic.config import DataConfig, TokenizerConfig
from alambic.data.dataset import column, data_fingerprint, describe_data, load_data
from alambic.data.report import DataReport
from alambic.data.tokenize import load_tokenizer
from alambic.errors import DataError
from alambic.registry import Registry

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
THUCNEWS = SHARED / "thucnews-title"
VOCAB = SHARED / "bert-base-chinese" / "vocab.txt"
needs_vocab = pytest.mark.skipif(
    not VOCAB.is_file(), reason=f"shared data not found at {VOCAB} (fresh clone)")
needs_thucnews = pytest.mark.skipif(
    not THUCNEWS.is_dir(), reason=f"shared data not found at {THUCNEWS} (fresh clone)")
CHARS = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出"


def dataset(texts: list[str], labels: list[int], names: list[str]) -> Dataset:
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def registry_with(splits: dict[str, Dataset]) -> Registry:
    """A registry whose 'memory' source returns ``splits``: core tested apart from any file format."""

    class MemorySource:
        id = "memory"

        def load(self, config: DataConfig, report: DataReport) -> DatasetDict:
            report.source_fingerprint = "memory"
            return DatasetDict(splits)

    registry = Registry()
    registry["datasets"].add(MemorySource)
    return registry


def balanced(n_per_class: int, n_classes: int = 5, prefix: str = "t") -> Dataset:
    labels = [i % n_classes for i in range(n_per_class * n_classes)]
    texts = [f"{prefix}{i}" for i in range(len(labels))]
    return dataset(texts, labels, [f"c{i}" for i in range(n_classes)])


def label_counts(ds: Dataset) -> list[int]:
    labels = column(ds, "label")
    return [labels.count(i) for i in range(ds.features["label"].num_classes)]


# --- load_data: splits and checks ------------------------------------------------------------


def test_only_train_is_split_stratified_and_seeded() -> None:
    registry = registry_with({"train": balanced(20)})
    dsd, report = load_data(DataConfig(source="memory"), registry)
    assert list(dsd) == ["train", "validation", "test"]
    assert {s: len(ds) for s, ds in dsd.items()} == {"train": 80, "validation": 10, "test": 10}
    assert label_counts(dsd["test"]) == label_counts(dsd["validation"]) == [2] * 5
    assert report.warnings == []
    again, _ = load_data(DataConfig(source="memory"), registry)
    other, _ = load_data(DataConfig(source="memory", split={"seed": 7}), registry)
    texts = {s: column(ds, "text") for s, ds in dsd.items()}
    assert texts == {s: column(ds, "text") for s, ds in again.items()}
    assert texts["test"] != column(other["test"], "text")
    assert sorted(sum(texts.values(), [])) == sorted(column(balanced(20), "text"))  # a partition


def test_given_validation_only_test_is_split_off() -> None:
    registry = registry_with({"train": balanced(20), "validation": balanced(1, prefix="v")})
    dsd, _ = load_data(DataConfig(source="memory", split={"test": 0.2}), registry)
    assert {s: len(ds) for s, ds in dsd.items()} == {"train": 80, "validation": 5, "test": 20}


def test_subsample_is_stratified() -> None:
    registry = registry_with({"train": balanced(40)})
    dsd, _ = load_data(DataConfig(source="memory", subsample={"train": 50, "test": 500}), registry)
    assert label_counts(dsd["train"]) == [10] * 5
    assert len(dsd["test"]) == 20  # asking for more than there is keeps all


def test_singleton_class_falls_back_to_an_unstratified_split() -> None:
    train = dataset([f"t{i}" for i in range(30)], [0] * 29 + [1], ["a", "b"])
    dsd, report = load_data(DataConfig(source="memory"), registry_with({"train": train}))
    assert sum(len(ds) for ds in dsd.values()) == 30
    assert any("without stratification" in w for w in report.warnings)


def test_warns_about_empty_classes_and_cross_split_duplicates() -> None:
    names = ["a", "b", "c"]
    splits = {"train": dataset(["x", "y", "z"], [0, 1, 2], names),
              "validation": dataset(["x", "new"], [0, 1], names),
              "test": dataset(["y", "new", "other"], [1, 1, 0], names)}
    _, report = load_data(DataConfig(source="memory"), registry_with(splits))
    assert "split 'validation' has no examples of 1 label(s): c" in report.warnings
    assert "split 'test' has no examples of 1 label(s): c" in report.warnings
    assert ("3 validation/test row(s) repeat a text of an earlier split "
            "(validation/train 1, test/train 1, test/validation 1)") in report.warnings


def test_source_breaking_the_contract_is_named() -> None:
    bad = Dataset.from_dict({"text": ["a"], "label": [0]})  # an int label, not a ClassLabel
    with pytest.raises(DataError, match="data source 'memory': split 'train' label is .* not a ClassLabel"):
        load_data(DataConfig(source="memory"), registry_with({"train": bad}))


def test_files_source_end_to_end_with_skipped_rows(tmp_path: Path) -> None:
    from alambic.plugins.data_sources import FilesSource

    lines = [f"{CHARS[i % 30]}{i}\t{i % 2}" for i in range(40)] + ["\t1"]
    (tmp_path / "train.tsv").write_text("\n".join(lines), encoding="utf-8")
    config = DataConfig(train=str(tmp_path / "train.tsv"), text_column=0, label_column=1, bad_rows="skip")
    registry = Registry()
    registry["datasets"].add(FilesSource)
    dsd, report = load_data(config, registry)
    assert [len(ds) for ds in dsd.values()] == [32, 4, 4]
    assert report.skipped == 1 and report.warnings[0].startswith("skipped 1 bad row(s), first: ")
    assert report.fingerprint == data_fingerprint(config)


def test_run_whose_train_rows_are_all_bad_names_the_first_one(tmp_path: Path, write_config: Any) -> None:
    """The user's path: a YAML run config opened as a run; skip mode leaves no row, the error says why."""
    from alambic.run import RunContext

    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{CHARS[i]}的新闻\t{i % 2 + 5}\n" for i in range(8)), encoding="utf-8")
    config = {"name": "all-bad", "store": str(tmp_path / "artifacts"),
              "data": {"train": "train.tsv", "header": False, "text_column": 0, "label_column": 1,
                       "label_names": ["财经", "房产"], "bad_rows": "skip"},
              "tokenizer": {"name_or_path": None}}
    ctx = RunContext.open(write_config(config), quiet=True)
    expected = rf"^{train}: all 8 row\(s\) are bad; the first: {train}:1: label '5' not in label names \[0=财经, 1=房产\]"
    with pytest.raises(DataError, match=expected):
        _ = ctx.prepared  # loading the data is what fails


def test_source_left_with_bad_rows_only_names_the_first() -> None:
    """A third-party source that skipped every row and returned an empty split: core names why."""

    class BadOnlySource:
        id = "bad-only"

        def load(self, config: DataConfig, report: DataReport) -> DatasetDict:
            report.source_fingerprint = "bad-only"
            report.bad_row("reviews.db", 3, "no text")
            report.bad_row("reviews.db", 4, "no label")
            return DatasetDict({"train": dataset([], [], ["a", "b"])})

    registry = Registry()
    registry["datasets"].add(BadOnlySource)
    expected = (r"^data source 'bad-only': split 'train' has no usable rows; 2 bad row\(s\) were skipped, "
                r"the first: reviews.db:3: no text$")
    with pytest.raises(DataError, match=expected):
        load_data(DataConfig(source="bad-only", bad_rows="skip"), registry)


def test_golden_file_of_bad_rows_only_names_the_first(tmp_path: Path) -> None:
    from alambic.data.dataset import load_golden

    golden = tmp_path / "golden.tsv"
    golden.write_text("一\t娱乐\n二\t游戏\n", encoding="utf-8")
    config = DataConfig(train="t", golden=str(golden), header=False, text_column=0, label_column=1,
                        bad_rows="skip")
    expected = rf"^{golden}: all 2 row\(s\) are bad; the first: {golden}:1: label '娱乐' not in label names"
    with pytest.raises(DataError, match=expected):
        load_golden(config, ["体育", "财经"])


# --- fingerprints ----------------------------------------------------------------------------


def test_data_fingerprint_follows_content_and_options_not_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "train.tsv").write_text("好\t0\n坏\t1\n", encoding="utf-8")
    base = DataConfig(train=str(tmp_path / "a" / "train.tsv"), text_column=0, label_column=1)
    moved = base.model_copy(update={"train": str(tmp_path / "b" / "train.tsv")})
    assert data_fingerprint(base) == data_fingerprint(moved)
    assert data_fingerprint(base) != data_fingerprint(base.model_copy(update={"encoding": "gbk"}))
    (tmp_path / "b" / "train.tsv").write_text("好\t0\n坏\t0\n", encoding="utf-8")
    assert data_fingerprint(base) != data_fingerprint(moved)


def test_data_fingerprint_without_files_needs_the_source() -> None:
    config = DataConfig(source="hf", dataset="someone/data")
    assert data_fingerprint(config, "abc") == data_fingerprint(config, "abc")
    assert data_fingerprint(config, "abc") != data_fingerprint(config, "abd")
    assert data_fingerprint(config) != data_fingerprint(config)  # unknown data: never a cache hit


# --- describe -------------------------------------------------------------------------------


@needs_vocab
def test_describe_data_percentiles_with_the_real_vocab() -> None:
    tokenizer = load_tokenizer(TokenizerConfig(name_or_path=str(VOCAB)))
    texts = [CHARS[:n] for n in range(1, 11)]  # n Chinese characters -> n + 2 tokens
    dsd = DatasetDict({s: dataset(texts, [i % 2 for i in range(10)], ["正面", "负面"])
                       for s in ("train", "validation", "test")})
    report = DataReport(on_bad_row="skip")
    report.bad_row("t.tsv", 3, "empty text")
    summary = describe_data(dsd, report, tokenizer, max_length=10)
    json.dumps(summary)  # JSON-serializable
    assert summary["label_names"] == ["正面", "负面"]
    assert summary["splits"]["test"]["rows"] == 10
    assert summary["splits"]["train"]["labels"] == {"正面": 5, "负面": 5}
    assert summary["splits"]["train"]["tokens"] == {
        "p50": 8, "p90": 12, "p95": 12, "p99": 12, "max": 12, "mean": 7.5, "over_max_length": 0.2}
    assert summary["bad_rows"] == {"count": 1, "first": ["t.tsv:3: empty text"]}


@needs_thucnews
@needs_vocab
def test_thucnews_load_and_describe() -> None:
    from alambic.plugins.data_sources import FilesSource

    registry = Registry()
    registry["datasets"].add(FilesSource)
    config = DataConfig(train=str(THUCNEWS / "train.txt"), validation=str(THUCNEWS / "dev.txt"),
                        test=str(THUCNEWS / "test.txt"), label_names=str(THUCNEWS / "class_zh.txt"),
                        text_column=0, label_column=1, header=False)
    dsd, report = load_data(config, registry)
    summary = describe_data(dsd, report, load_tokenizer(TokenizerConfig(name_or_path=str(VOCAB))), 64)
    splits = summary["splits"]
    assert {s: v["rows"] for s, v in splits.items()} == {
        "train": 45_000, "validation": 10_000, "test": 10_000}
    assert summary["label_names"] == ["财经", "房产", "股票", "教育", "科技", "社会", "时政", "体育", "游戏", "娱乐"]
    assert set(splits["test"]["labels"].values()) == {1000}
    assert splits["train"]["tokens"]["p50"] == 20 and splits["train"]["tokens"]["over_max_length"] == 0
    assert any(w.startswith("99 validation/test row(s) repeat") for w in summary["warnings"])
