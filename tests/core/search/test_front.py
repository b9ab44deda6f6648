"""core/search/front.py and `alambic front` / `alambic select`, on a small synthetic results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from alambic.errors import AlambicError
from alambic.search.front import (
    RESULTS,
    SELECTED,
    NothingQualifies,
    format_front,
    format_selection,
    front_figure,
    front_rows,
    load_results,
    mark_front,
    plot_front,
    resolve_run,
    select,
    write_selected,
)
from alambic.search.pareto import pareto_mask
from tests.core.test_cli import alambic

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


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path / "artifacts" / "tiny")


# --- the run and its table ------------------------------------------------------------------


def test_resolve_run_from_a_directory_the_table_or_a_config(run_dir, write_config, minimal_config):
    assert Path(resolve_run(run_dir).store.base) == run_dir.resolve()
    assert Path(resolve_run(run_dir / RESULTS).store.base) == run_dir.resolve()
    assert resolve_run(run_dir).objectives == [("val_accuracy", "max"), ("size_mb", "min"),
                                               ("latency_p50_ms", "min")]
    minimal_config |= {"store": str(run_dir.parent),
                       "search": {"students": ["roberta-l4"], "objectives": [
                           {"metric": "val_macro_f1", "mode": "max"}, {"metric": "peak_mem_mb", "mode": "min"}]},
                       "select": {"policy": "tier", "tier": "low"}}
    run = resolve_run(write_config(minimal_config))
    assert Path(run.store.base) == run_dir.resolve() and run.config is not None
    assert run.objectives == [("val_macro_f1", "max"), ("peak_mem_mb", "min")]
    assert run.select.tier == "low"


def test_resolve_run_says_what_it_looked_for(tmp_path):
    with pytest.raises(AlambicError, match=r"no results\.parquet in this directory; expected a run config"):
        resolve_run(tmp_path)
    with pytest.raises(AlambicError, match="nope: no such file or directory; expected a run config"):
        resolve_run(tmp_path / "nope")


def test_load_results_reads_the_table_and_names_a_bad_file(run_dir, tmp_path):
    df = load_results(run_dir)
    assert len(df) == 10 and df["val_accuracy"].dtype == float and df["val_accuracy"].isna().sum() == 2
    assert df["test_accuracy"].dtype == float and df["val_examples"].iloc[0] == VAL_EXAMPLES
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AlambicError, match=r"empty/results\.parquet: no results table"):
        load_results(empty)
    (empty / RESULTS).write_bytes(b"not parquet at all")
    with pytest.raises(AlambicError, match=r"empty/results\.parquet: not a readable Parquet table"):
        load_results(empty)
    pq.write_table(pa.table({"val_accuracy": [0.9]}), empty / RESULTS)
    with pytest.raises(AlambicError, match=r"missing column\(s\) candidate_id, status"):
        load_results(empty)


# --- the front ------------------------------------------------------------------------------


def test_mark_front_ranks_ok_rows_only(run_dir):
    df = mark_front(load_results(run_dir))
    by_id = df.set_index("candidate_id")
    assert set(df.loc[df["on_front"], "candidate_id"]) == FRONT
    assert by_id.loc["c04", "front_rank"] == 1 and by_id.loc["c08", "front_rank"] == 2
    assert by_id.loc[list(FAILED), "front_rank"].isna().all() and not by_id.loc[list(FAILED), "on_front"].any()
    assert by_id.loc[list(FAILED), "crowding"].isna().all()
    ok = df[df["status"] == "ok"]
    expected = pareto_mask(ok[["val_accuracy", "size_mb", "latency_p50_ms"]].to_numpy(), ["max", "min", "min"])
    assert ok["on_front"].tolist() == expected.tolist()
    assert df["knee"].sum() == 1 and df.loc[df["knee"], "on_front"].all()
    assert np.isinf(by_id.loc["c01", "crowding"]) and np.isinf(by_id.loc["c07", "crowding"])
    none_ok = mark_front(results_frame().assign(status="failed"))
    assert not none_ok["on_front"].any() and not none_ok["knee"].any() and none_ok["front_rank"].isna().all()


def test_mark_front_with_other_objectives(run_dir):
    df = mark_front(load_results(run_dir), [("val_accuracy", "max"), ("latency_p90_ms", "min")])
    assert set(df.loc[df["on_front"], "candidate_id"]) == {"c01", "c02", "c05", "c06", "c07"}  # c02 beats c03
    assert df.attrs["objectives"] == [("val_accuracy", "max"), ("latency_p90_ms", "min")]
    with pytest.raises(AlambicError, match="no column nope"):
        mark_front(load_results(run_dir), [("nope", "max")])


def test_format_front_and_rows(run_dir):
    df = mark_front(load_results(run_dir))
    console = Console(width=250, record=True)
    console.print(format_front(df))
    text = console.export_text()
    assert "6 of 8 measured candidates (2 failed)" in text
    assert all(cid in text for cid in FRONT) and "c08" not in text and "f01" not in text
    rows = front_rows(df)
    assert [r["candidate_id"] for r in rows] == ["c07", "c06", "c05", "c03", "c02", "c01"]  # smallest first
    json.dumps(rows, allow_nan=False)
    assert len(front_rows(df, all_rows=True)) == 10


def test_format_front_all_rows_shows_failed_candidates_and_errors(run_dir):
    console = Console(width=300, record=True)
    console.print(format_front(mark_front(load_results(run_dir)), all_rows=True))
    text = console.export_text()
    assert "f01" in text and "distillation diverged" in text and "c08" in text


def test_plot_front_writes_a_png(run_dir, tmp_path):
    df = mark_front(load_results(run_dir))
    path = plot_front(df, tmp_path / "plots" / "front.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    with pytest.raises(AlambicError, match="nothing to plot"):
        plot_front(df[df["status"] == "failed"], tmp_path / "none.png")


def test_format_front_shows_validation_and_test_side_by_side(run_dir):
    console = Console(width=300, record=True)
    console.print(format_front(mark_front(load_results(run_dir))))
    text = console.export_text()
    assert "val acc" in text and "test acc (reported only)" in text
    caption = " ".join(text.split())
    assert "Choices (front, knee, select) are made on the validation split" in caption
    assert "ci-runner (x86_64, 2 cores)" in caption, "the caption says where latency was measured"
    c03 = next(line for line in text.splitlines() if "c03" in line)
    assert "0.9400" in c03 and "0.9360" in c03 and "±0.24" in c03  # val, test, one standard error in points


def opposite_frame() -> pd.DataFrame:
    """Validation and test rank v and t oppositely, by far more than the noise."""
    rows = [("v", 0.95, 0.90), ("t", 0.90, 0.95)]
    return pd.DataFrame([{"candidate_id": cid, "status": "ok", "val_accuracy": val, "test_accuracy": test,
                          "val_examples": 10_000, "size_mb": 10.0, "latency_p50_ms": 5.0, "latency_p90_ms": 5.0,
                          "model_mem_mb": 50.0} for cid, val, test in rows])


def test_validation_chooses_and_test_is_only_reported():
    df = mark_front(opposite_frame())
    assert df.loc[df["on_front"], "candidate_id"].tolist() == ["v"]
    assert df.loc[df["knee"], "candidate_id"].tolist() == ["v"]
    selection = select(df, {"policy": "tier", "tier": "high"})
    assert selection.candidate_id == "v" and selection.row["test_accuracy"] == 0.90
    console = Console(width=200, record=True)
    console.print(format_selection(selection))
    text = console.export_text()
    assert "val accuracy" in text and "test accuracy (reported only)" in text


def test_old_results_without_val_accuracy_ask_for_a_new_search(tmp_path):
    old = results_frame().rename(columns={"val_accuracy": "accuracy", "val_macro_f1": "macro_f1"})
    write_results(tmp_path / "old", old.drop(columns=["test_accuracy", "test_macro_f1"]))
    with pytest.raises(AlambicError, match=r"no val_accuracy column.*re-run the search"):
        load_results(tmp_path / "old")


def test_the_knee_treats_accuracies_within_the_tolerance_as_equal():
    # k1 is the knee by the last digit; k2 is 1 point less accurate (one standard error on 1,000
    # validation rows is 1.24 points) and smaller: selection would prefer it, and so does the knee
    rows = [("small", 0.600, 1.0), ("k2", 0.790, 19.0), ("k1", 0.800, 20.0), ("big", 0.810, 400.0)]
    df = pd.DataFrame([{"candidate_id": cid, "status": "ok", "val_accuracy": acc, "val_examples": 1_000,
                        "size_mb": size, "latency_p50_ms": 5.0} for cid, acc, size in rows])
    assert mark_front(df)["on_front"].all()
    assert mark_front(df).loc[lambda d: d["knee"], "candidate_id"].tolist() == ["k2"]
    assert mark_front(df, accuracy_tolerance=0).loc[lambda d: d["knee"], "candidate_id"].tolist() == ["k1"]
    assert mark_front(df).attrs["accuracy_tolerance"].points == pytest.approx(1.2406, abs=1e-4)


def test_the_plot_shows_validation_with_error_bars_and_test_as_reported(run_dir):
    from matplotlib.container import ErrorbarContainer

    ax = front_figure(mark_front(load_results(run_dir))).axes[0]
    assert "validation accuracy" in ax.get_ylabel() and "standard error" in ax.get_ylabel()
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any("test accuracy (reported only" in label for label in labels)


# --- selection ------------------------------------------------------------------------------


def test_select_tiers_and_write_selected(run_dir):
    df = load_results(run_dir)
    assert select(df, {"policy": "tier", "tier": "high"}).candidate_id == "c03"
    assert select(df, {"policy": "tier", "tier": "low"}).candidate_id == "c06"
    mid = select(df, {"policy": "tier", "tier": "mid"})
    assert mid.candidate_id == "c05" and mid.qualifying == 4 and mid.considered == 8 and mid.failed == 2
    assert any("tied with c04; the smaller" in r for r in mid.reasons)
    where = write_selected(run_dir, mid)
    assert where.endswith(f"tiny/{SELECTED}")
    saved = json.loads((run_dir / SELECTED).read_text(encoding="utf-8"))
    assert saved["candidate_id"] == "c05" and saved["policy"] == "tier"
    assert saved["constraints"]["tier"] == "mid" and saved["constraints"]["memory_mb"] == 150.0
    assert saved["constraints"]["phone_latency_factor"] == 1.0
    assert saved["row"]["artifact"] == "stages/k4/onnx/model.onnx" and saved["row"]["on_front"] is True
    assert saved["row"]["settings"] == json.dumps({"temperature": 4.0, "alpha": 0.7})
    assert saved["row"]["params"] == 3_000_000 and isinstance(saved["row"]["params"], int)
    assert [(x["metric"], x["op"], x["bound"], x["value"], x["met"]) for x in saved["limits"]] == [
        ("latency_p90_ms", "<", 200.0, 16.0, True), ("model_mem_mb", "<=", 150.0, 120.0, True)]
    assert saved["reasons"] and any("phone_latency_factor" in n for n in saved["notes"])
    assert saved["nearest"] == [] and saved["objectives"][0] == {"metric": "val_accuracy", "mode": "max"}
    assert not list(run_dir.glob(".*tmp-*")), "written through a temporary file, renamed"
    console = Console(width=200, record=True)
    console.print(format_selection(mid))
    text = console.export_text()
    assert "selected: c05" in text and "why:" in text and "tied with c04; the smaller" in text


def test_nothing_qualifies_lists_the_three_nearest(run_dir):
    selection = select(load_results(run_dir), {"policy": "constraints", "max_size_mb": 5.0})
    assert not selection.ok and selection.candidate_id is None
    assert [n.candidate_id for n in selection.nearest] == ["c07", "c06", "c05"]
    assert selection.nearest[0].misses == ("size 6.0 MB, not <= 5 MB (20.0% over)",)
    with pytest.raises(NothingQualifies, match=r"0 of 8 measured candidate\(s\) qualify \(2 failed\)") as caught:
        write_selected(run_dir, selection)
    assert "c07 (val accuracy 0.9000, 6.00 MB): size 6.0 MB, not <= 5 MB" in str(caught.value)
    assert not (run_dir / SELECTED).exists()


# --- the command line -----------------------------------------------------------------------


def test_cli_front_table_json_and_plot(run_dir, tmp_path):
    plot = tmp_path / "front.png"
    shown = alambic("front", str(run_dir), "--plot", str(plot))
    assert shown.returncode == 0, shown.stderr
    assert "Pareto front: 6 of 8" in shown.stdout and "c03" in shown.stdout and "c08" not in shown.stdout
    assert plot.stat().st_size > 5_000
    listing = json.loads(alambic("front", str(run_dir), "--json", "--all").stdout)
    assert len(listing["rows"]) == 10 and listing["objectives"][1] == {"metric": "size_mb", "mode": "min"}
    assert {r["candidate_id"] for r in listing["rows"] if r["on_front"]} == FRONT


def test_cli_select_writes_selected_json_and_exits_2_when_nothing_fits(run_dir):
    chosen = alambic("select", str(run_dir), "--tier", "mid")
    assert chosen.returncode == 0, chosen.stderr
    assert "selected: c05" in chosen.stdout and "phone_latency_factor" in chosen.stdout
    assert json.loads((run_dir / SELECTED).read_text())["candidate_id"] == "c05"
    as_json = json.loads(alambic("select", str(run_dir), "--json").stdout)  # no flag, no config: tier high
    assert as_json["candidate_id"] == "c03" and as_json["constraints"]["tier"] == "high"
    nothing = alambic("select", str(run_dir), "--max-size-mb", "5", "--min-accuracy", "0.95")
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
    assert "no candidate meets policy 'constraints'" in nothing.stderr
    assert all(cid in nothing.stderr for cid in ("c07", "c06", "c05"))
    assert json.loads((run_dir / SELECTED).read_text())["candidate_id"] == "c03", "the last choice is kept"


def test_cli_select_uses_the_config_select_section(run_dir, write_config, minimal_config):
    minimal_config |= {"store": str(run_dir.parent), "select": {"policy": "constraints", "max_size_mb": 20.0}}
    result = alambic("select", str(write_config(minimal_config)), "--phone-latency-factor", "2")
    assert result.returncode == 0, result.stderr
    saved = json.loads((run_dir / SELECTED).read_text())
    assert saved["candidate_id"] == "c05" and saved["policy"] == "constraints"
    assert saved["constraints"] == {"max_size_mb": 20.0, "max_latency_ms": None, "min_accuracy": None,
                                    "phone_latency_factor": 2.0, "accuracy_tolerance": None}


def issue_frame() -> pd.DataFrame:
    """The issue's held-out task: fp32 40.90%, 45.4 MB against int8 40.70%, 11.5 MB, on 2,000 rows."""
    df = results_frame().iloc[:2].copy()
    df["candidate_id"] = ["fp32", "int8"]
    df["val_accuracy"] = [0.4090, 0.4070]
    df["size_mb"] = [45.4, 11.5]
    df["val_macro_f1"], df["test_accuracy"], df["test_macro_f1"] = [0.40, 0.39], [0.4120, 0.4050], [0.40, 0.39]
    df["quantization"] = ["none", "dynamic-int8"]
    df["val_examples"] = 2_000
    df["latency_p90_ms"] = [40.0, 15.0]
    df["model_mem_mb"] = [120.0, 60.0]
    return df


