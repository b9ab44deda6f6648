"""A small synthetic results table, shared by the front, plot and select tests (the ``run_dir``
fixture in conftest.py writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from alambic.search.front import RESULTS

#: id: val_accuracy, size_mb, latency_p50_ms, latency_p90_ms, peak_mem_mb. On the front over
#: (val_accuracy max, size min, p50 min): c01 c02 c03 c05 c06 c07; c05 beats c04 (same accuracy,
#: smaller, faster), c04 and c05 beat c08. Tier high: c03; mid: c05 (ties c04, smaller); low: c06.
#: 10,000 validation rows: one standard error is about 0.25 point, less than any gap that decides.
CANDIDATES = {
    "c01": (0.960, 390.0, 120.0, 150.0, 900.0),
    "c02": (0.950, 100.0, 60.0, 80.0, 450.0),
    "c03": (0.940, 45.0, 25.0, 95.0, 190.0),
    "c04": (0.935, 25.0, 15.0, 30.0, 140.0),
    "c05": (0.935, 12.0, 9.0, 16.0, 120.0),
    "c06": (0.920, 11.0, 8.0, 14.0, 95.0),
    "c07": (0.900, 6.0, 5.0, 9.0, 80.0),
    "c08": (0.930, 30.0, 20.0, 40.0, 160.0),
}
FRONT = {"c01", "c02", "c03", "c05", "c06", "c07"}
VAL_EXAMPLES = 10_000
FAILED = {"f01": "distillation diverged (loss nan)", "f02": "onnx export failed: unsupported op"}


def results_frame() -> pd.DataFrame:
    """One row per candidate, every column the search writes; two failed rows with null metrics."""
    rows = []
    for i, (cid, (acc, size, p50, p90, mem)) in enumerate(CANDIDATES.items()):
        rows.append({"candidate_id": cid, "trial_id": f"trial_{i:03d}", "student": "roberta-l4",
                     "settings": json.dumps({"temperature": 4.0, "alpha": 0.7}), "pruning": "heads:0.25,ffn:0.3",
                     "quantization": "dynamic-int8" if size < 50 else "none", "val_accuracy": acc,
                     "val_macro_f1": acc - 0.01, "test_accuracy": acc - 0.004, "test_macro_f1": acc - 0.014,
                     "val_examples": VAL_EXAMPLES, "test_examples": 10_000, "student_val_accuracy": acc + 0.001,
                     "student_test_accuracy": acc - 0.003, "latency_machine": "ci-runner (x86_64, 2 cores)",
                     "size_mb": size, "latency_p50_ms": p50, "latency_p90_ms": p90,
                     "peak_mem_mb": mem + 300, "model_mem_mb": mem, "params": int(size * 250_000),
                     "runtime": "onnxruntime" if size < 50 else "pytorch", "latency_threads": 1, "status": "ok",
                     "error": None, "distill_key": f"d{i}", "compress_key": f"k{i}", "stage": f"stages/k{i}",
                     "artifact": f"stages/k{i}/onnx/model.onnx", "on_front": False})
    for cid, error in FAILED.items():
        rows.append({"candidate_id": cid, "trial_id": f"trial_{cid}", "student": "tinybert-4l", "settings": "{}",
                     "pruning": "none", "quantization": "none", "val_accuracy": None, "val_macro_f1": None,
                     "test_accuracy": None, "test_macro_f1": None, "val_examples": None, "test_examples": None,
                     "student_val_accuracy": None, "student_test_accuracy": None, "latency_machine": None,
                     "size_mb": None, "latency_p50_ms": None, "latency_p90_ms": None, "peak_mem_mb": None, "model_mem_mb": None,
                     "params": None, "runtime": "pytorch", "latency_threads": 1, "status": "failed",
                     "error": error, "distill_key": "", "compress_key": "", "stage": "", "artifact": "",
                     "on_front": False})
    return pd.DataFrame(rows)


def write_results(run_dir: Path, df: pd.DataFrame | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(results_frame() if df is None else df, preserve_index=False)
    pq.write_table(table, run_dir / RESULTS)
    return run_dir
