"""core/search/select.py and `alambic select`, on the small synthetic results table of results_table.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from rich.console import Console

from alambic.search.front import load_results
from alambic.search.select import SELECTED, NothingQualifies, format_selection, select, write_selected
from tests.core.search.results_table import results_frame, write_results
from tests.core.test_cli import alambic


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
