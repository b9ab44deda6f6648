"""What a search costs when every stage is memoized, and how much memoization saves.

    python benchmarks/search_overhead.py [--config examples/quickstart.yaml] [--store DIR]
                                         [--no-cli] [--repeats 3]

The config's store is redirected to ``--store`` (default: a new temporary folder, removed at the
end), so nothing of the user's is read or written. Then, in one process, through
``alambic.search.tune.search`` (what ``alambic search`` calls):

  cold      the search on the empty store: data, teacher, every distillation, pruning and
            compress stage built; its memoization counts give the factor below
  repeat    the same search again (Ray shut down first, so it starts Ray again as a new
            ``alambic search`` would): every trial runs, finds its candidate row in the store and
            reports it (``alambic run`` would skip the search outright, through ``search.json``;
            calling ``search`` directly, like ``alambic search`` does, runs every trial)
  stages    the same search with the candidate rows moved aside: every trial runs distill ->
            prune -> compress, and each stage is found memoized in the store
  cli       ``alambic --quiet search CONFIG`` in a fresh process: what a user pays end to end
            (Python start-up, imports, data and teacher from the store, Ray, the trials)

Per candidate = wall time / candidates (the issue's goal: < 2 s on 2 cores). The in-process runs
are broken down by timing wrappers around the driver's steps (Ray start-up, teacher, the Tuner
built and fitted, results collected and written) and a Tune callback that records each trial's
start (its actor up), result and end, with Tune's own ``time_total_s``. The memoization factor is
S x P x Q candidates (T distill settings as well, here temperatures) over the distillations the
cold search ran. Prints the machine, the command line and Markdown tables for BENCHMARKS.md.

About 3 minutes on 2 cores with the quickstart, most of it the cold search. Ray's workers are
niced: measure on an otherwise idle machine (the load average is printed before and after). With
``--store DIR`` the store is kept, and a second invocation's "cold" search is memoized too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from alambic import machine
from alambic.config import load_config
from alambic.run import RunContext


class Clock:
    """Seconds spent in the wrapped driver steps, and what a Tune callback saw of each trial."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.trials: dict[str, dict[str, float]] = {}
        self.fit_start = self.fit_end = 0.0

    def add(self, label: str, seconds: float) -> None:
        self.steps[label] = self.steps.get(label, 0.0) + seconds


