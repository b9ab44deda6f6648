"""The row readers the data sources share: CSV, TSV, JSON Lines and Parquet files read into rows,
each bad row filed in the :class:`~alambic.data.report.DataReport` as ``file:line: reason``, and the
label mapping (``data.label_names``, ids or names) that turns rows into a ``Dataset``.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.data.report import DataReport
from alambic.errors import DataError, did_you_mean

if TYPE_CHECKING:
    from datasets import Dataset

    from alambic.config import DataConfig

FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}
_INT = re.compile(r"^\d+$")
_BOM = b"\xef\xbb\xbf"
COLUMN_KEYS = ("text_column", "label_column")  # the config keys that name the two columns
_HINT = "; is line 1 a header? set data.header: true"


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line (row number for Parquet and hub data)
    text: str
    label: Any  # as read: str or int


# --- labels ---------------------------------------------------------------------------------


def read_label_names(config: DataConfig) -> list[str] | None:
    """``data.label_names``: a file (line i = label i) or an inline list; None when not given."""
    value = config.label_names
    if value is None:
        return None
    if isinstance(value, list):
        where, names = "data.label_names", [str(v).strip() for v in value]
    else:
        where = value
        data = Path(value).read_bytes().removeprefix(_BOM)
        try:
            names = [n.strip() for n in data.decode(config.encoding).splitlines()]
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise DataError(f"{value}:{line}: cannot decode byte 0x{data[exc.start]:02x} as {config.encoding}; "
                            "is the file in another encoding (e.g. GBK)? set data.encoding") from None
        while names and not names[-1]:
            names.pop()
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{where}:{i + 1}: empty label name")
        if name in first:
            raise DataError(f"{where}:{i + 1}: label name '{name}' repeats line {first[name] + 1}")
        first[name] = i
    if not names:
        raise DataError(f"{where}: no label names")
    return names


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(_INT.match(value)))


@dataclass
class LabelSet:
    """How raw label values map to class ids: by integer id or by name."""

    kind: str  # "id" or "name"
    names: list[str]
    index: dict[Any, int]  # int id or name -> class id
    header_hint: bool  # line 1 was read as data: a bad label there may be a header

    @classmethod
    def decide(cls, config: DataConfig, fixed: list[str] | None, train: list[Row], where: str,
               header_hint: bool) -> LabelSet:
        kind = config.label_type
        if kind == "auto":
            ints = [r for r in train if _is_int(r.label)]
            others = [r for r in train if not _is_int(r.label)]
            if ints and others:
                raise DataError(
                    f"{where}: mixed label types: line {ints[0].line} has id {ints[0].label!r} but "
                    f"line {others[0].line} has name {others[0].label!r}; set data.label_type to "
                    f"id or name{_HINT if header_hint and others[0].line == 1 else ''}"
                )
            kind = "id" if ints else "name"
        if fixed is not None:  # ids index the names; names stand for themselves
            names = fixed
            index = {(i if kind == "id" else n): i for i, n in enumerate(names)}
        elif kind == "id":
            ids = sorted({int(r.label) for r in train if _is_int(r.label)})
            names, index = [str(i) for i in ids], {v: i for i, v in enumerate(ids)}
        else:
            names = sorted({str(r.label) for r in train})
            index = {n: i for i, n in enumerate(names)}
        return cls(kind, names, index, header_hint)

    def class_id(self, value: Any) -> int | None:
        key = int(value) if self.kind == "id" and _is_int(value) else str(value)
        return self.index.get(key)

    def describe(self) -> str:
        shown = [f"{i}={n}" if self.kind == "id" else n for i, n in enumerate(self.names[:10])]
        more = f", ... ({len(self.names)} in all)" if len(self.names) > 10 else ""
        return f"[{', '.join(shown)}{more}]"

    def dataset(self, rows: list[Row], where: str, report: DataReport) -> Dataset:
        from datasets import ClassLabel, Dataset, Features, Value

        texts, ids = [], []
        for row in rows:
            class_id = self.class_id(row.label)
            if class_id is None:
                hint = _HINT if row.line == 1 and self.header_hint else ""
                reason = f"label {row.label!r} not in label names {self.describe()}{hint}"
                report.bad_row(where, row.line, reason)
                continue
            texts.append(row.text)
            ids.append(class_id)
        if not texts and report.skipped_in.get(where):  # skip mode dropped every row: say why
            raise report.all_bad(where)
        features = Features({"text": Value("string"), "label": ClassLabel(names=self.names)})
        return Dataset.from_dict({"text": texts, "label": ids}, features=features)


# --- reading files --------------------------------------------------------------------------


def file_format(path: Path, config: DataConfig) -> str:
    if config.format != "auto":
        return config.format
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: cannot tell the format from the extension '{path.suffix}'; "
                        f"set data.format (csv, tsv, jsonl or parquet)") from None


def read_rows(path: Path, config: DataConfig, report: DataReport) -> list[Row]:
    """Every usable row of one file; bad ones go to ``report``. Blank lines are ignored."""
    fmt = file_format(path, config)
    before = report.skipped
    if fmt == "parquet":
        rows = _parquet_rows(path, config, report)
    else:
        lines = _decoded_lines(path, config.encoding, report)
        if fmt == "jsonl":
            rows = _jsonl_rows(path, lines, config, report)
        else:
            rows = _table_rows(path, lines, fmt, config, report)
    if not rows:
        if report.skipped > before:
            raise report.all_bad(path)
        blank = fmt != "parquet" and not path.read_bytes().removeprefix(_BOM).strip()
        raise DataError(f"{path}: {'file is empty' if blank else 'no data rows'}")
    return rows


def _decoded_lines(path: Path, encoding: str, report: DataReport) -> Iterator[tuple[int, str]]:
    """(line number, text) per physical line; undecodable or NUL-bearing lines are bad rows."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(_BOM)  # written by Excel and Notepad; never content
            if b"\0" in raw:
                column = raw.index(b"\0") + 1
                report.bad_row(path, number, f"NUL byte at byte {column} (a binary or UTF-16 file?)")
                continue
            try:
                yield number, raw.decode(encoding)
            except UnicodeDecodeError as exc:
                report.bad_row(path, number, f"cannot decode byte 0x{raw[exc.start]:02x} at byte "
                                             f"{exc.start + 1} as {encoding}; is the file in another "
                                             "encoding (e.g. GBK)? set data.encoding")


