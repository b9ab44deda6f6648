"""The data report: what loading found besides the data (bad rows, warnings, the data's fingerprint).

Data sources and the row readers file each bad row in it; ``data.bad_rows`` decides whether that stops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from alambic.errors import DataError

log = logging.getLogger(__name__)

MAX_BAD_ROWS_KEPT = 1000  # skip mode keeps the count of all, the details of the first ones only


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used. ``line`` is 1-based (the row number for Parquet and hub data)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class DataReport:
    """What loading found besides the data: bad rows, warnings, and the data's fingerprint."""

    on_bad_row: Literal["error", "skip"] = "error"
    bad_rows: list[BadRow] = field(default_factory=list)  # the first MAX_BAD_ROWS_KEPT
    skipped: int = 0
    skipped_in: dict[str, int] = field(default_factory=dict)  # file (or hub split) -> its skipped rows
    warnings: list[str] = field(default_factory=list)
    source_fingerprint: str | None = None  # set by sources whose data is not in config files
    fingerprint: str = ""  # data_fingerprint(), set by load_data

    def bad_row(self, file: str | os.PathLike[str], line: int, reason: str) -> None:
        """Stop at a bad row (``error``), or count it and go on (``skip``)."""
        row = BadRow(str(file), line, reason)
        if self.on_bad_row == "error":
            raise DataError(f"{row} (set data.bad_rows: skip to drop such rows)")
        self.skipped += 1
        self.skipped_in[row.file] = self.skipped_in.get(row.file, 0) + 1
        if len(self.bad_rows) < MAX_BAD_ROWS_KEPT:
            self.bad_rows.append(row)

    def all_bad(self, file: str | os.PathLike[str]) -> DataError:
        """The error for a file (or hub split) whose every row was skipped: how many, and the first as
        error mode names it, so the user learns why without switching modes."""
        file = str(file)
        first = next((r for r in self.bad_rows if r.file == file), None)
        named = f"; the first: {first}" if first else ""  # None past MAX_BAD_ROWS_KEPT
        return DataError(f"{file}: all {self.skipped_in.get(file, 0)} row(s) are bad{named}")

    @property
    def skipped_warning(self) -> str | None:
        """The warning a load gives about skipped rows; None when none was skipped."""
        if not self.skipped:
            return None
        return f"skipped {self.skipped} bad row(s), first: {self.bad_rows[0]}"

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)
