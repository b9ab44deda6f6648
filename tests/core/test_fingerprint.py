"""Fingerprints: stable_hash of values, sha256 of files and streams, the digest of a model folder."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pytest

from alambic.fingerprint import file_sha256, hash_stream, model_digest, stable_hash
from alambic.store import Store


@dataclasses.dataclass
class Cfg:
    lr: float
    path: Path


def test_stable_hash() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert stable_hash([1, 2]) != stable_hash([2, 1])
    assert len(stable_hash(None)) == 64
    assert stable_hash(Cfg(0.1, Path("x/y"))) == stable_hash({"lr": 0.1, "path": "x/y"})
    assert stable_hash({"s": {3, 1, 2}}) == stable_hash({"s": [1, 2, 3]})
    assert Store.stage_key(a=1, b=2) == Store.stage_key(b=2, a=1) == stable_hash({"a": 1, "b": 2})
    with pytest.raises(TypeError, match="object"):
        stable_hash(object())


def test_file_and_stream_hashes_read_past_one_chunk(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB chunk
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert hash_stream(io.BytesIO(data)) == (hashlib.sha256(data).hexdigest(), len(data))


def test_model_digest_follows_the_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = model_digest(tmp_path)
    assert model_digest(tmp_path) == first
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert model_digest(tmp_path) != first
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [{"path": "x", "sha256": "0" * 64, "size": 1}]}))
    assert model_digest(tmp_path) != first  # a store stage: its manifest's hashes
