"""The app's prediction logs, as ``alambic monitor`` reads them: streamed row by row (a log larger than
memory is read a line, or a Parquet batch, at a time), each row checked, then grouped into windows.

One prediction a row, in JSON Lines (``.jsonl``, ``.ndjson``), CSV (``.csv``, with a header) or Parquet
(``.parquet``); ``.jsonl.gz`` and ``.csv.gz`` are read compressed; a folder stands for its log files::

    timestamp   ISO 8601, e.g. 2024-05-01T12:00:00Z (no zone: UTC)              required
    label       the predicted label's name, one of the bundle's labels         required
    confidence  the predicted label's probability, in [0, 1]                   this one or probs
    probs       every label's probability, in the bundle's label order         (CSV: a JSON list)
    text        the input text; empty or absent: not logged                    optional

Other fields are ignored. A row that does not fit stops the reading with an AlambicError naming
``file:line`` (Parquet: ``file: row N``), the field and what was expected.

::

    rows = read_logs(paths, labels)                           # Iterator[Row]
    for window in Windows(baseline, encoder, size=1000).feed(rows): ...   # or every=parse_every("1h")
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alambic.errors import AlambicError, did_you_mean
from alambic.ship.baseline import InputCounts, PredictionCounts, TextEncoder

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
FIELDS = ("timestamp", "label", "confidence", "probs", "text")
#: probabilities a row logs may add up to 1 give or take this (rounded when logged)
PROBS_TOLERANCE = 0.02
#: texts tokenized together (the tokenizer's batch), then counted and dropped
TEXT_BATCH = 2048
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(slots=True)
class Row:
    where: str  # file:line
    time: dt.datetime  # UTC
    label: int  # index into the bundle's labels
    confidence: float
    text: str | None


# --- files ----------------------------------------------------------------------------------


def log_files(paths: Sequence[str | Path]) -> list[Path]:
    """The log files named, a folder standing for the log files in it (sorted)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and _format(p, strict=False))
            if not inside:
                raise AlambicError(f"{path}: no log files in this folder (.jsonl, .ndjson, .csv, .parquet, .gz)")
            found += inside
        elif path.is_file():
            _format(path)
            found.append(path)
        else:
            raise AlambicError(f"{path}: no such log file or folder")
    return found


def _format(path: Path, strict: bool = True) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    kind = FORMATS.get(suffixes[-1] if suffixes else "")
    if kind == "parquet" and path.suffix.lower() == ".gz":
        kind = None
    if kind is None and strict:
        raise AlambicError(f"{path}: not a log format alambic reads: expected .jsonl, .ndjson, .csv or .parquet "
                           f"(.jsonl.gz and .csv.gz compressed)")
    return kind


def read_logs(paths: Sequence[str | Path], labels: Sequence[str]) -> Iterator[Row]:
    """Every row of every log, checked, in order (files in the order given)."""
    index = {name: i for i, name in enumerate(labels)}
    for path in log_files(paths):
        reader = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[_format(path) or ""]
        for where, raw in reader(path):
            yield check_row(where, raw, index)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise AlambicError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start + 1})") from None
            if not text.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(text)
            except json.JSONDecodeError as exc:
                raise AlambicError(f"{path}:{number}: not a JSON object ({exc.msg} at column {exc.pos + 1}); "
                                   f"JSON Lines holds one prediction a line") from None


