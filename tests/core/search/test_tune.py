"""core/search/tune.py: the space, one trial per candidate, memoization, failed candidates, results,
an interrupted search resumed, and a search on a two-node Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alambic.compress.pruning import Pruner
from alambic.config import PruningStep, SearchConfig
from alambic.errors import AlambicError
from alambic.search.tune import max_concurrent, trial_resources

# --- the config and the cluster (no Ray) ----------------------------------------------------


@pytest.mark.parametrize(("space", "message"), [
    ({"temperature": {"uniform": [4, 2]}}, "uniform needs \\[low, high\\] with low < high"),
    ({"temperature": {"choice": []}}, "choice needs a non-empty list"),
    ({"temperature": {"choice": [1], "grid": [2]}}, "exactly one key"),
    ({"learning_rate": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
])
def test_bad_domains_are_config_errors_naming_the_key(space, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        SearchConfig.model_validate({"students": ["roberta-l4"], "space": space})


def test_concurrency_comes_from_the_cluster():
    search = SearchConfig.model_validate({"students": ["roberta-l4"]})
    assert trial_resources(search, gpus_available=False) == ({"CPU": 1, "GPU": 0.0}, True, 0.0)
    assert max_concurrent(search, {"CPU": 2}) == 2
    gpu = SearchConfig.model_validate({"students": ["roberta-l4"],
                                       "resources": {"workers_per_trial": 2, "gpus_per_worker": 1}})
    assert trial_resources(gpu, gpus_available=True) == ({"CPU": 1.0}, False, 2.0)
    assert max_concurrent(gpu, {"CPU": 64, "GPU": 8}) == 4  # gpus // gpus_per_trial
    assert max_concurrent(gpu, {"CPU": 4}) is None  # no GPU node up yet: Tune queues, the autoscaler adds
    fixed = SearchConfig.model_validate({"students": ["roberta-l4"], "resources": {"max_concurrent": 3}})
    assert max_concurrent(fixed, {"CPU": 1}) == 3


def test_a_trial_keys_its_stages_by_the_drivers_data_and_loads_the_data_only_to_build():
    from types import SimpleNamespace

    from alambic.search.tune import _TrialData

    loads = []
    data = _TrialData("driver-key", lambda: loads.append(1) or SimpleNamespace(tokenized_key="driver-key",
                                                                                 label_names=["neg", "pos"]))
    assert data.tokenized_key == "driver-key" and loads == []  # what a memoized stage needs: no data loaded
    assert data.label_names == ["neg", "pos"] and data.label_names == ["neg", "pos"] and loads == [1]  # once
    with pytest.raises(AttributeError):
        data.__deepcopy__  # noqa: B018  (copy and pickle probe these: they never load the data)
    assert loads == [1]


# --- a real search (Ray Tune, tiny models) ----------------------------------------------------


class Explode(Pruner):
    """A pruner that always raises: its candidates must fail, the others complete."""

    id = "explode"

    @classmethod
    def prune(cls, model, options, context):
        raise RuntimeError("explode: this pruner always fails")


def tiny_run(root: Path, name: str = "tiny", **search) -> Path:
    """A run whose label is the headline's first character, tiny teacher and students."""
    rows = [f"{'好坏'[i % 2]}消息第{i}条\t{i % 2}" for i in range(160)]
    (root / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = {
        "name": name, "store": "artifacts",  # relative to the working directory, as users write it
        "data": {"train": "train.tsv", "format": "tsv", "header": False, "text_column": 0, "label_column": 1,
                 "split": {"validation": 0.2, "test": 0.2}},
        "tokenizer": {"vocab_size": 200, "min_frequency": 1, "max_length": 16},
        "teacher": {"architecture": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}, "epochs": 3,
                    "batch_size": 8, "learning_rate": 0.003, "warmup_ratio": 0.0},
        "distill": {"epochs": 2, "batch_size": 8, "learning_rate": 0.003, "warmup_ratio": 0.0},
        "search": {"students": ["roberta-l4", "tinybert-4l"],
                   "student_sizes": {"roberta-l4": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64},
                                     "tinybert-4l": {"layers": 1, "hidden": 24, "heads": 2, "ffn": 48}},
                   "pruning": [[], [{"pruner": "ffn", "amount": 0.5}]], "quantization": ["dynamic-int8"],
                   "measure": {"lengths": [8], "runs": 2, "warmup": 0, "memory": False}, **search},
        "ray": {"max_failures": 1},  # a trial is retried once: a candidate's own error is not rebuilt
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search of 2 students x 3 pruning settings (one of them explodes); then the same again."""
    import ray
    from ray import cloudpickle

    from alambic.run import RunContext
    from alambic.search.tune import search

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Explode travels to the trials
    root = tmp_path_factory.mktemp("search")
    here = os.getcwd()
    os.chdir(root)  # the store is relative: Tune runs trials elsewhere, they must still find it
    ctx = RunContext.open(tiny_run(root), quiet=True)
    ctx.registry["pruners"].add(Explode)
    pruning = [*ctx.config.search.pruning, [PruningStep(pruner="explode")]]
    ctx.config = ctx.config.model_copy(update={"search": ctx.config.search.model_copy(update={"pruning": pruning})})
    seen = []
    first = search(ctx, on_row=seen.append)
    second = search(ctx)
    yield ctx, first, second, seen
    ray.shutdown()
    os.chdir(here)


def test_search_runs_every_candidate_and_memoizes(searched):
    ctx, first, _, seen = searched
    rows = {(r["student"], r["pruning"]): r for r in first.rows}
    assert len(first.rows) == 6 and set(rows) == {(s, p) for s in ("roberta-l4", "tinybert-4l")
                                                  for p in ("none", "ffn:0.5", "explode")}
    ok = [r for r in first.rows if r["status"] == "ok"]
    assert len(ok) == 4 and all(r["val_accuracy"] is not None and r["size_mb"] > 0 for r in ok)
    assert all(r["test_accuracy"] is not None and r["val_examples"] > 0 and r["test_examples"] > 0 for r in ok)
    # latency from the serial pass after the trials, on this machine
    assert all(r["runtime"] == "onnxruntime" and r["latency_p50_ms"] > 0 and r["latency_machine"] for r in ok)
    # two students, distilled once each although each has three candidates
    assert first.counts["distill"] == {"ran": 2, "reused": 4}
    assert first.counts["prune"]["ran"] == 2 and first.counts["candidates"] == {"ok": 4, "failed": 2}
    assert sorted(r["candidate_id"] for r in seen) == sorted(r["candidate_id"] for r in first.rows)
    assert any(r["on_front"] for r in ok) and not any(r["on_front"] for r in first.rows if r["status"] != "ok")
    for r in ok:  # the stage and the artifact are there, relative to the run directory
        run_dir = ctx.store.local_path("")
        assert (run_dir / r["stage"] / "record.json").is_file() and (run_dir / r["artifact"]).is_file()


def test_a_candidate_whose_plugin_raises_fails_and_the_others_complete(searched):
    _, first, _, _ = searched
    failed = [r for r in first.rows if r["status"] == "failed"]
    assert {r["pruning"] for r in failed} == {"explode"}
    assert all("explode: this pruner always fails" in r["error"] for r in failed)
    assert all(r["val_accuracy"] is None and r["distill_key"] for r in failed)  # it failed after distilling


def test_results_parquet_has_one_row_per_candidate(searched):
    import pyarrow.parquet as pq

    from alambic.search.results import COLUMNS

    ctx, first, _, _ = searched
    table = pq.read_table(ctx.store.local_path("results.parquet"))
    assert table.num_rows == 6 and set(COLUMNS) <= set(table.column_names)
    assert table.schema.field("val_accuracy").type == "double" and table.schema.field("on_front").type == "bool"
    assert table.schema.field("test_accuracy").type == "double" and "accuracy" not in table.column_names
    assert sorted(table.column("candidate_id").to_pylist()) == sorted(r["candidate_id"] for r in first.rows)


def test_a_second_search_trains_nothing(searched):
    _, first, second, _ = searched
    assert second.counts["distill"] == {"ran": 0, "reused": 6}
    assert second.counts["prune"]["ran"] == 0 and second.counts["compress"]["ran"] == 0
    by_id = {r["candidate_id"]: r for r in first.rows if r["status"] == "ok"}
    for r in second.rows:
        if r["status"] == "ok":
            assert r["val_accuracy"] == by_id[r["candidate_id"]]["val_accuracy"]
            assert r["latency_p50_ms"] == by_id[r["candidate_id"]]["latency_p50_ms"]  # the timing is reused too


# --- results follow their inputs (no Ray: the trial's own function) ---------------------------


def run_candidates(path: Path, candidates: list) -> dict[str, dict]:
    """What each candidate's trial returns, for the run config at ``path`` as it is now."""
    from alambic.run import RunContext
    from alambic.search.tune import SearchJob, run_candidate, search_key
    from alambic.train.teacher import teacher_logits, train_teacher

    ctx = RunContext.open(path, quiet=True)
    teacher = train_teacher(ctx, local=True)
    teacher_logits(ctx, teacher)
    job = SearchJob(config=ctx.config, registry=ctx.registry, teacher=teacher,
                    train_in_trial=True, tokenized_key=ctx.prepared.tokenized_key,
                    name=f"search-{search_key(ctx, teacher.key)}")
    return {c.id: run_candidate(ctx, c, job) for c in candidates}