def _table_rows(path: Path, lines: Iterator[tuple[int, str]], fmt: str, config: DataConfig,
                report: DataReport) -> list[Row]:
    records = _records(path, lines, fmt, report)
    first = next(records, None)
    if first is None:
        return []
    text_i, label_i, width, header = _columns(path, first, config)
    rows = []
    for line, fields, last in records if header else itertools.chain([first], records):
        if len(fields) != width:
            quote = (f" (a quoted field opened on line {line} runs to line {last}: an unclosed '\"'?)"
                     if last > line else "")
            report.bad_row(path, line, f"expected {width} columns, found {len(fields)}{quote}")
        else:
            rows.append(_row(path, line, fields[text_i], fields[label_i].strip(), report))
    return [r for r in rows if r is not None]


def _records(path: Path, lines: Iterator[tuple[int, str]], fmt: str,
             report: DataReport) -> Iterator[tuple[int, list[str], int]]:
    """(first line, fields, last line) per non-blank CSV/TSV record; a quoted CSV field may span lines."""
    pulled: list[int] = []  # line numbers csv.reader took for the record it is reading

    def feed() -> Iterator[str]:
        for number, text in lines:
            pulled.append(number)
            yield text

    # QUOTE_NONE for TSV: headlines contain stray quotes, and TSV has no quoting convention
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(feed(), delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
            report.bad_row(path, pulled[0] if pulled else 0, f"unreadable {fmt.upper()} row: {exc}")
            fields = []
        start, last = (pulled[0], pulled[-1]) if pulled else (0, 0)
        pulled.clear()
        if any(f.strip() for f in fields):
            yield start, fields, last


def _columns(path: Path, first: tuple[int, list[str], int], config: DataConfig) -> tuple[int, int, int, bool]:
    """Indices of the text and label columns, the expected width, and whether line 1 is a header."""
    line, fields, _ = first
    names = [f.strip() for f in fields]
    specs = {"text_column": config.text_column, "label_column": config.label_column}
    header = config.header
    if header is None:  # detect: a header names at least one configured column
        header = any(isinstance(s, str) and s in names for s in specs.values())
    indices = []
    for key, spec in specs.items():
        if header:
            indices.append(names.index(named_column(spec, names, f"{path}:{line}", key)))
        elif isinstance(spec, str):
            raise DataError(f"{path}: data.{key} '{spec}' names a column, but line {line} is not a "
                            f"header ({names[:5]}); use a 0-based column index, or set data.header: true")
        elif spec >= len(fields):
            raise DataError(f"{path}:{line}: data.{key} is column {spec} but the row has "
                            f"{len(fields)} column(s): {names}")
        else:
            indices.append(spec)
    return indices[0], indices[1], len(fields), bool(header)


def named_column(spec: str | int, names: list[str], where: str, key: str) -> str:
    """The column data.<key> names (or indexes) among ``names``; an error listing them if none."""
    name = names[spec] if isinstance(spec, int) and 0 <= spec < len(names) else spec
    if name not in names:
        raise DataError(f"{where}: no column {spec!r} (data.{key}){did_you_mean(str(spec), names)}; "
                        f"columns: {', '.join(names)}")
    return str(name)


def _row(path: Any, line: int, text: Any, label: Any, report: DataReport) -> Row | None:
    """A row, once its text and label are checked; None (reported) when either is unusable."""
    if not isinstance(text, str):
        report.bad_row(path, line, f"text is {type(text).__name__}, not a string")
    elif not text.strip():
        report.bad_row(path, line, "empty text")
    elif label is None or label == "" or isinstance(label, bool) or not isinstance(label, int | str):
        report.bad_row(path, line, f"missing or invalid label {label!r}")
    else:
        return Row(line, text.strip(), label.strip() if isinstance(label, str) else label)
    return None


def _jsonl_rows(path: Path, lines: Iterator[tuple[int, str]], config: DataConfig,
                report: DataReport) -> list[Row]:
    keys = (config.text_column, config.label_column)
    if not all(isinstance(k, str) for k in keys):
        raise DataError(f"{path}: JSON Lines rows are objects: data.text_column and "
                        f"data.label_column must be key names, got {keys}")
    rows, checked = [], False
    for line, text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.bad_row(path, line, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            report.bad_row(path, line, f"expected a JSON object, got {type(obj).__name__}")
            continue
        missing = [k for k in keys if k not in obj]
        if missing and not checked:  # the first object sets the columns: name what it has
            raise DataError(f"{path}:{line}: no key '{missing[0]}'{did_you_mean(missing[0], obj)}; "
                            f"keys: {', '.join(obj)}")
        checked = True
        if missing:
            report.bad_row(path, line, f"missing key '{missing[0]}'")
            continue
        row = _row(path, line, obj[keys[0]], obj[keys[1]], report)
        if row is not None:
            rows.append(row)
    return rows


def _parquet_rows(path: Path, config: DataConfig, report: DataReport) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    texts, labels = (table.column(named_column(getattr(config, key), table.column_names, str(path), key))
                     .to_pylist() for key in COLUMN_KEYS)
    return checked_rows(path, texts, labels, report)


def checked_rows(where: Any, texts: list[Any], labels: list[Any], report: DataReport) -> list[Row]:
    """Rows numbered from 1 (Parquet, hub data), each checked by :func:`_row`."""
    rows = [_row(where, i, t, lab, report) for i, (t, lab) in enumerate(zip(texts, labels, strict=True), 1)]
    return [r for r in rows if r is not None]
