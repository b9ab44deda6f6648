"""The search: Ray Tune over students x distillation settings x pruning x quantization.

::

    result = search(ctx)                 # or search(ctx, resume=True) after an interruption
    result.rows                          # one dict per candidate (what results.parquet holds)
    result.counts                        # {"distill": {"ran": 2, "reused": 10}, "prune": ..., ...}

One candidate is one Tune trial; every stage of it is memoized in the store by the hash of its
inputs, so candidates that share a distilled student distill it once, and a repeated search
reuses everything::

    driver:  teacher (train or reuse), its logits once     # before any trial
             Tuner(candidate_trial, param_space, search algorithm).fit()
    trial:   distill(student, settings)                # stage: Ray Train inside the trial when
                                                       #   workers_per_trial > 1, else in-process
             prune(steps) -> quantize + score          # stages (alambic.compress.chain): validation and
                                                       #   test accuracy, size; no timing here
             golden                                    # with data.golden: the artifact on it (a stage;
                                                       #   the teacher's scored once by the driver)
             candidates/<id>.json                      # the row, written atomically
    driver:  time each candidate, one at a time        # alambic.search.timing: latency, memory, this node
             results.parquet (one row per candidate, on_front marked), alambic_after_search

Every stage is keyed by everything that produced it (data, teacher, settings, guard, ...), and a
trial always goes through them: change an input and the candidates it touches are built again,
the others found in the store. Choices are made on validation: Tune's objectives, the front and
selection read ``val_*``; ``test_*`` is measured once per candidate and only reported.

A trial that raises is recorded ``status=failed`` with its error, and the search goes on. An
interrupted search resumes with ``resume=True`` (``Tuner.restore``): finished trials are kept, and
a trial that had finished its row before the interruption finds it and does nothing.

Algorithms: ``grid`` (every combination; ``choice`` domains become grid axes), ``random``
(``trials`` samples), ``nsga2`` / ``tpe`` (Optuna through Tune's ``OptunaSearch``, multi-objective
over ``search.objectives``; latency and memory objectives are stood in for by :data:`PROXIES`
during the search, and NSGA-II's population is derived from ``trials``: alambic.search.algorithms).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alambic.compress.chain import compress, relative_path
from alambic.compress.records import SCORES_ONLY, MeasureSettings
from alambic.config import RunConfig
from alambic.errors import AlambicError, ConfigError
from alambic.fingerprint import stable_hash
from alambic.manager import get_plugin_manager
from alambic.run import RunContext
from alambic.search.algorithms import search_algorithm, tune_metrics
from alambic.search.golden import golden_figures, golden_set, stage_scores, teacher_scores
from alambic.search.results import COLUMNS, mark_front, memo_counts, write_results
from alambic.search.space import Candidate, Space, check_space
from alambic.search.timing import time_candidates
from alambic.store import Store
from alambic.train.distributed import cluster_has_gpus, ensure_ray

log = logging.getLogger(__name__)

CANDIDATES_DIR = "candidates"
TUNE_DIR = "tune"


class CandidateFailed(AlambicError):
    """A candidate's own error (recorded in its row); raised so that Tune marks the trial failed."""


# --- one trial ------------------------------------------------------------------------------


@dataclass
class SearchJob:
    """Everything a trial needs, shipped to the Ray worker that runs it."""

    config: RunConfig
    registry: Any  # the driver's plugin registry: every trial uses the same plugin classes
    teacher: Any  # TeacherRecord
    train_in_trial: bool  # True: distill in the trial's own process; False: a TorchTrainer inside
    since: float = 0.0  # when this search started: a candidate that failed after it is not retried
    tokenized_key: str = ""  # the driver's ctx.prepared.tokenized_key: what the stage keys need
    name: str = ""  # the search (search_key): a candidate's row counts only for the search that wrote it
    resumed: bool = False  # a resumed search keeps the rows its interrupted run finished
    golden: Any = None  # GoldenSet: data.golden's rows, read once by the driver; None without data.golden
    golden_teacher: dict[str, Any] = field(default_factory=dict)  # the teacher's golden columns, every row
    space: Space = field(init=False)

    def __post_init__(self) -> None:
        self.space = Space(self.config.search)

    def context(self) -> Any:
        root = Store.open(self.config.store)
        ctx = RunContext(config=self.config, registry=self.registry, pm=get_plugin_manager(), root=root,
                         store=root.run(self.config.name), quiet=True)
        if self.tokenized_key:
            ctx.__dict__["prepared"] = _TrialData(self.tokenized_key, lambda: RunContext.prepared.func(ctx))
        return ctx


