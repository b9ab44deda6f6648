"""core/search/golden.py: the golden gate. Its limits on a synthetic table (a class whose recall
falls too far blocks, named); the config keys refused without data.golden; and the user's path on a
tiny run: `alambic search` scores every candidate and the teacher on data.golden, `alambic select`
holds to the gate, `alambic export` refuses a candidate that misses it unless --force."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alambic.config import load_config
from alambic.errors import AlambicError, ConfigError
from alambic.search.golden import ClassRecallDrop, GoldenDrop, golden_limits
from alambic.search.select import NothingQualifies, select
from tests.core.search.test_tune import tiny_run
from tests.core.test_cli import alambic

TEACHER = {"体育": 0.95, "财经": 1.0}


def golden_row(cid: str, accuracy: float, recall: dict[str, float], val_accuracy: float = 0.9) -> dict:
    return {"candidate_id": cid, "status": "ok", "val_accuracy": val_accuracy, "size_mb": 10.0,
            "latency_p50_ms": 5.0, "latency_p90_ms": 6.0, "model_mem_mb": 50.0, "golden_accuracy": accuracy,
            "golden_examples": 80, "golden_recall": json.dumps(recall, ensure_ascii=False),
            "golden_teacher_accuracy": 0.975, "golden_teacher_recall": json.dumps(TEACHER, ensure_ascii=False)}


# --- the limits (no model) -------------------------------------------------------------------


def test_a_class_whose_golden_recall_falls_too_far_blocks_the_candidate_named():
    df = pd.DataFrame([golden_row("sharp", 0.9125, {"体育": 0.825, "财经": 1.0}, val_accuracy=0.95),
                       golden_row("even", 0.95, {"体育": 0.93, "财经": 0.97}, val_accuracy=0.90)])
    policy = {"policy": "constraints", "max_class_recall_drop": 5.0, "accuracy_tolerance": 0}
    chosen = select(df, policy)
    assert chosen.candidate_id == "even", "the more accurate one loses 12.5 points of 体育's recall"
    assert any("golden recall drop of any class vs the teacher 3.0 pt (worst: 财经, teacher 1.000 → 0.970)"
               in r for r in chosen.reasons), chosen.reasons
    with pytest.raises(NothingQualifies) as caught:
        select(df, policy | {"max_size_mb": 1.0}).require()
    assert "golden recall of 体育 fell 12.5 points (teacher 0.950 → 0.825), more than 5" in str(caught.value)
    assert "the select section's golden limits" in str(caught.value)


def test_every_class_over_the_bound_is_named_worst_first_and_the_accuracy_limits_say_their_figures():
    row = golden_row("c", 0.85, {"体育": 0.80, "财经": 0.90})
    limit = ClassRecallDrop("golden_recall", "<=", 5.0, "golden recall drop of any class vs the teacher", "pt")
    assert limit.value(row) == 15.0
    assert limit.describe(row) == ("golden recall of 体育 fell 15.0 points (teacher 0.950 → 0.800), more than 5; "
                                   "golden recall of 财经 fell 10.0 points (teacher 1.000 → 0.900), more than 5")
    drop = GoldenDrop("golden_accuracy", "<=", 10.0, "golden accuracy drop vs the teacher", "pt")
    assert drop.value(row) == 12.5 and drop.describe(row) == (
        "golden accuracy fell 12.5 points (teacher 0.975 → 0.850), more than 10")
    assert [limit.rule() for limit in golden_limits(0.9, 1.0, 5.0)] == [
        "golden accuracy >= 0.9", "golden accuracy drop vs the teacher <= 1 pt",
        "golden recall drop of any class vs the teacher <= 5 pt"]
    unmeasured = golden_row("u", 0.9, {}) | {"golden_accuracy": None, "golden_recall": None}
    assert limit.describe(unmeasured).endswith("not measured (no golden recall for the candidate or the teacher)")


def test_a_golden_limit_without_golden_figures_is_a_clear_error():
    df = pd.DataFrame([golden_row("c", 0.9, {"体育": 0.9})]).drop(columns=["golden_accuracy"])
    with pytest.raises(AlambicError, match=r"select.min_golden_accuracy: the results table has no golden figures "
                                           r"\(golden_accuracy\): set data.golden"):
        select(df, {"policy": "constraints", "min_golden_accuracy": 0.9})


def test_the_config_refuses_golden_limits_without_data_golden(write_config, minimal_config, tiny_tsv):
    minimal_config["select"] = {"max_class_recall_drop": 5.0, "min_golden_accuracy": 0.9}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(minimal_config))
    problems = caught.value.problems
    assert problems[0].startswith("select.min_golden_accuracy: set to 0.9 but data.golden is not")
    assert problems[1].startswith("select.max_class_recall_drop: set to 5.0 but data.golden is not")
    minimal_config["data"]["golden"] = tiny_tsv.name
    assert load_config(write_config(minimal_config)).select.max_class_recall_drop == 5.0
    checked = alambic("config", "check", str(write_config(minimal_config | {"data": minimal_config["data"] | {
        "golden": None}})))
    assert checked.returncode == 2 and "select.max_class_recall_drop: set to 5.0 but data.golden is not" in (
        checked.stderr)


# --- the user's path: search, select, export ---------------------------------------------------


LABELS = ("好评", "差评")


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A tiny run with a golden file: one student distilled at a working learning rate and at one
    too small to learn anything, searched by `alambic search`, then `alambic select`."""
    root = tmp_path_factory.mktemp("golden")
    path = tiny_run(root, name="gated", students=["roberta-l4"], pruning=[[]], quantization=["dynamic-int8"],
                    space={"learning_rate": {"grid": [0.003, 1e-7]}})
    rows = [f"{'好坏'[i % 2]}消息第{i}条\t{LABELS[i % 2]}" for i in range(160)]
    (root / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    golden = [f"{'好坏'[i % 2]}消息第{1000 + i}条\t{LABELS[i % 2]}" for i in range(40)]
    (root / "golden.tsv").write_text("\n".join(golden) + "\n", encoding="utf-8")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["data"]["golden"] = "golden.tsv"
    config["distill"]["epochs"] = 4  # two leave the working student at chance here
    config["select"] = {"policy": "constraints", "max_golden_drop": 5.0, "max_class_recall_drop": 5.0}
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    exe = Path(sys.executable).with_name("alambic")
    done = subprocess.run([str(exe), "--quiet", "search", str(path)], cwd=root, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = alambic("select", str(path), cwd=root)
    assert chosen.returncode == 0, chosen.stderr
    run_dir = root / "artifacts" / "gated"
    rows = pd.read_parquet(run_dir / "results.parquet").to_dict("records")
    good, broken = sorted(rows, key=lambda r: -r["golden_accuracy"])
    return root, path, run_dir, good, broken


def evaluations(run_dir: Path) -> int:
    """Evaluation stages in the store (each a model scored on some rows)."""
    manifests = (json.loads(p.read_text(encoding="utf-8")) for p in (run_dir / "stages").glob("*/manifest.json"))
    return sum(m.get("kind") == "evaluation" for m in manifests)


def worst_class(row: dict) -> tuple[str, float]:
    teacher, found = json.loads(row["golden_teacher_recall"]), json.loads(row["golden_recall"])
    return max(((c, 100 * (teacher[c] - found[c])) for c in teacher), key=lambda item: item[1])


def test_search_scores_every_candidate_and_the_teacher_once_on_the_golden_rows(gated):
    _, _, run_dir, good, broken = gated
    for row in (good, broken):
        assert row["status"] == "ok" and row["golden_examples"] == 40
        assert set(json.loads(row["golden_recall"])) == set(LABELS)
    assert good["golden_teacher_accuracy"] == broken["golden_teacher_accuracy"] >= 0.95, "the task is trivial"
    assert good["golden_accuracy"] >= 0.95 and worst_class(broken)[1] > 5, "lr 1e-7 learns nothing"
    assert evaluations(run_dir) == 3, "the teacher and each candidate, once"


def test_select_holds_to_the_golden_gate_and_a_miss_names_the_class(gated):
    root, path, run_dir, good, broken = gated
    chosen = alambic("select", str(path), "--json", cwd=root)
    assert chosen.returncode == 0, chosen.stderr
    saved = json.loads(chosen.stdout)
    assert saved["candidate_id"] == good["candidate_id"] and saved["qualifying"] == 1 and saved["considered"] == 2
    assert saved["constraints"]["max_class_recall_drop"] == 5.0
    assert [x["metric"] for x in saved["limits"]] == ["golden_accuracy", "golden_recall"]
    # a flag replaces the section's size limit, not its golden gate: nothing fits, and why is said
    nothing = alambic("select", str(path), "--max-size-mb", "0.001", cwd=root)
    assert nothing.returncode == 2, nothing.stderr
    name, drop = worst_class(broken)
    assert f"golden recall of {name} fell {drop:.1f} points (teacher " in nothing.stderr, nothing.stderr


def test_export_refuses_a_candidate_that_misses_the_gate_unless_forced(gated):
    root, path, run_dir, good, broken = gated
    name, drop = worst_class(broken)
    refused = alambic("export", str(path), "--candidate", broken["candidate_id"], "--format", "hf", cwd=root)
    assert refused.returncode == 1, refused.stderr
    text = " ".join(refused.stderr.split())
    assert f"export refused: candidate {broken['candidate_id']} fails the golden gate" in text
    assert f"golden recall of {name} fell {drop:.1f} points" in text and "--force" in text
    assert "Traceback" not in refused.stderr and not (run_dir / "export").exists(), "nothing written"

    forced = alambic("export", str(path), "--candidate", broken["candidate_id"], "--format", "hf", "--force",
                     "--json", cwd=root)
    assert forced.returncode == 0, forced.stderr
    golden = json.loads((run_dir / "export" / "verification.json").read_text(encoding="utf-8"))["golden"]
    assert golden["gate"]["passed"] is False and golden["gate"]["forced"] is True
    assert re.search(f"golden recall of {name} fell", golden["gate"]["misses"][-1])
    assert golden["accuracy"] == broken["golden_accuracy"] and golden["rows"] == 40
    assert golden["teacher"]["accuracy"] == broken["golden_teacher_accuracy"]
    assert golden["scored_in"] == broken["runtime"] and set(golden["recall"]) == set(LABELS)

    shipped = alambic("export", str(path), "--format", "hf", cwd=root)  # the selected candidate: it passes
    assert shipped.returncode == 0, shipped.stderr
    golden = json.loads((run_dir / "export" / "verification.json").read_text(encoding="utf-8"))["golden"]
    assert golden["gate"] == {"limits": ["golden accuracy drop vs the teacher <= 5 pt",
                                         "golden recall drop of any class vs the teacher <= 5 pt"],
                              "passed": True, "misses": [], "forced": False}
    assert "the gate: golden accuracy drop" in " ".join(shipped.stdout.split())
    assert evaluations(run_dir) == 3, "export found the search's scores"


def test_the_pipeline_passes_the_gate_through(gated, monkeypatch):
    from alambic.pipeline import _golden_verdict, export_selected
    from alambic.run import RunContext
    from alambic.search.golden import GoldenGateFailed

    root, path, run_dir, good, broken = gated
    monkeypatch.chdir(root)
    ctx = RunContext.open(path, quiet=True)
    with pytest.raises(GoldenGateFailed, match=f"candidate {broken['candidate_id']} fails the golden gate"):
        export_selected(ctx, candidate=broken["candidate_id"], formats=["hf"], skip_if_done=True)
    exported = export_selected(ctx, formats=["hf"], skip_if_done=True)  # None: export/ holds it already
    verdict = _golden_verdict(ctx, exported)
    assert verdict["gate"]["passed"] is True and verdict["accuracy"] == good["golden_accuracy"]
