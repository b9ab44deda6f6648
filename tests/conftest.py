"""Shared test fixtures: the real data beside the project, and small config writers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
THUCNEWS = SHARED_DATA / "thucnews-title"
VOCAB = SHARED_DATA / "bert-base-chinese" / "vocab.txt"


def needs_shared_data() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not THUCNEWS.is_dir() or not VOCAB.is_file(),
        reason=f"real data not found at {SHARED_DATA} (it sits beside the project in CI)",
    )


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a run config (a dict) as YAML into tmp_path and return its path."""

    def write(config: dict, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        return path

    return write


@pytest.fixture
def tiny_tsv(tmp_path: Path) -> Path:
    """A headerless TSV with two labels, like THUCNews."""
    path = tmp_path / "train.tsv"
    rows = [f"第{i}条新闻标题\t{i % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def minimal_config(tiny_tsv: Path) -> dict:
    return {
        "name": "tiny",
        "data": {"train": tiny_tsv.name, "format": "tsv", "header": False,
                 "text_column": 0, "label_column": 1},
        "tokenizer": {"name_or_path": str(VOCAB), "max_length": 32},
    }


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Offline mode on, and any attempt to resolve or connect is recorded and refused."""
    touched: list[tuple] = []

    def refuse(*args, **kwargs):
        touched.append(args)
        raise RuntimeError("the test touched the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return touched


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode in every library that reads it, and sockets that refuse to connect with the
    OSError a real outage gives (the code under test turns it into a clear message)."""
    import datasets.config
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def train_tiny_run(root: Path, rows: list[str], **config: object) -> tuple[object, Path]:
    """A run of ``rows`` (headline<TAB>label) in ``root`` with a trained 200-token vocabulary, and a
    2-layer roberta-l4 trained on it until it scores 1.0 on validation: (run context, its folder,
    which holds the tokenizer too). ``config`` adds or replaces top-level sections."""
    import torch

    from alambic.plugins.students import RobertaL4
    from alambic.run import RunContext
    from alambic.train.loop import TrainSettings, evaluate, fit

    (root / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    base = {
        "name": "tiny", "store": str(root / "artifacts"),
        "data": {"train": "train.tsv", "format": "tsv", "header": False, "text_column": 0, "label_column": 1,
                 "split": {"validation": 0.2, "test": 0.2}},
        "tokenizer": {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16},
        "guard": {"max_drop": 1.0, "retries": 2},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(base | config, allow_unicode=True), encoding="utf-8")
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    data = ctx.prepared
    torch.manual_seed(0)
    model = RobertaL4.build(num_labels=2, id2label=data.label_names, layers=2, hidden=64, heads=4, ffn=128,
                            vocab_size=len(data.tokenizer))
    fit(model, data.tokenized["train"], data.tokenized["validation"],
        TrainSettings(epochs=3, learning_rate=3e-3, batch_size=8, warmup_ratio=0.0))
    assert evaluate(model, data.tokenized["validation"])["accuracy"] == 1.0, "the rule was not learnt"
    folder = root / "trained"
    model.save_pretrained(folder)
    data.tokenizer.save_pretrained(folder)
    return ctx, folder
