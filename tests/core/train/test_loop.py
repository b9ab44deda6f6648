from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from alambic.train.loop import (
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
from alambic.train.models import teacher_config


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

    real = lengths.sum()  # bucketed batches pad little beyond the real tokens; random ones a lot
    assert padded(True) < 1.2 * real and padded(False) > 1.6 * real


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
                 on_epoch=lambda epoch, metrics, best, state: seen.append((epoch, best)))
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


def dropout_model():
    """tiny_model with dropout on, so that resuming must also restore the random stream."""
    model = tiny_model()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    return model


def test_fit_resumed_from_a_training_state_ends_exactly_where_an_uninterrupted_fit_does():
    import copy
    import io

    train, validation = token_dataset(96), token_dataset(32, seed=1)
    settings = TrainSettings(epochs=3, learning_rate=3e-3, batch_size=16)
    states = {}

    def keep(epoch, metrics, best, state):
        buffer = io.BytesIO()  # through torch.save/load(weights_only=True), as a checkpoint goes
        torch.save(state(), buffer)
        states[epoch] = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    whole = dropout_model()
    full = fit(whole, train, validation, settings, on_epoch=keep)
    resumed_model = dropout_model()
    resumed = fit(resumed_model, train, validation, settings, resume=copy.deepcopy(states[0]))
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]  # epoch 0 from the state, 1-2 trained
    assert resumed.history == full.history[:1] + [
        {**h, "epoch_seconds": resumed.history[i + 1]["epoch_seconds"]} for i, h in enumerate(full.history[1:])]
    assert resumed.best_epoch == full.best_epoch
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_fit_resumed_after_its_last_epoch_trains_nothing_and_keeps_the_best_weights():
    train, validation = token_dataset(64), token_dataset(32, seed=1)
    states = []
    whole = tiny_model()
    fit(whole, train, validation, TrainSettings(epochs=2, learning_rate=3e-3, batch_size=16),
        on_epoch=lambda epoch, metrics, best, state: states.append(state()))
    model = tiny_model()
    calls = []
    result = fit(model, train, validation, TrainSettings(epochs=2, learning_rate=3e-3, batch_size=16),
                 resume=states[-1], progress=lambda *a: calls.append(a))
    assert calls == [] and len(result.history) == 2
    torch.testing.assert_close(model.classifier.weight, whole.classifier.weight, rtol=0, atol=0)


def test_the_optimizer_is_fused_adamw_unless_told_otherwise():
    from alambic.train.loop import make_optimizer

    params = list(tiny_model().named_parameters())
    assert make_optimizer(params, TrainSettings()).defaults["fused"] is True
    assert not make_optimizer(params, TrainSettings(), fused=False).defaults["fused"]


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


def test_cached_logits_and_per_batch_padding_give_the_seeds_loss_and_gradient():
    """alambic's default distillation step computes what the seeds' recipe (teacher run online,
    every batch padded to 128) computes, on the same batch: padding is masked and the cache holds
    the eval-mode teacher's own logits. Only dropout masks differ between the two in training."""
    import torch.nn.functional as F
    from transformers import BertForSequenceClassification

    from alambic.data.tokenize import MODEL_INPUTS
    from alambic.train.loop import predict
    from alambic.train.losses import kd_loss

    data = token_dataset(32)
    torch.manual_seed(0)
    labels = ["无", "有"]
    teacher = BertForSequenceClassification(
        teacher_config(2, labels, {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64}, vocab_size=40)).eval()
    student = BertForSequenceClassification(  # eval: no dropout
        teacher_config(2, labels, {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32}, vocab_size=40)).eval()
    rows, logits = predict(teacher, data)  # the cache, row -> logits
    cache = torch.zeros(len(data), 2)
    cache[torch.as_tensor(rows)] = torch.from_numpy(logits)
    batch_rows = np.arange(8, 24)
    batch = collate(data[batch_rows.tolist()])
    assert batch["input_ids"].shape[1] < 12  # per-batch padding: the longest row, not 128

    def step(inputs, teacher_logits):
        student.zero_grad()
        loss = kd_loss(student(**inputs).logits, teacher_logits, batch["labels"], 4.0, 0.7)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters() if p.grad is not None]

    padded = {k: F.pad(batch[k], (0, 128 - batch[k].shape[1])) for k in MODEL_INPUTS}
    with torch.no_grad():
        online = teacher(**padded).logits
    seeds_loss, seeds_grads = step(padded, online)
    alambic_loss, alambic_grads = step({k: batch[k] for k in MODEL_INPUTS}, cache[torch.as_tensor(batch_rows)])
    torch.testing.assert_close(alambic_loss, seeds_loss, rtol=1e-5, atol=1e-6)
    assert len(alambic_grads) == len(seeds_grads) > 0
    for ours, theirs in zip(alambic_grads, seeds_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
