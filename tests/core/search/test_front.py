"""core/search/front.py and `alambic front`, on a small synthetic results table (results_table.py)."""

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
from alambic.search.front import RESULTS, format_front, front_rows, load_results, mark_front, resolve_run
from alambic.search.pareto import pareto_mask
from alambic.search.select import format_selection, select
from tests.core.search.results_table import FAILED, FRONT, VAL_EXAMPLES, results_frame, write_results
from tests.core.test_cli import alambic

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


def coreml_frame() -> pd.DataFrame:
    """The shared table plus three Core ML candidates: no latency (latency_note), one smaller and
    less accurate than everything timed, one dominated among its kind on accuracy and size."""
    from alambic.compress.latency import UNTIMED

    df = results_frame()
    base = df.iloc[0].to_dict()
    extra = []
    for cid, acc, size in (("m01", 0.930, 4.0), ("m02", 0.920, 3.0), ("m03", 0.910, 5.0)):
        extra.append(base | {"candidate_id": cid, "val_accuracy": acc, "size_mb": size, "runtime": "coreml",
                             "quantization": "palettize", "latency_p50_ms": None, "latency_p90_ms": None,
                             "peak_mem_mb": None, "model_mem_mb": None, "latency_machine": None,
                             "latency_note": UNTIMED["coreml"]})
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True)


def test_core_ml_candidates_are_ranked_among_themselves_without_a_latency(tmp_path):
    marked = mark_front(coreml_frame()).set_index("candidate_id")
    # the timed front is unchanged: an unmeasured latency neither beats nor loses to a measured one
    timed = marked[marked["runtime"] != "coreml"]
    assert set(timed.index[timed["on_front"]]) == FRONT
    # among Core ML candidates, on accuracy and size: m03 is beaten by m01 (more accurate, smaller)
    assert bool(marked.loc["m01", "on_front"]) and bool(marked.loc["m02", "on_front"])
    assert not marked.loc["m03", "on_front"] and marked.loc["m03", "front_rank"] == 1
    assert marked.loc[["m01", "m02", "m03"], "latency_p50_ms"].isna().all()  # never a figure put in
    assert marked["knee"].sum() == 1 and not marked.loc[["m01", "m02", "m03"], "knee"].any()

    write_results(tmp_path, coreml_frame())
    shown = alambic("front", str(tmp_path), "--plot", str(tmp_path / "front.png"))
    assert shown.returncode == 0, shown.stderr
    assert "not measured" in shown.stdout and "m01" in shown.stdout and "m03" not in shown.stdout
    assert "Core ML runs only on Apple devices" in " ".join(shown.stdout.split())
    assert (tmp_path / "front.png").stat().st_size > 5_000
    rows = json.loads(alambic("front", str(tmp_path), "--json").stdout)["rows"]
    m01 = next(r for r in rows if r["candidate_id"] == "m01")
    assert m01["latency_p50_ms"] is None and m01["latency_note"].startswith("not measured on this machine")
