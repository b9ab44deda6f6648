"""Feedback files: the texts a user corrected and the label they chose, as ``alambic personalize`` reads them.

::

    rows = read_feedback("feedback.tsv", labels)     # Feedback(texts, targets, path)
    golden = read_golden(config, labels, "dev-slice.txt")   # a file in the run's data format

Formats, by extension (UTF-8):

* ``.tsv`` / ``.txt``: ``text<TAB>label`` per line, no header (a first line ``text<TAB>label`` is skipped);
* ``.csv``: a header row naming the columns ``text`` and ``label`` (others are ignored);
* ``.jsonl``: one object per line, ``{"text": "...", "label": "..."}``.

``label`` is one of the model's label names (the updatable model's class labels, e.g. 体育), as the
app passes it to ``MLUpdateTask``. Blank lines are skipped; every other problem stops the read with
the file, the line, the field and what was expected.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.data.dataset import load_golden
from alambic.data.readers import read_label_names
from alambic.errors import AlambicError, did_you_mean

if TYPE_CHECKING:
    from alambic.config import DataConfig

FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl"}


@dataclass
class Feedback:
    """Rows of (text, label index into the model's labels), in file order."""

    path: str
    texts: list[str]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def read_feedback(path: str | os.PathLike[str], labels: Sequence[str]) -> Feedback:
    """The rows of a feedback file; AlambicError naming file:line and field on a bad row."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise AlambicError(f"{path}: feedback files are {', '.join(FORMATS)} (text and label), got '{path.suffix}'")
    if not path.is_file():
        raise AlambicError(f"{path}: feedback file not found")
    index = {name: i for i, name in enumerate(labels)}
    texts, targets = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        rows = {"tsv": _tsv, "csv": _csv, "jsonl": _jsonl}[kind](handle, path)
        for line, text, label in rows:
            where = f"{path}:{line}"
            if not text.strip():
                raise AlambicError(f"{where}: field 'text' is empty")
            if label not in index:
                raise AlambicError(f"{where}: field 'label': '{label}' is not one of the model's labels "
                                   f"({', '.join(labels)}){did_you_mean(label, labels)}")
            texts.append(text)
            targets.append(index[label])
    if not texts:
        raise AlambicError(f"{path}: no feedback rows")
    return Feedback(str(path), texts, targets)


def _tsv(handle: Any, path: Path) -> Iterator[tuple[int, str, str]]:
    for line, raw in enumerate(handle, start=1):
        raw = raw.rstrip("\r\n")
        if not raw.strip():
            continue
        fields = raw.split("\t")
        if len(fields) != 2:
            raise AlambicError(f"{path}:{line}: expected 2 tab-separated fields (text, label), got {len(fields)}")
        if line == 1 and [f.strip().lower() for f in fields] == ["text", "label"]:
            continue  # a header
        yield line, fields[0], fields[1].strip()


def _csv(handle: Any, path: Path) -> Iterator[tuple[int, str, str]]:
    reader = csv.DictReader(handle)
    missing = [c for c in ("text", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise AlambicError(f"{path}:1: the header must name the columns text and label; missing "
                           f"{', '.join(missing)} (found {', '.join(reader.fieldnames or []) or 'nothing'})")
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        line = reader.line_num
        for column in ("text", "label"):
            if row.get(column) is None:
                raise AlambicError(f"{path}:{line}: field '{column}' is missing (the row has too few columns)")
        yield line, row["text"], row["label"].strip()


def _jsonl(handle: Any, path: Path) -> Iterator[tuple[int, str, str]]:
    for line, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise AlambicError(f"{path}:{line}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise AlambicError(f"{path}:{line}: expected an object {{\"text\": ..., \"label\": ...}}, "
                               f"got {type(row).__name__}")
        for column in ("text", "label"):
            if not isinstance(row.get(column), str):
                got = "nothing" if column not in row else type(row[column]).__name__
                raise AlambicError(f"{path}:{line}: field '{column}' must be a string, got {got}")
        yield line, row["text"], row["label"].strip()


def read_golden(data: DataConfig, labels: Sequence[str], path: str | os.PathLike[str] | None = None) -> Feedback:
    """A golden file read as the run's data files are (``data.golden``, or ``path`` in its format),
    its labels mapped to the model's: the run's label names must be the model's, in order."""
    named = read_label_names(data)
    if named is not None and list(named) != list(labels):
        raise AlambicError(f"data.label_names ({', '.join(named)}) differ from the model's labels "
                           f"({', '.join(labels)}): the golden file's label ids would name other classes")
    if path is not None:
        data = data.model_copy(update={"golden": str(path)})
    if data.golden is None:
        raise AlambicError("the run config has no data.golden: pass --golden FILE")
    if not Path(data.golden).is_file():
        raise AlambicError(f"golden file not found: {data.golden}")
    rows = load_golden(data, list(labels))
    names = rows.features["label"].names
    unknown = sorted({names[i] for i in rows["label"]} - set(labels))
    if unknown:
        raise AlambicError(f"{data.golden}: labels {', '.join(unknown)} are not the model's ({', '.join(labels)})")
    index = {name: i for i, name in enumerate(labels)}
    return Feedback(str(data.golden), [str(t) for t in rows["text"]], [index[names[i]] for i in rows["label"]])


__all__ = ["FORMATS", "Feedback", "read_feedback", "read_golden"]
