"""Tokenized splits between alambic and a peer's environment: numpy only, so both sides read it.

A split is one ``.npz``: every row's token ids end to end (``ids``), where each row starts
(``offsets``, one more than rows) and the labels. Rows stay in the split's order: row ``i`` is the
same headline on both sides, and the teacher-logit rows of alambic's cache line up with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def write_split(dataset: Any, path: Path) -> Path:
    """Write a tokenized ``datasets.Dataset`` (``input_ids``, ``label``) as a split file, atomically:
    a run stopped half-way leaves no half-written file to be read later."""
    rows = dataset.with_format("numpy", columns=["label"])["label"]
    ids = dataset["input_ids"]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in ids])
    flat = np.fromiter((t for r in ids for t in r), dtype=np.int64, count=int(offsets[-1]))
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:
        np.savez(out, ids=flat, offsets=offsets, labels=np.asarray(rows, dtype=np.int64))
    partial.replace(path)
    return path


class Split:
    """A split file read back: ``len``, ``labels``, ``rows(i)``, and padded batches."""

    def __init__(self, path: str | Path, limit: int | None = None):
        data = np.load(path)
        self.ids, self.offsets, self.labels = data["ids"], data["offsets"], data["labels"]
        if limit is not None:
            self.offsets, self.labels = self.offsets[:limit + 1], self.labels[:limit]

    def __len__(self) -> int:
        return len(self.labels)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: np.ndarray, pad_id: int = 0) -> dict[str, np.ndarray]:
        """Rows padded to the longest of them: input_ids, attention_mask, token_type_ids, labels."""
        width = int(max(self.offsets[i + 1] - self.offsets[i] for i in rows))
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(rows):
            tokens = self.row(int(i))
            input_ids[j, :len(tokens)] = tokens
            mask[j, :len(tokens)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids),
                "labels": self.labels[rows]}

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, pad_id: int = 0
                ) -> Iterator[dict[str, np.ndarray]]:
        """Padded batches in order (or shuffled by ``seed``), each padded to its own longest row."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size], pad_id)


def accuracy(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1, as alambic computes them (F1 per class from the confusion matrix)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    confusion = np.bincount(labels * num_labels + predictions, minlength=num_labels ** 2).reshape(num_labels, -1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {"accuracy": float(tp.sum() / max(1, len(labels))), "macro_f1": float(f1.mean()),
            "examples": int(len(labels))}


def io() -> tuple[dict[str, Any], Path]:
    """A side script's inputs (``argv[1]``, JSON) and where its result goes (``argv[2]``)."""
    return json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")), Path(sys.argv[2])


def finish(result: dict[str, Any], path: Path) -> None:
    """Write the result atomically: a half-written file is never read as a result."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    partial.replace(path)