class _TrialData:
    """A trial's ``ctx.prepared``: the driver's tokenized key at once, the data loaded on first use.

    A memoized stage needs only the key to find itself; loading, splitting and tokenizing the data
    again in every trial (a cache hit, still 4-5 s on 2 cores for the quickstart) was most of what
    a trial of an all-memoized search cost. A stage that builds reads the data, and loads it then."""

    def __init__(self, tokenized_key: str, load: Callable[[], Any]) -> None:
        self.tokenized_key, self._load, self._data = tokenized_key, load, None

    def __getattr__(self, name: str) -> Any:  # only for what __init__ did not set: raw, tokenized, ...
        if name.startswith("_"):  # copy, pickle and our own fields: never load the data for those
            raise AttributeError(name)
        if self._data is None:
            self._data = self._load()
            if self._data.tokenized_key != self.tokenized_key:
                log.warning("this node's data (tokenized %s) differs from the driver's (%s)",
                            self._data.tokenized_key, self.tokenized_key)
        return getattr(self._data, name)


def candidate_trial(params: dict[str, Any], job: SearchJob) -> None:
    """The Tune trainable: build one candidate (or find its stages built), report its objectives."""
    import ray
    from ray import tune

    ctx = job.context()
    candidate = job.space.candidate(params)
    row = run_candidate(ctx, candidate, job, trial_id=tune.get_context().get_trial_id() or "",
                        node_id=ray.get_runtime_context().get_node_id())
    if row["status"] != "ok":
        raise CandidateFailed(f"candidate {candidate.id}: {row['error']}")
    tune.report(tune_metrics(row, job.config.search.objectives) | {"candidate_id": candidate.id})