def test_cli_select_tier_mid_treats_noise_as_a_tie_and_takes_a_tolerance(tmp_path, write_config, minimal_config):
    run_dir = write_results(tmp_path / "artifacts" / "tiny", issue_frame())
    chosen = alambic("select", str(run_dir), "--tier", "mid")
    assert chosen.returncode == 0, chosen.stderr
    assert "selected: int8" in chosen.stdout
    assert "0.20 pt apart, within the tolerance of 1.10 pt (one standard error on 2,000 validation rows)" in " ".join(
        chosen.stdout.split())
    saved = json.loads((run_dir / SELECTED).read_text())
    assert saved["candidate_id"] == "int8" and saved["accuracy_tolerance"]["points"] == pytest.approx(1.0994, abs=1e-4)
    exact = alambic("select", str(run_dir), "--tier", "mid", "--accuracy-tolerance", "0")
    assert exact.returncode == 0, exact.stderr
    assert json.loads((run_dir / SELECTED).read_text())["candidate_id"] == "fp32"
    minimal_config |= {"store": str(run_dir.parent), "select": {"policy": "tier", "tier": "mid",
                                                                  "accuracy_tolerance": 0.1}}
    configured = alambic("select", str(write_config(minimal_config)), "--json")
    assert configured.returncode == 0, configured.stderr
    assert json.loads(configured.stdout)["candidate_id"] == "fp32"


def test_cli_front_json_carries_validation_and_test(run_dir):
    listing = json.loads(alambic("front", str(run_dir), "--json").stdout)
    c03 = next(r for r in listing["rows"] if r["candidate_id"] == "c03")
    assert c03["val_accuracy"] == 0.94 and c03["test_accuracy"] == pytest.approx(0.936)
    assert c03["val_accuracy_se"] == pytest.approx(0.00237, abs=1e-5)
    assert listing["chosen_on"] == "validation" and listing["objectives"][0]["metric"] == "val_accuracy"
    assert listing["accuracy_tolerance"]["basis"] == "one standard error on 10,000 validation rows"


def test_an_old_config_objective_on_accuracy_says_to_use_val_accuracy(write_config, minimal_config, run_dir):
    minimal_config |= {"store": str(run_dir.parent), "search": {"students": ["roberta-l4"], "objectives": [
        {"metric": "accuracy", "mode": "max"}, {"metric": "test_accuracy", "mode": "max"}]}}
    result = alambic("front", str(write_config(minimal_config)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "search.objectives[0].metric: choices are made on the validation split: write val_accuracy" in message
    assert "search.objectives[1].metric: test_accuracy is reported only, never an objective" in message
