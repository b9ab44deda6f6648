"""Fingerprints: sha256 of canonical JSON (config hashes, stage keys), of a file or stream read in
chunks, and of a model folder's content."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from pathlib import Path, PurePath
from typing import Any

_CHUNK = 1 << 20


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):  # pydantic v2 model
        return obj.model_dump(mode="json")
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"stable_hash cannot encode {type(obj).__name__}: {obj!r}")


def stable_hash(obj: Any) -> str:
    """sha256 hex of the canonical JSON of `obj`: equal for equal values, whatever the dict order."""
    text = json.dumps(obj, default=_to_jsonable, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def hash_stream(stream: Any) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a binary stream, read to its end in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hash_stream(f)[0]


def model_digest(model_dir: str | Path) -> str:
    """A hash of a model folder's content: its store manifest's file hashes, else every file's."""
    folder = Path(model_dir)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            return stable_hash(sorted((f["path"], f["sha256"]) for f in files))
        except (ValueError, KeyError, TypeError):
            pass  # not a store manifest: hash the files
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return stable_hash([(p.relative_to(folder).as_posix(), file_sha256(p)) for p in files])