def _csv(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        _columns(f"{path}:1", reader.fieldnames or [], "the header has")
        for raw in reader:
            yield f"{path}:{reader.line_num}", {k: (None if v == "" else v) for k, v in raw.items() if k in FIELDS}


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
        raise AlambicError(f"{path}: not a Parquet file ({exc})") from None
    columns = [c for c in file.schema_arrow.names if c in FIELDS]
    _columns(f"{path}", columns, "its columns are")
    number = 0
    for batch in file.iter_batches(batch_size=1024, columns=columns):  # one batch in memory at a time
        for raw in batch.to_pylist():
            number += 1
            yield f"{path}: row {number}", raw


def _columns(where: str, names: Sequence[str], has: str) -> None:
    missing = [n for n in ("timestamp", "label") if n not in names]
    missing += [] if {"confidence", "probs"} & set(names) else ["confidence (or probs)"]
    if missing:
        raise AlambicError(f"{where}: no column {', '.join(repr(m) for m in missing)} ({has}: "
                           f"{', '.join(map(str, names)) or 'none'}); a log needs timestamp, label, and "
                           f"confidence or probs")


# --- one row --------------------------------------------------------------------------------


def check_row(where: str, raw: Any, index: dict[str, int]) -> Row:
    """The row as a :class:`Row`, or AlambicError naming where, the field and what was expected."""
    if not isinstance(raw, dict):
        raise AlambicError(f"{where}: expected an object with timestamp, label and confidence or probs, "
                           f"got {type(raw).__name__}")
    label = _label(where, raw.get("label"), index)
    probs = _probs(where, raw.get("probs"), len(index), label) if raw.get("probs") is not None else None
    if raw.get("confidence") is not None:
        confidence = _share(where, "confidence", raw["confidence"])
    elif probs is not None:
        confidence = max(probs)
    else:
        raise AlambicError(f"{where}: field 'confidence' is missing (and no 'probs'): give the predicted label's "
                           f"probability, or every label's probabilities in label order")
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise AlambicError(f"{where}: field 'text': expected the input text (a string), got {type(text).__name__}")
    return Row(where, _timestamp(where, raw.get("timestamp")), label, confidence, text or None)


def _timestamp(where: str, value: Any) -> dt.datetime:
    if value is None:
        raise AlambicError(f"{where}: field 'timestamp' is missing: expected ISO 8601, e.g. 2024-05-01T12:00:00Z")
    if isinstance(value, dt.datetime):  # Parquet's timestamp type
        time = value
    else:
        try:
            time = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise AlambicError(f"{where}: field 'timestamp': {str(value)[:60]!r} is not ISO 8601 "
                               f"(e.g. 2024-05-01T12:00:00Z, 2024-05-01 12:00:00+08:00)") from None
    return time.replace(tzinfo=dt.timezone.utc) if time.tzinfo is None else time.astimezone(dt.timezone.utc)


def _label(where: str, value: Any, index: dict[str, int]) -> int:
    if value is None:
        raise AlambicError(f"{where}: field 'label' is missing: expected the predicted label's name")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AlambicError(f"{where}: field 'label': expected the predicted label's name (a string), "
                           f"got {type(value).__name__}")
    name = str(value)
    if name not in index:
        shown = ", ".join(list(index)[:12]) + (", ..." if len(index) > 12 else "")
        raise AlambicError(f"{where}: field 'label': '{name}' is not one of the model's {len(index)} labels "
                           f"({shown}){did_you_mean(name, index)}")
    return index[name]


def _share(where: str, name: str, value: Any) -> float:
    """A probability: a number in [0, 1] (CSV gives text)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise AlambicError(f"{where}: field '{name}': expected a probability in [0, 1], got {str(value)[:40]!r}")
    return number


def _probs(where: str, value: Any, num_labels: int, label: int) -> list[float]:
    if isinstance(value, str):  # CSV: a JSON list in the cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list | tuple) or len(value) != num_labels:
        raise AlambicError(f"{where}: field 'probs': expected a list of {num_labels} probabilities in the "
                           f"bundle's label order, got {str(value)[:60]!r}")
    probs = [_share(where, "probs", p) for p in value]
    if abs(sum(probs) - 1.0) > PROBS_TOLERANCE:
        raise AlambicError(f"{where}: field 'probs': they add up to {sum(probs):.4f}, expected 1 "
                           f"(± {PROBS_TOLERANCE}): softmax probabilities, not logits")
    if probs[label] < max(probs) - 1e-6:
        raise AlambicError(f"{where}: field 'probs': the row's label has {probs[label]:.4f}, another label "
                           f"{max(probs):.4f}: are probs in the bundle's label order (baseline.json 'labels')?")
    return probs


# --- windows --------------------------------------------------------------------------------


def parse_every(text: str) -> dt.timedelta:
    """``30m``, ``1h``, ``1d``, ``7d``, ``2w``: the period of a time window."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) == 0:
        raise AlambicError(f"--every {text}: expected a positive whole number and a unit s, m, h, d or w "
                           f"(e.g. 30m, 1h, 1d)")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class Window:
    """One window's counts; ``start``/``end``: its period (--every), else its first and last row's time."""

    index: int
    predictions: PredictionCounts
    inputs: InputCounts
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    first: str = ""  # file:line of its first row
    pending: list[str] = field(default_factory=list)  # texts not tokenized yet

    def add(self, row: Row, period: bool) -> None:
        self.predictions.add(row.label, row.confidence)
        self.first = self.first or row.where
        if not period:
            self.start = row.time if self.start is None else min(self.start, row.time)
            self.end = row.time if self.end is None else max(self.end, row.time)
        if row.text is not None:
            self.pending.append(row.text)


class Windows:
    """Rows into windows: every ``size`` rows in log order, or by timestamp into periods of ``every``
    (aligned on 1970-01-01 UTC; the rows need not be in time order). Counts only: memory stays flat."""

    def __init__(self, num_labels: int, max_length: int, encoder: TextEncoder | None, *,
                 size: int | None = None, every: dt.timedelta | None = None):
        if (size is None) == (every is None):
            raise AlambicError("give windows by count (--window N) or by time (--every 1h), not both")
        self.num_labels, self.max_length, self.encoder = num_labels, max_length, encoder
        self.size, self.every = size, every
        self._pending = 0

    def _new(self, index: int, start: dt.datetime | None = None) -> Window:
        window = Window(index, PredictionCounts.empty(self.num_labels), InputCounts.empty(self.max_length))
        if start is not None and self.every is not None:
            window.start, window.end = start, start + self.every
        return window

    def feed(self, rows: Iterable[Row]) -> Iterator[Window]:
        """Each window once it is complete (by count: as the rows fill it; by time: at the end)."""
        if self.size is not None:
            yield from self._by_count(rows, self.size)
        else:
            yield from self._by_time(rows)

    def _by_count(self, rows: Iterable[Row], size: int) -> Iterator[Window]:
        window = self._new(0)
        for row in rows:
            window.add(row, period=False)
            self._tokenize([window], enough=TEXT_BATCH)
            if window.predictions.rows == size:
                yield self._closed(window)
                window = self._new(window.index + 1)
        if window.predictions.rows:
            yield self._closed(window)

    def _by_time(self, rows: Iterable[Row]) -> Iterator[Window]:
        assert self.every is not None
        open_: dict[dt.datetime, Window] = {}
        for row in rows:
            start = EPOCH + ((row.time - EPOCH) // self.every) * self.every
            window = open_.get(start) or open_.setdefault(start, self._new(0, start))
            window.add(row, period=True)
            self._pending += row.text is not None
            if self._pending >= TEXT_BATCH:
                self._tokenize(list(open_.values()), enough=1)
                self._pending = 0
        for index, start in enumerate(sorted(open_)):
            open_[start].index = index
            yield self._closed(open_[start])

    def _tokenize(self, windows: list[Window], enough: int) -> None:
        for window in windows:
            if len(window.pending) >= enough:
                if self.encoder is not None:
                    window.inputs.add(self.encoder.encode(window.pending))
                window.pending = []

    def _closed(self, window: Window) -> Window:
        self._tokenize([window], enough=1)
        return window


__all__ = ["FIELDS", "FORMATS", "Row", "Window", "Windows", "check_row", "log_files", "parse_every", "read_logs"]