def run_candidate(ctx: Any, candidate: Candidate, job: SearchJob, trial_id: str = "",
                  node_id: str = "") -> dict[str, Any]:
    """distill -> prune -> quantize -> score, each a memoized stage; the row, also in the store.

    Every call goes through the stages: each is keyed by everything that produced it, so a
    candidate whose inputs changed is built again and one whose inputs did not is found (a
    memoized candidate costs a fraction of a second). Errors of the candidate's own stages (a
    plugin that raises, a setting that cannot work) make a failed row.
    """
    from alambic.train.distill import distill

    rel = f"{CANDIDATES_DIR}/{candidate.id}.json"
    if ctx.store.exists(rel):
        row = ctx.store.read_json(rel)
        if row.get("search") == job.name and row.get("status") == "ok" and job.resumed:
            return row | {"trial_id": trial_id}  # finished by the interrupted run of this very search
        if row.get("search") == job.name and row.get("status") != "ok" and row.get("finished_at", 0) >= job.since:
            return row  # Tune retrying a candidate's own error: it would fail again
    start = time.perf_counter()
    row = _base_row(candidate, trial_id) | {"node_id": node_id, "search": job.name}
    try:
        student = distill(ctx, candidate.student, candidate.settings, local=job.train_in_trial,
                          teacher=job.teacher)
        row |= {"distill_key": student.key, "distill_reused": student.reused}
        record = compress(ctx, student.path, list(candidate.pruning), candidate.quantization, measure=SCORES_ONLY)
        golden = _golden_columns(ctx, record, job)
    except Exception as exc:  # noqa: BLE001 - a candidate's failure is data, the search goes on
        log.warning("candidate %s failed: %s", candidate.id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        row |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    else:
        row |= scores(record) | golden | {"status": "ok", "runtime": record.runtime, "prune_key": record.prune_key,
                                 "compress_key": record.key, "prune_reused": record.prune_reused,
                                 "compress_reused": record.reused}
        run_dir = ctx.store.local_path("")
        row |= {"stage": str(relative_path(record.path, run_dir)),
                "artifact": str(relative_path(record.artifact, run_dir)),
                "outcomes": {s["step"]: s["outcome"] for s in record.record["steps"]}}
    row |= {"seconds": round(time.perf_counter() - start, 1), "finished_at": time.time()}
    ctx.store.write_json(rel, row)
    return row


def scores(record: Any) -> dict[str, Any]:
    """A compress record's figures as row columns: the shipped artifact on validation (what choices
    use) and on test (reported), the student before the chain, size and parameters."""
    validation = record.record["validation"]
    after, before = record.after.headline(), record.before.headline()
    return {"val_accuracy": validation["accuracy"], "val_macro_f1": validation["macro_f1"],
            "val_examples": validation["examples"], "test_accuracy": after["accuracy"],
            "test_macro_f1": after["macro_f1"], "test_examples": record.after.examples,
            "student_val_accuracy": record.record["validation_accuracy"]["before"],
            "student_test_accuracy": before["accuracy"], "size_mb": after["size_mb"], "params": after["params"]}


def _golden_columns(ctx: Any, record: Any, job: SearchJob) -> dict[str, Any]:
    """The shipped artifact on data.golden (a stage), beside the teacher's figures; {} without it."""
    if job.golden is None:
        return {}
    return golden_figures(stage_scores(ctx, record.path, record.record, job.golden)) | job.golden_teacher


def _base_row(candidate: Candidate, trial_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in COLUMNS}
    row |= {"candidate_id": candidate.id, "trial_id": trial_id, "student": candidate.student,
            "settings": json.dumps(candidate.settings, sort_keys=True, default=str),
            "pruning": candidate.pruning_label, "quantization": candidate.quantization,
            "distill_reused": False, "prune_reused": False, "compress_reused": False, "on_front": False}
    row |= {f"distill.{k}": v for k, v in candidate.settings.items()}
    return row


# --- the driver -----------------------------------------------------------------------------


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    path: str  # results.parquet in the store
    seconds: float
    resumed: bool


def search_key(ctx: Any, teacher_key: str) -> str:
    """Names the Tune experiment: the same search of the same run resumes the same experiment.
    data.golden counts (its rows give every row golden figures); a run without one keys as before."""
    search = ctx.config.search.model_dump(mode="json")
    if not search["measure"]["runtimes"]:  # a search without extra runtimes keys as before they existed
        del search["measure"]["runtimes"]
    inputs = {"search": search, "distill": ctx.config.distill, "guard": ctx.config.guard,
              "teacher": teacher_key, "data": ctx.prepared.tokenized_key}
    golden = golden_set(ctx)
    return stable_hash(inputs | ({"golden": golden.key} if golden is not None else {}))[:12]


def trial_resources(search: Any, gpus_available: bool) -> tuple[dict[str, float], bool, float]:
    """(resources of one trial, whether it trains in its own process, its GPUs).

    One worker per trial: the trial itself trains, holding the worker's CPUs and GPUs. More: the
    trial holds one CPU and starts a TorchTrainer whose workers ask for their own."""
    res = search.resources
    gpus = (1.0 if gpus_available else 0.0) if res.gpus_per_worker == "auto" else float(res.gpus_per_worker)
    if res.workers_per_trial == 1:
        return {"CPU": res.cpus_per_worker, "GPU": gpus}, True, gpus
    return {"CPU": 1.0}, False, gpus * res.workers_per_trial


def max_concurrent(search: Any, cluster: Mapping[str, float]) -> int | None:
    """Trials at once: the config's, else as many as the cluster's CPUs and GPUs hold now; None
    when not one trial fits yet (an autoscaling cluster with no GPU node up): Tune then queues the
    trials and the autoscaler adds nodes for them."""
    if search.resources.max_concurrent:
        return search.resources.max_concurrent
    res = search.resources
    resources, in_trial, gpus = trial_resources(search, cluster.get("GPU", 0) > 0)
    cpus = resources["CPU"] + (0 if in_trial else res.workers_per_trial * res.cpus_per_worker)
    fits = [math.floor(cluster.get("CPU", 1) / cpus)]
    if gpus:
        fits.append(math.floor(cluster.get("GPU", 0) / gpus))  # max_concurrent = gpus // gpus_per_trial
    return min(fits) if min(fits) >= 1 else None


def search(ctx: Any, *, resume: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None,
           on_start: Callable[[dict[str, Any]], None] | None = None,
           on_timed: Callable[[int, int, dict[str, Any]], None] | None = None) -> SearchResult:
    """Run (or resume) the config's search; time its candidates; write results.parquet; return
    the rows and counts.

    :param on_row: called in the driver with each candidate's row as its trial ends.
    :param on_start: called once with the plan (candidates, concurrency, where Tune keeps state).
    :param on_timed: called with (n, total, row) as each candidate is timed after the trials.
    """
    if ctx.config.search is None:
        raise ConfigError("config", ["search: this run config has no search section (students, pruning, "
                                     "quantization); see examples/thucnews.yaml"])
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV/JSON files per trial
    # ...whose absence Tune's result grid then warns about, trial by trial; the rows come from the store
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    from ray import tune

    from alambic.train.teacher import teacher_logits, train_teacher

    start = time.perf_counter()
    check_space(ctx)
    teacher = train_teacher(ctx)
    teacher_logits(ctx, teacher)  # once, here: no trial waits for another to compute them
    golden = golden_set(ctx)  # read once, here; the teacher scored on it once (a stage)
    golden_teacher = {} if golden is None else golden_figures(teacher_scores(ctx, teacher.key, teacher.path, golden),
                                                               "golden_teacher")
    ensure_ray(ctx.config.ray.address, quiet=ctx.quiet)
    import ray

    cluster = ray.cluster_resources()
    resources, in_trial, _ = trial_resources(ctx.config.search, cluster_has_gpus())
    limit = max_concurrent(ctx.config.search, cluster)
    if limit is None:
        log.warning("the cluster has no room for a trial yet (%s): trials wait for the autoscaler to add nodes",
                    dict(cluster))
    algo, samples, notes = search_algorithm(ctx.config.search, limit)
    for note in notes:
        log.info("%s", note)
    space = Space(ctx.config.search)
    param_space = space.param_space(ctx.config.search.algorithm)
    measure = MeasureSettings(**ctx.config.search.measure.model_dump() | {
        "lengths": tuple(ctx.config.search.measure.lengths)})
    config = _trial_config(ctx.config, in_trial)
    name = f"search-{search_key(ctx, teacher.key)}"
    storage = _tune_storage(ctx)
    experiment = f"{storage.rstrip('/')}/{name}"
    resumed = resume and tune.Tuner.can_restore(experiment)
    job = SearchJob(config=config, registry=ctx.registry, teacher=teacher,
                    train_in_trial=in_trial, since=time.time(), tokenized_key=ctx.prepared.tokenized_key, name=name,
                    resumed=resumed, golden=golden, golden_teacher=golden_teacher)
    trainable = tune.with_resources(tune.with_parameters(candidate_trial, job=job), resources)
    plan = {"name": name, "storage": storage, "algorithm": ctx.config.search.algorithm,
            "candidates": space.size() if algo is None and samples == 1 else samples,
            "max_concurrent": limit, "trial_resources": resources, "resume": resume, "notes": notes}
    if on_start:
        on_start(plan)
    if resume and not resumed:
        log.warning("nothing to resume at %s: starting the search", experiment)
    if resumed:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=False)
    else:
        _forget_experiment(experiment)
        # reuse_actors: a trial runs in the actor (process) of a finished one, not in a new process
        # that starts Ray's worker and imports torch again (2-3 s a trial on 2 cores, most of what
        # a memoized candidate cost). A failed trial's actor is not reused (Tune stops it).
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=algo, num_samples=samples, max_concurrent_trials=limit,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=ctx.config.ray.max_failures)),
        )
    since = time.time()
    with _watching_rows(ctx, since, on_row):
        grid = tuner.fit()
    rows = _collect(ctx, space, grid, name, since)
    rows = time_candidates(ctx, rows, measure, on_timed)  # alone now: no trial runs beside it
    rows = mark_front(rows, ctx.config.search.objectives)
    path = write_results(ctx.store, rows)
    result = SearchResult(rows=rows, counts=memo_counts(rows), path=path, seconds=time.perf_counter() - start,
                          resumed=resumed)
    ctx.pm.hook.alambic_after_search(context=ctx, results=result)
    return result


