from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from alambic.models import teacher_config
from alambic.training import (
    TrainSettings,
    classification_metrics,
    collate,
    confusion_matrix,
    evaluate,
    fit,
    global_batches,
    iterate,
    seed_everything,
    shard,
)


def token_dataset(n: int = 64, seed: int = 0) -> Dataset:
    """Label 1 iff token 7 occurs: a task a 1-layer BERT learns in a few steps."""
    rng = np.random.default_rng(seed)
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "label": [], "length": []}
    for i in range(n):
        length = int(rng.integers(4, 12))
        ids = [2] + rng.integers(10, 30, length - 2).tolist() + [3]
        label = i % 2
        if label:
            ids[int(rng.integers(1, length - 1))] = 7
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["token_type_ids"].append([0] * length)
        rows["label"].append(label)
        rows["length"].append(length)
    features = Features({"input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8")),
                         "token_type_ids": Sequence(Value("int8")), "label": ClassLabel(names=["无", "有"]),
                         "length": Value("int32")})
    return Dataset.from_dict(rows, features=features)


def tiny_model():
    seed_everything(0)
    from transformers import BertForSequenceClassification

    config = teacher_config(2, ["无", "有"], {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}, vocab_size=40)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    return BertForSequenceClassification(config)


def test_global_batches_cover_every_row_once_and_repeat_per_seed():
    lengths = np.random.default_rng(1).integers(1, 60, 1000)
    batches = global_batches(lengths, 32, seed=3, epoch=0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    again = global_batches(lengths, 32, seed=3, epoch=0)
    assert all((a == b).all() for a, b in zip(batches, again))
    other_epoch = global_batches(lengths, 32, seed=3, epoch=1)
    assert not all((a == b).all() for a, b in zip(batches, other_epoch))


def test_bucketing_cuts_padding():
    lengths = np.random.default_rng(2).integers(5, 64, 4000)

    def padded(bucket):
        return sum(len(b) * lengths[b].max() for b in global_batches(lengths, 32, 0, 0, bucket=bucket))

    assert padded(True) < 0.6 * padded(False)


def test_shards_split_a_batch_exactly():
    batch = np.arange(10)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert np.concatenate(parts).tolist() == batch.tolist()
    assert [len(p) for p in parts] == [4, 3, 3]


def test_collate_pads_to_longest_row():
    out = collate({"input_ids": [[5, 6], [5, 6, 7]], "attention_mask": [[1, 1], [1, 1, 1]],
                   "token_type_ids": [[0, 0], [0, 0, 0]], "label": [0, 1]})
    assert out["input_ids"].tolist() == [[5, 6, 0], [5, 6, 7]]
    assert out["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert out["labels"].tolist() == [0, 1]


def test_every_rank_gets_the_same_number_of_batches():
    data = token_dataset(33)  # global batches of 8, 8, 8, 8 and 1: the last cannot feed 2 workers
    per_rank = [[rows for rows, _ in iterate(data, 8, rank=r, world_size=2)] for r in range(2)]
    assert [len(batches) for batches in per_rank] == [4, 4]
    rows = np.concatenate([r for batches in per_rank for r in batches]).tolist()
    assert len(rows) == len(set(rows)) == 32


def test_metrics_match_a_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    confusion = confusion_matrix(labels, predictions, 3)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    metrics = classification_metrics(confusion, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: a: p=1, r=2/3 -> 0.8; b: p=1/2, r=1/2 -> 0.5; c: p=1/2, r=1 -> 2/3
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["per_class"]["c"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}


def test_fit_learns_and_keeps_the_best_epoch():
    train, validation = token_dataset(256, seed=0), token_dataset(64, seed=1)
    model = tiny_model()
    before = evaluate(model, validation)["accuracy"]
    seen = []
    result = fit(model, train, validation, TrainSettings(epochs=4, learning_rate=3e-3, batch_size=16),
                 on_epoch=lambda epoch, metrics, best: seen.append((epoch, best)))
    assert [e for e, _ in seen] == [0, 1, 2, 3] and seen[0][1]
    assert result.best_metrics["accuracy"] >= 0.9 > before
    assert evaluate(model, validation)["macro_f1"] == pytest.approx(result.best_metrics["macro_f1"])
    assert len(result.history) == 4


def test_fit_stops_early_without_progress():
    train, validation = token_dataset(64), token_dataset(32, seed=1)
    model = tiny_model()
    result = fit(model, train, validation,
                 TrainSettings(epochs=10, learning_rate=1e-9, batch_size=16, early_stopping_patience=1))
    assert result.stopped_early and len(result.history) == 2


def test_gradient_accumulation_matches_a_big_batch():
    """Two accumulated steps of 8 equal one step of 16 on the same rows (no dropout, no warmup)."""
    train, validation = token_dataset(16), token_dataset(8, seed=1)
    states = []
    for batch, accumulate in [(16, 1), (8, 2)]:
        model = tiny_model()
        settings = TrainSettings(epochs=1, learning_rate=1e-2, batch_size=batch, gradient_accumulation=accumulate,
                                 warmup_ratio=0.0, bucket=False)
        fit(model, train, validation, settings)
        states.append(model.classifier.weight.detach().clone())
    # bucket=False and the same seed: the 16 rows of the big batch are exactly the two small ones
    torch.testing.assert_close(states[0], states[1], rtol=1e-4, atol=1e-5)