def test_a_candidate_is_rebuilt_when_any_input_changes_and_reused_when_none_does(tmp_path, monkeypatch):
    """Before: a candidate's row was found by its point in the space alone, and a search after a
    change of data, teacher, distill settings, guard or student size reported the old rows."""
    from alambic.search.space import Candidate

    monkeypatch.chdir(tmp_path)
    path = tiny_run(tmp_path, name="inputs")
    ffn = (PruningStep(pruner="ffn", amount=0.5),)
    roberta, pruned, tiny = (Candidate("roberta-l4", {}, (), "none"), Candidate("roberta-l4", {}, ffn, "none"),
                             Candidate("tinybert-4l", {}, (), "none"))
    candidates = [roberta, pruned, tiny]
    first = run_candidates(path, candidates)
    assert all(r["status"] == "ok" for r in first.values())
    previous = [first]

    def edit(change) -> dict[str, dict]:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        change(config)
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        return rerun()

    def rerun() -> dict[str, dict]:
        rows = run_candidates(path, candidates)
        assert all(r["status"] == "ok" for r in rows.values())
        previous.append(rows)
        return rows

    def changed(rows, stage) -> set[str]:
        """Candidates whose stage has a new key, each built (by it or by a candidate sharing it)."""
        new = {cid for cid, r in rows.items() if r[f"{stage}_key"] != previous[-2][cid][f"{stage}_key"]}
        fresh = {rows[cid][f"{stage}_key"] for cid in new}
        assert fresh == {r[f"{stage}_key"] for r in rows.values() if r[f"{stage}_key"] and not r[f"{stage}_reused"]}
        return new

    again = rerun()  # nothing changed: every stage found
    assert changed(again, "distill") == changed(again, "compress") == set()
    assert all(r["distill_reused"] and r["compress_reused"] for r in again.values())
    assert {c: r["val_accuracy"] for c, r in again.items()} == {c: r["val_accuracy"] for c, r in first.items()}

    # one student's size: that student's candidates only
    rows = edit(lambda c: c["search"]["student_sizes"]["tinybert-4l"].update(hidden=16, ffn=32))
    assert changed(rows, "distill") == changed(rows, "compress") == {tiny.id}
    # the guard: every compress stage and the pruning it judges, no distillation
    rows = edit(lambda c: c.update(guard={"max_drop": 5.0}))
    assert changed(rows, "distill") == set() and changed(rows, "compress") == {roberta.id, pruned.id, tiny.id}
    assert changed(rows, "prune") == {pruned.id}
    # the base distill section, then the teacher: every student
    for change in (lambda c: c["distill"].update(learning_rate=0.002), lambda c: c["teacher"].update(epochs=2)):
        rows = edit(change)
        assert changed(rows, "distill") == changed(rows, "compress") == {roberta.id, pruned.id, tiny.id}
    # the data (the issue's own case: a train set cut down)
    lines = (tmp_path / "train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:120]) + "\n", encoding="utf-8")
    rows = rerun()
    assert changed(rows, "distill") == changed(rows, "compress") == {roberta.id, pruned.id, tiny.id}


def test_latency_is_timed_after_the_search_keyed_by_settings_and_machine(tmp_path, monkeypatch):
    """Trials score accuracy and size only; the serial pass times each artifact, reuses a timing
    made here with the same settings, and never one made on another machine."""
    import alambic.machine
    import alambic.search.timing
    from alambic.compress.records import MeasureSettings
    from alambic.run import RunContext
    from alambic.search.space import Candidate
    from alambic.search.timing import time_candidates

    monkeypatch.chdir(tmp_path)
    path = tiny_run(tmp_path, name="timed")
    [row] = run_candidates(path, [Candidate("roberta-l4", {}, (), "dynamic-int8")]).values()
    assert row["status"] == "ok" and row["latency_p50_ms"] is None and row["peak_mem_mb"] is None
    ctx = RunContext.open(path, quiet=True)
    settings = MeasureSettings(lengths=(8,), runs=2, warmup=0, memory=False)
    seen = []

    def timed(settings: MeasureSettings) -> dict:
        [done] = time_candidates(ctx, [dict(row)], settings, on_timed=lambda n, total, r: seen.append((n, total)))
        return done

    first = timed(settings)
    assert first["latency_p50_ms"] > 0 and first["latency_threads"] == 1 and seen == [(1, 1)]
    stages = lambda: {p.name for p in (tmp_path / "artifacts" / "timed" / "stages").iterdir()  # noqa: E731
                      if not p.name.startswith(".")}
    before = stages()
    assert timed(settings)["latency_p50_ms"] == first["latency_p50_ms"] and stages() == before  # reused
    timed(MeasureSettings(lengths=(8, 12), runs=2, warmup=0, memory=False))  # other settings: timed again
    assert len(stages()) == len(before) + 1
    elsewhere = alambic.machine.identity() | {"host": "another-machine"}
    monkeypatch.setattr(alambic.search.timing, "identity", lambda: elsewhere)  # where timing looks it up
    other = timed(settings)  # the same settings on another machine: timed again, not reused
    assert len(stages()) == len(before) + 2 and other["latency_machine"].endswith("another-machine")


def test_no_search_section_is_a_clear_error(tmp_path):
    from alambic.run import RunContext
    from alambic.search.tune import search

    path = tiny_run(tmp_path)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    del config["search"]
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    with pytest.raises(AlambicError, match="no search section"):
        search(RunContext.open(path, quiet=True))


# --- the driver killed, then --resume ---------------------------------------------------------


def alambic_search(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("alambic")
    return subprocess.Popen([str(exe), "--quiet", "search", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})


def test_driver_killed_mid_search_resumes_without_redoing(tmp_path):
    config = tiny_run(tmp_path, name="killed", pruning=[[], [{"pruner": "ffn", "amount": 0.5}],
                                                        [{"pruner": "ffn", "amount": 0.25}]])
    rows_dir = tmp_path / "artifacts" / "killed" / "candidates"
    driver = alambic_search(str(config), cwd=tmp_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(rows_dir.glob("*.json"))) < 2 and driver.poll() is None:
        time.sleep(0.5)
    assert driver.poll() is None, f"the search ended before it could be killed: {driver.communicate()[1][-2000:]}"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started: no clean shutdown
    driver.communicate()  # reaps it and closes the pipes
    finished = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in rows_dir.glob("*.json")}
    assert 2 <= len(finished) < 6

    resumed = alambic_search(str(config), "--resume", "--json", cwd=tmp_path)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    result = json.loads(out[out.index("{"):])
    rows = {r["candidate_id"]: r for r in result["rows"]}
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows.values())
    for name, row in finished.items():  # finished before the kill: not redone
        again = json.loads((rows_dir / name).read_text(encoding="utf-8"))
        assert again["finished_at"] == row["finished_at"]
        assert rows[row["candidate_id"]]["compress_reused"] is True

    clean = alambic_search(str(tiny_run(tmp_path, name="clean", pruning=[
        [], [{"pruner": "ffn", "amount": 0.5}], [{"pruner": "ffn", "amount": 0.25}]])), "--json", cwd=tmp_path)
    out, err = clean.communicate(timeout=900)
    assert clean.returncode == 0, err[-3000:]
    clean_rows = json.loads(out[out.index("{"):])["rows"]
    assert {r["candidate_id"] for r in clean_rows} == set(rows)  # the same candidates as a clean run