def _trial_config(config: RunConfig, in_trial: bool) -> RunConfig:
    """The run config a trial sees: its Ray Train workers are the search's workers_per_trial, and
    a local store is an absolute path (Tune runs each trial in a working directory of its own)."""
    res = config.search.resources
    ray = config.ray.model_copy(update={"workers": res.workers_per_trial, "cpus_per_worker": res.cpus_per_worker,
                                        "gpus_per_worker": res.gpus_per_worker})
    store = config.store if "://" in config.store else str(Path(config.store).expanduser().resolve())
    return config.model_copy(update={"ray": ray, "store": store})


def _tune_storage(ctx: Any) -> str:
    """Tune's experiment state lives in the run directory (an absolute path, or the store's URI)."""
    if ctx.store.is_local:
        return str(ctx.store.local_path(TUNE_DIR))
    return f"{ctx.store.uri}/{TUNE_DIR}"


def _forget_experiment(experiment: str) -> None:
    """A new (not resumed) search starts a clean experiment; its candidates' stages stay reusable."""
    if "://" not in experiment and Path(experiment).exists():
        shutil.rmtree(experiment)


@contextlib.contextmanager
def _watching_rows(ctx: Any, since: float, on_row: Callable[[dict[str, Any]], None] | None) -> Iterator[None]:
    """While the block runs, hand each candidate row finished after ``since`` to ``on_row``.

    The rows are read from the store, not from Tune callbacks: Tune pickles its callbacks into the
    experiment state, and a resumed search would lose them."""
    if on_row is None:
        yield
        return
    seen: set[str] = set()
    stop = threading.Event()

    def poll() -> None:
        for name in ctx.store.list(CANDIDATES_DIR):
            if name in seen or not name.endswith(".json"):
                continue
            try:
                row = ctx.store.read_json(f"{CANDIDATES_DIR}/{name}")
            except (OSError, ValueError):
                continue  # being replaced: next round
            seen.add(name)
            if row.get("finished_at", 0) >= since:
                on_row(row)

    def loop() -> None:
        while not stop.wait(1.0):
            poll()

    thread = threading.Thread(target=loop, name="alambic-rows", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()


def _row_of(ctx: Any, candidate: Candidate, trial_id: str, error: str | None, name: str) -> dict[str, Any]:
    """The candidate's row this search wrote, else a failed row (its trial died before writing one;
    a row another search wrote for the same point of the space holds other inputs' results)."""
    rel = f"{CANDIDATES_DIR}/{candidate.id}.json"
    if ctx.store.exists(rel):
        row = ctx.store.read_json(rel)
        if row.get("search") == name:
            return row | ({"trial_id": trial_id} if trial_id else {})
    row = _base_row(candidate, trial_id)
    return row | {"status": "failed", "error": error or "the trial ended without a result"}


def _collect(ctx: Any, space: Space, grid: Any, name: str, since: float) -> list[dict[str, Any]]:
    """One row per candidate of this search, from the store (a candidate tried twice counts once).
    A row finished before ``since`` was built by this search's interrupted run: nothing of it ran now."""
    rows: dict[str, dict[str, Any]] = {}
    for result in grid:
        candidate = space.candidate(result.config)
        error = None if result.error is None else _short(result.error)
        row = _row_of(ctx, candidate, result.path and Path(result.path).name or "", error, name)
        if row.get("finished_at", since) < since:
            row |= {"distill_reused": True, "prune_reused": True, "compress_reused": True}
        if row["status"] == "ok" or candidate.id not in rows:
            rows[candidate.id] = row
    if len(rows) < len(grid):
        log.info("%d trials made %d distinct candidates (a sampler may propose a point twice)", len(grid), len(rows))
    return list(rows.values())


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


__all__ = ["CandidateFailed", "SearchJob", "SearchResult", "max_concurrent", "run_candidate", "search", "search_key",
           "trial_resources"]
