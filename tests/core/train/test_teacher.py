from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from alambic.errors import AlambicError
from alambic.run import RunContext
from alambic.train import distributed
from alambic.train import loop as training
from alambic.train.models import teacher_config
from alambic.train.teacher import freeze_below_top, teacher_logits, train_teacher, use_eight_bit

TINY = {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}


@pytest.fixture
def tiny_run(write_config, minimal_config, tmp_path):
    """A tiny run: 40 headlines, a vocabulary trained on them, a 1-layer teacher, a local store."""

    def make(**teacher):
        config = {**minimal_config, "store": str(tmp_path / "artifacts"),
                  "tokenizer": {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16},
                  "teacher": {"architecture": TINY, "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, **teacher}}
        return RunContext.open(write_config(config), quiet=True)

    return make


def test_teacher_trains_saves_and_is_reused(tiny_run, monkeypatch):
    ctx = tiny_run()
    record = train_teacher(ctx, local=True)
    assert not record.reused
    files = {p.name for p in record.path.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "vocab.txt", "tokenizer.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "per_class", "confusion"}
    assert metrics["test"]["examples"] == len(ctx.prepared.tokenized["test"])
    assert record.metrics["test"]["accuracy"] == metrics["test"]["accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(record.path)
    assert model.config.id2label == {0: "0", 1: "1"}

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("trained again"))
    again = train_teacher(tiny_run(), local=True)
    assert again.reused and again.path == record.path


def test_logits_are_computed_once_per_teacher_and_data(tiny_run, monkeypatch):
    ctx = tiny_run()
    record = train_teacher(ctx, local=True)
    logits = teacher_logits(ctx, record)
    assert logits.shape == (len(ctx.prepared.tokenized["train"]), 2) and logits.dtype == np.float32
    model = AutoModelForSequenceClassification.from_pretrained(record.path)
    _, direct = training.predict(model, ctx.prepared.tokenized["train"].select([0]))
    np.testing.assert_allclose(logits[0], direct[0], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(training, "predict", lambda *a, **k: pytest.fail("teacher run again"))
    np.testing.assert_array_equal(teacher_logits(ctx, record), logits)


def test_teacher_from_a_local_checkpoint_uses_the_loading_path(tiny_run, tmp_path):
    ctx = tiny_run()
    config = teacher_config(2, {0: "0", 1: "1"}, TINY, vocab_size=len(ctx.prepared.tokenizer))
    BertForSequenceClassification(config).save_pretrained(tmp_path / "local-teacher")
    record = train_teacher(tiny_run(model=str(tmp_path / "local-teacher"), prune_vocab=False), local=True)
    assert record.metrics["params"] == sum(p.numel() for p in BertForSequenceClassification(config).parameters())


def test_hub_id_offline_fails_clearly(tiny_run, no_network):
    ctx = tiny_run(model="bert-base-chinese")
    with pytest.raises(AlambicError, match="could not download 'bert-base-chinese'.*local directory"):
        train_teacher(ctx, local=True)
    assert no_network == []


def test_vocabulary_mismatch_fails_before_training(tiny_run, tmp_path, monkeypatch):
    config = teacher_config(2, {0: "0", 1: "1"}, TINY, vocab_size=30522)  # an English vocabulary
    BertForSequenceClassification(config).save_pretrained(tmp_path / "english")
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(AlambicError, match="30522"):
        train_teacher(tiny_run(model=str(tmp_path / "english")), local=True)


def test_freeze_all_but_the_top_layers():
    model = BertForSequenceClassification(teacher_config(2, overrides={"layers": 3, "hidden": 32, "heads": 2, "ffn": 64}))
    freeze_below_top(model, 1)
    trainable = {name.split(".")[3] for name, p in model.named_parameters()
                 if p.requires_grad and name.startswith("bert.encoder.layer.")}
    assert trainable == {"2"}
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert model.classifier.weight.requires_grad and model.bert.pooler.dense.weight.requires_grad


def test_eight_bit_optimizer_falls_back_on_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="alambic.train.teacher"):
        assert use_eight_bit("adamw-8bit") is False
    assert "plain AdamW" in caplog.text
    assert use_eight_bit("adamw") is False
