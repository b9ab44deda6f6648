"""core/report/monitor_logs.py streams: a log many times larger than the memory monitoring may use is
read a line (JSON Lines) or a batch (Parquet) at a time, its windows kept as counts. tracemalloc's
peak bounds what Python allocates while the whole log is monitored."""

from __future__ import annotations

import json
import tracemalloc
from itertools import islice

import pytest

from alambic.report.monitor import monitor
from alambic.report.monitor_logs import read_logs
from tests.core.report.test_monitor import LABELS, make_bundle, predictions

ROWS = 60_000
#: what monitoring may allocate at its peak (Python's allocations), whatever the log's size
PEAK_BYTES = 2 * 2**20


def _jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("timestamp", pa.string()), ("label", pa.string()), ("confidence", pa.float64()),
                        ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        while batch := list(islice(rows, 10_000)):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def _held(log, rows: int) -> int:
    """Bytes the log's first ``rows`` rows take, read and held (what reading it whole would do)."""
    tracemalloc.start()
    try:
        held = list(islice(read_logs([log], LABELS), rows))
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(held) == rows
    return size


@pytest.mark.parametrize("suffix, write", [(".jsonl", _jsonl), (".parquet", _parquet)])
def test_a_log_larger_than_the_memory_bound_is_streamed(tmp_path, suffix, write):
    bundle = make_bundle(tmp_path / "export")
    log = tmp_path / f"big{suffix}"
    write(log, predictions(ROWS, seed=1))
    whole = _held(log, 5_000) * ROWS // 5_000
    assert whole > 8 * PEAK_BYTES, f"the log held whole ({whole / 2**20:.0f} MiB) is many times the bound"
    tracemalloc.start()
    try:
        result = monitor(bundle, [log], size=20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["rows"] == ROWS and [w["inputs"]["texts"] for w in result["windows"]] == [20_000] * 3
    assert not result["drift"]
    assert peak < PEAK_BYTES, f"peak {peak / 2**20:.1f} MiB monitoring a {log.stat().st_size / 2**20:.0f} MiB log"
