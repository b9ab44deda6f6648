"""Shared test fixtures: the real data beside the project, and small config writers."""

from __future__ import annotations

from pathlib import Path

import socket

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