def test_nsga2_and_tpe_search_end_to_end_reporting_every_objective_and_progress_to_a_log(tmp_path):
    """Before: model_mem_mb was never reported to Tune and an unmeasured objective was dropped, so
    OptunaSearch failed; NSGA-II's population stayed 50; a search written to a file printed nothing
    until its end, and its tables were cut to 80 columns."""
    import pyarrow.parquet as pq

    objectives = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "size_mb", "mode": "min"},
                  {"metric": "latency_p50_ms", "mode": "min"}, {"metric": "model_mem_mb", "mode": "min"}]
    common = {"students": ["tinybert-4l"], "trials": 3, "objectives": objectives,
              "pruning": [[], [{"pruner": "ffn", "amount": 0.5}]], "quantization": ["none", "dynamic-int8"],
              "measure": {"lengths": [8], "runs": 2, "warmup": 0, "memory": True}}
    exe = Path(sys.executable).with_name("alambic")
    config = tiny_run(tmp_path, name="optuna", algorithm="nsga2", **common)
    done = subprocess.run([str(exe), "search", str(config)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NSGA-II: population 2" in done.stdout and "Tune optimizes params in its place" in done.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith("candidate ")]
    assert lines and all(" tinybert-4l " in line and "val_acc=0." in line and " ok " in line for line in lines)
    assert lines[0].startswith("candidate 1/3 ") and "timed 1/" in done.stdout
    assert "…" not in done.stdout  # the final table at its natural width, nothing cut
    rows = pq.read_table(tmp_path / "artifacts" / "optuna" / "results.parquet").to_pylist()
    assert rows and all(r["status"] == "ok" and r["model_mem_mb"] is not None and r["latency_p50_ms"] > 0
                        for r in rows)

    config = tiny_run(tmp_path, name="optuna", algorithm="tpe", **common)  # the same run: stages reused
    done = subprocess.run([str(exe), "search", str(config), "--json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["rows"] and all(r["status"] == "ok" and r["model_mem_mb"] is not None for r in result["rows"])
    assert result["counts"]["distill"]["ran"] == 0  # the nsga2 search's student, found


def test_a_recovered_pruning_step_runs_inside_a_search_trial(tmp_path):
    """recover_epochs in search.pruning: the trial distills the pruned student from the run's
    teacher (trained by the driver, reused by the trial) before the guard judges the step."""
    config = tiny_run(tmp_path, name="recovering", students=["roberta-l4"],
                      pruning=[[{"pruner": "ffn", "amount": 0.5, "recover_epochs": 1}]])
    search = alambic_search(str(config), "--json", cwd=tmp_path)
    out, err = search.communicate(timeout=900)
    assert search.returncode == 0, err[-3000:]
    [row] = json.loads(out[out.index("{"):])["rows"]
    assert row["status"] == "ok" and row["pruning"] == "ffn:0.5+1", row
    record = json.loads((tmp_path / "artifacts" / "recovering" / row["stage"] / "record.json").read_text())
    prune = json.loads((tmp_path / "artifacts" / "recovering" / "stages" / record["prune_key"] / "prune.json")
                       .read_text())
    assert prune["pruning"][0]["recovery"]["epochs"] == 1 and prune["steps"][0]["step"] == "ffn:0.5+1"