@contextlib.contextmanager
def instrumented(clock: Clock) -> Iterator[None]:
    """Wrap the driver's steps of ``alambic.search.tune.search`` in timers, and add a Tune callback.

    ``search`` imports these names when it runs (or looks them up as module globals), so
    replacing the module attributes is enough; everything is put back on exit."""
    import ray.tune

    import alambic.search.tune
    import alambic.train.distributed
    import alambic.train.teacher

    patched: list[tuple[Any, str, Any]] = []
    inner: list[float] = []  # per active timer, the seconds of the timers nested in it

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            inner.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                clock.add(label, seconds - inner.pop())  # a nested step (ray.init) counts once
                if inner:
                    inner[-1] += seconds

        patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    timed(alambic.search.tune, "check_space", "check the space")
    timed(alambic.train.teacher, "train_teacher", "data + teacher (train or reuse)")
    timed(alambic.train.teacher, "teacher_logits", "teacher logits (compute or reuse)")
    timed(alambic.train.distributed, "ensure_ray", "Ray start-up (ray.init)")
    timed(alambic.search.tune, "_collect", "rows collected from the store")
    timed(alambic.search.tune, "mark_front", "front marked")
    timed(alambic.search.tune, "write_results", "results.parquet written")

    class TrialClock(ray.tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            clock.trials.setdefault(trial.trial_id, {})["start"] = time.perf_counter()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            clock.trials[trial.trial_id] |= {"result": time.perf_counter(),
                                             "time_total_s": result.get("time_total_s", float("nan"))}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            clock.trials[trial.trial_id]["end"] = time.perf_counter()

        on_trial_error = on_trial_complete

    original_init = ray.tune.Tuner.__init__

    @functools.wraps(original_init)
    def with_callback(self: Any, *args: Any, run_config: Any = None, **kwargs: Any) -> None:
        if run_config is not None:
            run_config.callbacks = [*(run_config.callbacks or []), TrialClock()]
        original_init(self, *args, run_config=run_config, **kwargs)

    ray.tune.Tuner.__init__ = with_callback
    timed(ray.tune.Tuner, "__init__", "Tuner built")  # outside the callback wrapper
    original_fit = ray.tune.Tuner.fit

    @functools.wraps(original_fit)
    def fit(self: Any) -> Any:
        clock.fit_start = time.perf_counter()
        try:
            return original_fit(self)
        finally:
            clock.fit_end = time.perf_counter()

    ray.tune.Tuner.fit = fit
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
        ray.tune.Tuner.fit = original_fit
        ray.tune.Tuner.__init__ = original_init


def timed_search(ctx: RunContext) -> tuple[Any, Clock, float]:
    """One ``alambic.search.tune.search`` in this process, Ray stopped before and after."""
    import ray

    from alambic.search.tune import search

    ray.shutdown()
    clock = Clock()
    start = time.perf_counter()
    with instrumented(clock):
        result = search(ctx)
    wall = time.perf_counter() - start
    ray.shutdown()
    return result, clock, wall


def breakdown(clock: Clock, wall: float) -> list[tuple[str, float]]:
    """(step, seconds) that add up to ``wall``."""
    trials = [t for t in clock.trials.values() if "start" in t and "end" in t]
    first = min((t["start"] for t in trials), default=clock.fit_end)
    last = max((t["end"] for t in trials), default=clock.fit_end)
    steps = dict(clock.steps)
    tuner = steps.pop("Tuner built", 0.0)
    driver_after = sum(steps.pop(k, 0.0) for k in ("rows collected from the store", "front marked",
                                                   "results.parquet written"))
    parts = [(k, v) for k, v in steps.items()]
    parts += [("Tune set-up: Tuner built, fit() until the first trial's actor is up",
               tuner + (first - clock.fit_start)),
              ("the trials: first actor up to last trial ended", last - first),
              ("Tune wind-down: last trial ended to fit() returned", clock.fit_end - last),
              ("driver after the trials: rows, front, results.parquet", driver_after)]
    parts.append(("other (space, plan, hooks)", wall - sum(v for _, v in parts)))
    return parts


def trial_stats(clock: Clock) -> dict[str, float]:
    """Per trial: actor up -> ended, Tune's time_total_s, and the gaps between trials."""
    trials = sorted((t for t in clock.trials.values() if "start" in t and "end" in t), key=lambda t: t["start"])
    if not trials:
        return {}
    lives = [t["end"] - t["start"] for t in trials]
    tune_s = [t["time_total_s"] for t in trials if "time_total_s" in t] or [float("nan")]  # failed: no result
    span = max(t["end"] for t in trials) - trials[0]["start"]
    return {"trials": len(trials), "life_mean": statistics.mean(lives), "life_max": max(lives),
            "tune_mean": statistics.mean(tune_s), "busy": sum(lives), "span": span}


def memo_line(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{stage} {c['ran']} ran, {c['reused']} reused" for stage, c in counts.items()
                     if stage != "candidates") + (f"; candidates {counts['candidates']['ok']} ok, "
                                                  f"{counts['candidates']['failed']} failed")


def grid_shape(search: Any) -> dict[str, int]:
    """S students, T distill settings (the product of the space's choices), P pruning, Q quantizers."""
    distill = 1
    for value in search.space.values():
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("choice", "grid"):
            distill *= len(next(iter(value.values())))
    return {"S": len(search.students), "T": distill, "P": len(search.pruning), "Q": len(search.quantization)}


def write_config(config: Any, folder: Path) -> Path:
    """The config as YAML in ``folder`` (paths already absolute), for the CLI run."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    return path


def cli_search(config_path: Path) -> tuple[float, str]:
    """``alambic --quiet search CONFIG --json`` in a new process: (wall s, memoization line)."""
    import json

    exe = Path(sys.executable).with_name("alambic")
    start = time.perf_counter()
    done = subprocess.run([str(exe), "--quiet", "search", str(config_path), "--json"], capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"alambic search failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout[done.stdout.index("{"):])
    return wall, memo_line(out["counts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/quickstart.yaml")
    parser.add_argument("--store", help="where the run's store goes (default: a temporary folder, removed)")
    parser.add_argument("--repeats", type=int, default=3, help="memoized searches of each kind (the median)")
    parser.add_argument("--no-cli", action="store_true", help="skip the `alambic search` subprocess run")
    args = parser.parse_args()
    args.repeats = max(1, args.repeats)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    folder = Path(args.store or tempfile.mkdtemp(prefix="alambic-search-overhead-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    config = config.model_copy(update={"store": str(folder / "artifacts")})
    ctx = RunContext.from_config(config, quiet=True, config_path=args.config)
    shape = grid_shape(config.search)
    candidates = shape["S"] * shape["T"] * shape["P"] * shape["Q"]
    print(f"machine: {machine.summary()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min)")
    print(f"store: {folder / 'artifacts'}  grid: {shape} = {candidates} candidates", flush=True)

    runs: dict[str, list[tuple[Any, Clock, float]]] = {}
    try:
        if ctx.store.exists("candidates"):
            print("the store already holds this search: the 'cold' run below is not cold")
        runs["cold"] = [timed_search(ctx)]
        print(f"cold: {runs['cold'][0][2]:.1f} s  memoization: {memo_line(runs['cold'][0][0].counts)}", flush=True)
        for repeat in range(args.repeats):
            runs.setdefault("repeat", []).append(timed_search(ctx))
            print(f"repeat {repeat + 1}: {runs['repeat'][-1][2]:.1f} s", flush=True)
        rows_dir = ctx.store.local_path("candidates")
        for repeat in range(args.repeats):
            aside = rows_dir.with_name("candidates.aside")
            shutil.rmtree(aside, ignore_errors=True)
            rows_dir.rename(aside)  # the rows go: each trial looks its stages up
            runs.setdefault("stages", []).append(timed_search(ctx))
            print(f"stages {repeat + 1}: {runs['stages'][-1][2]:.1f} s  "
                  f"memoization: {memo_line(runs['stages'][-1][0].counts)}", flush=True)
            shutil.rmtree(aside)
        cli = None if args.no_cli else cli_search(write_config(config, folder))
        if cli:
            print(f"cli: {cli[0]:.1f} s  memoization: {cli[1]}", flush=True)
    finally:
        if args.store is None:
            shutil.rmtree(folder, ignore_errors=True)

    def median(kind: str) -> tuple[Any, Clock, float]:
        ordered = sorted(runs[kind], key=lambda r: r[2])
        return ordered[len(ordered) // 2]

    cold, repeat, stages = runs["cold"][0], median("repeat"), median("stages")
    print(f"\nload after: {os.getloadavg()[0]:.2f} (1 min)\n")
    print(f"| search of {candidates} candidates | wall s | per candidate s | memoization |")
    print("| --- | ---: | ---: | --- |")
    print(f"| cold: empty store (data, teacher, every stage built) | {cold[2]:.1f} | {cold[2] / candidates:.2f} "
          f"| {memo_line(cold[0].counts)} |")
    print(f"| repeat: every candidate's row in the store (`search()` again) | {repeat[2]:.1f} | "
          f"{repeat[2] / candidates:.2f} | {memo_line(repeat[0].counts)} |")
    print(f"| stages: rows removed, every stage found memoized | {stages[2]:.1f} | "
          f"{stages[2] / candidates:.2f} | {memo_line(stages[0].counts)} |")
    if cli:
        print(f"| `alambic search` again, a new process (imports, data, Ray, trials) | {cli[0]:.1f} | "
              f"{cli[0] / candidates:.2f} | {cli[1]} |")

    built = [kind for kind, run in (("repeat", repeat), ("stages", stages))
             if any(c["ran"] for stage, c in run[0].counts.items() if stage != "candidates")]
    if built:  # e.g. the code changed between the cold search and these: not what is measured here
        print(f"\nWARNING: the {' and '.join(built)} search built stages: it was not all memoized")
    worst = max(repeat[2], stages[2]) / candidates
    print(f"\nper-candidate overhead, all stages memoized (median of {args.repeats}): {worst:.2f} s "
          f"(goal < 2 s: {'met' if worst < 2 else 'NOT met'})")
    print("\n| step | cold s | repeat s | stages s |")
    print("| --- | ---: | ---: | ---: |")
    parts = {kind: dict(breakdown(run[1], run[2])) for kind, run in (("cold", cold), ("repeat", repeat), ("stages", stages))}
    for label in parts["repeat"]:
        print(f"| {label} | " + " | ".join(f"{parts[k].get(label, 0.0):.2f}" for k in parts) + " |")
    print("| total | " + " | ".join(f"{r[2]:.2f}" for r in (cold, repeat, stages)) + " |")

    print("\n| trials | cold | repeat | stages |")
    print("| --- | ---: | ---: | ---: |")
    stats = {k: trial_stats(r[1]) for k, r in (("cold", cold), ("repeat", repeat), ("stages", stages))}
    for key, label in (("trials", "trials"), ("life_mean", "mean s, actor up -> trial ended"),
                       ("life_max", "max s, actor up -> trial ended"),
                       ("tune_mean", "mean Tune time_total_s (in the trainable)"),
                       ("busy", "sum of trial lives s"), ("span", "first actor up -> last trial ended s")):
        print(f"| {label} | " + " | ".join(f"{stats[k].get(key, float('nan')):.2f}" for k in stats) + " |")

    s, t, p, q = shape["S"], shape["T"], shape["P"], shape["Q"]
    distilled = cold[0].counts["distill"]["ran"]
    pruned = cold[0].counts["prune"]["ran"]
    compressed = cold[0].counts["compress"]["ran"]
    print("\n| S students | T distill settings | P pruning | Q quantizers | candidates S·T·P·Q | distillations "
          "| prunings | compress stages | factor (candidates / distillations) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {s} | {t} | {p} | {q} | {candidates} | {distilled} (S·T = {s * t}) | {pruned} | {compressed} | "
          f"{f'{candidates / distilled:.1f}x' if distilled else 'n/a (nothing distilled: not a cold store)'} |")


if __name__ == "__main__":
    main()
