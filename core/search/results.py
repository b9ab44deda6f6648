"""The results table of a search, ``<run dir>/results.parquet`` (:data:`alambic.search.front.RESULTS`, which
reads it back): the columns written (a superset of ``front.RESULT_COLUMNS``), the rows written
atomically with the front marked on them, and what the search built or reused.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from alambic.search import front

#: the columns of results.parquet, in order (``distill.<setting>`` columns follow ``settings``)
#: val_*: the shipped artifact on validation, in its runtime: every choice is made on these.
#: test_*: the same artifact on test, measured once and only reported. student_*: the distilled
#: student before the chain. Latency and memory: the serial pass after the search (alambic.search.timing);
#: latency_note: why they are empty for a candidate whose runtime cannot run here (Core ML).
#: golden_*: with data.golden, the artifact on those rows in its runtime (a Core ML candidate: its stage's
#: PyTorch model, alambic.search.golden.NOTES), golden_recall per class (JSON); golden_teacher_*: the
#: teacher's, the same in every row. Empty without data.golden. The golden gate of select reads them.
#: executorch_*: with search.measure.runtimes [executorch], the model as a .pte on XNNPACK (alambic.search.timing).
COLUMNS = ("candidate_id", "trial_id", "node_id", "student", "settings", "pruning", "quantization",
           "val_accuracy", "val_macro_f1", "val_examples", "test_accuracy", "test_macro_f1", "test_examples",
           "student_val_accuracy", "student_test_accuracy", "golden_accuracy", "golden_examples", "golden_recall",
           "golden_teacher_accuracy", "golden_teacher_recall", "size_mb", "latency_p50_ms", "latency_p90_ms",
           "peak_mem_mb", "model_mem_mb", "params", "runtime", "latency_threads", "latency_machine", "latency_note",
           "executorch_p50_ms", "executorch_p90_ms", "executorch_size_mb", "status", "error", "distill_key",
           "prune_key", "compress_key", "stage", "artifact", "distill_reused", "prune_reused", "compress_reused",
           "seconds", "on_front")


def mark_front(rows: list[dict[str, Any]], objectives: Sequence[Any]) -> list[dict[str, Any]]:
    """``on_front`` for the non-dominated ok rows over the objectives: the front that
    :func:`alambic.search.front.mark_front` marks on the table, set on each row."""
    import pandas as pd

    metrics = [metric for metric, _ in front.objective_pairs(objectives)]
    table = pd.DataFrame({"status": [r["status"] for r in rows], "latency_note": [r.get("latency_note") for r in rows],
                          **{m: [r.get(m) for r in rows] for m in metrics}})
    for r, on in zip(rows, front.mark_front(table, objectives)["on_front"], strict=True):
        r["on_front"] = bool(on)
    return rows


def memo_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """How many distillations, prunings and quantize+measure stages ran, and how many were reused."""
    counts = {}
    for stage, key in (("distill", "distill_key"), ("prune", "prune_key"), ("compress", "compress_key")):
        done = [r for r in rows if r.get(key)]  # a candidate without pruning has no prune stage
        ran = sum(1 for r in done if not r.get(f"{stage}_reused"))
        counts[stage] = {"ran": ran, "reused": len(done) - ran}
    counts["candidates"] = {"ok": sum(r["status"] == "ok" for r in rows),
                            "failed": sum(r["status"] != "ok" for r in rows)}
    return counts


def write_results(store: Any, rows: Sequence[Mapping[str, Any]]) -> str:
    """results.parquet in the run directory, atomically; columns as :data:`COLUMNS`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = sorted({k for r in rows for k in r if k.startswith("distill.")})
    names = [*COLUMNS[:4], *extra, *COLUMNS[4:]]
    types = _arrow_types()
    columns = {name: [_cell(r.get(name)) for r in rows] for name in names}
    table = pa.table({name: pa.array(values, type=types.get(name)) for name, values in columns.items()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.write_bytes(front.RESULTS, buffer.getvalue())
    return store._where(front.RESULTS)  # noqa: SLF001 - the URI users see


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value  # names as written


def _arrow_types() -> dict[str, Any]:
    import pyarrow as pa

    floats = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "student_val_accuracy",
              "student_test_accuracy", "golden_accuracy", "golden_teacher_accuracy", "size_mb", "latency_p50_ms",
              "latency_p90_ms", "peak_mem_mb", "model_mem_mb", "seconds", "executorch_p50_ms", "executorch_p90_ms",
              "executorch_size_mb")
    bools = ("distill_reused", "prune_reused", "compress_reused", "on_front")
    ints = ("params", "latency_threads", "val_examples", "test_examples", "golden_examples")
    return ({k: pa.float64() for k in floats} | {k: pa.bool_() for k in bools} | {k: pa.int64() for k in ints}
            | {k: pa.string() for k in COLUMNS if k not in floats + bools + ints})


__all__ = ["COLUMNS", "mark_front", "memo_counts", "write_results"]
