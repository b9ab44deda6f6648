"""The split files the peers benchmark hands to other tools' environments (benchmarks/peer_bench/side/exchange.py):
every row comes back as written, batches pad like alambic's, and the metrics are alambic's."""

import sys
from pathlib import Path

import numpy as np
from datasets import Dataset

from alambic.train.loop import classification_metrics, collate, confusion_matrix

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from peer_bench.side.exchange import Split, accuracy, write_split  # noqa: E402

ROWS = {"input_ids": [[101, 7, 8, 102], [101, 9, 102], [101, 5, 6, 7, 8, 102]], "label": [2, 0, 1]}


def test_rows_come_back_in_order_and_batches_pad_like_alambic(tmp_path):
    path = write_split(Dataset.from_dict(ROWS), tmp_path / "split.npz")
    split = Split(path)
    assert len(split) == 3 and split.labels.tolist() == ROWS["label"]
    assert [split.row(i).tolist() for i in range(3)] == ROWS["input_ids"]
    batch = split.batch(np.arange(3), pad_id=1)
    rows = {"input_ids": ROWS["input_ids"], "attention_mask": [[1] * len(r) for r in ROWS["input_ids"]],
            "label": ROWS["label"]}
    expected = collate(rows, pad_id=1)
    assert np.array_equal(batch["input_ids"], expected["input_ids"].numpy())
    assert np.array_equal(batch["attention_mask"], expected["attention_mask"].numpy())
    assert Split(path, limit=2).lengths().tolist() == [4, 3]


def test_shuffled_batches_cover_every_row_once(tmp_path):
    split = Split(write_split(Dataset.from_dict(ROWS), tmp_path / "split.npz"))
    seen = np.concatenate([b["labels"] for b in split.batches(2, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == sorted(ROWS["label"])


def test_accuracy_and_macro_f1_are_alambics():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    ours = classification_metrics(confusion_matrix(labels, predictions, 4))
    theirs = accuracy(predictions, labels, 4)
    assert theirs["accuracy"] == ours["accuracy"] and abs(theirs["macro_f1"] - ours["macro_f1"]) < 1e-12
