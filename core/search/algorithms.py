"""How Tune searches the space: the algorithm, and the objectives it is told.

::

    algo, samples, notes = search_algorithm(config.search, max_concurrent)   # None for grid/random
    tune.report(tune_metrics(row, config.search.objectives))                # in the trial

A trial scores accuracy and size, but times nothing (latency and memory are timed after the
search, one candidate at a time: alambic.search.timing). An objective it cannot measure is stood in for
by a figure it has (:data:`PROXIES`), and every objective is reported, with the worst value where a
row lacks one: Optuna refuses a missing value. NSGA-II's population and TPE's random start-up are
derived from ``trials``: Optuna's defaults (50, 10) would leave a small search random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: what Tune optimizes in place of an objective a trial cannot measure (latency and memory are
#: timed after the search, alambic.search.timing): the candidate's parameters, its shipped size
PROXIES = {"latency_p50_ms": "params", "latency_p90_ms": "params", "peak_mem_mb": "size_mb",
           "model_mem_mb": "size_mb", "executorch_p50_ms": "params", "executorch_p90_ms": "params"}
#: what a "min" objective a candidate did not measure reports: worse than any real figure
UNMEASURED = 1e12


def tune_metric(metric: str) -> str:
    """The name Tune optimizes for an objective: the metric itself, or its proxy (:data:`PROXIES`)."""
    return PROXIES.get(metric, metric)


def tune_metrics(row: Mapping[str, Any], objectives: Sequence[Any]) -> dict[str, float]:
    """Every objective's value for Tune (its proxy where a trial cannot measure it). A value the row
    lacks gets the objective's worst (Optuna refuses a missing one, and would fail the search)."""
    found = {}
    for objective in objectives:
        name = tune_metric(objective.metric)
        value = row.get(name)
        if value is None or math.isnan(value):
            value = 0.0 if objective.mode == "max" else UNMEASURED
        found[name] = float(value)
    return found


def population_size(trials: int) -> int:
    """NSGA-II's population for a search of ``trials``: a quarter of them (2 to 50), so the search
    runs about four generations. Optuna's default of 50 would leave any search under 50 trials in
    its first, random generation: a random search under another name."""
    return max(2, min(50, trials // 4))


def search_algorithm(search: Any, limit: int | None) -> tuple[Any, int, list[str]]:
    """(Tune search algorithm or None, num_samples, what the user should know about it) for the
    config's search section."""
    if search.algorithm == "grid":
        return None, 1, []
    if search.algorithm == "random":
        return None, search.trials, []
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if search.algorithm == "nsga2":
        population = population_size(search.trials)
        notes = [f"NSGA-II: population {population} (a quarter of {search.trials} trials: about "
                 f"{math.ceil(search.trials / population)} generations)"]
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=search.seed)
    else:
        startup = max(2, min(10, search.trials // 4))  # Optuna's 10 random trials would be most of a small search
        notes = [f"TPE: the first {startup} of {search.trials} trials random, then guided"]
        sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=search.seed)
    metrics, modes, proxied = tune_objectives(search.objectives)
    notes += proxied
    algo = OptunaSearch(metric=metrics, mode=modes, sampler=sampler)
    return ConcurrencyLimiter(algo, max_concurrent=limit or search.trials), search.trials, notes


def tune_objectives(objectives: Sequence[Any]) -> tuple[list[str], list[str], list[str]]:
    """(Tune metric names, modes, notes): each proxy once, each one said."""
    metrics: dict[str, str] = {}
    for objective in objectives:
        metrics.setdefault(tune_metric(objective.metric), objective.mode)
    notes = [f"objective {metric} is measured after the search (one candidate at a time, nothing beside it): "
             f"during the search Tune optimizes {proxy} in its place" for metric, proxy in proxied(objectives).items()]
    return list(metrics), list(metrics.values()), notes


def proxied(objectives: Sequence[Any]) -> dict[str, str]:
    """The objectives a trial cannot measure, each with what Tune optimizes in its place."""
    return {o.metric: tune_metric(o.metric) for o in objectives if tune_metric(o.metric) != o.metric}


__all__ = ["PROXIES", "UNMEASURED", "population_size", "proxied", "search_algorithm", "tune_metric",
           "tune_metrics", "tune_objectives"]
