"""core/search/algorithms.py: what Tune is told: every objective (a proxy where a trial times nothing),
NSGA-II's population and TPE's start-up from the number of trials."""

from __future__ import annotations

from alambic.config import SearchConfig
from alambic.search.algorithms import UNMEASURED, population_size, proxied, search_algorithm, tune_metrics

OBJECTIVES = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "latency_p50_ms", "mode": "min"},
              {"metric": "model_mem_mb", "mode": "min"}]


def search_config(**fields) -> SearchConfig:
    return SearchConfig(students=["tinybert-4l"], pruning=[[]], quantization=["none"], objectives=OBJECTIVES,
                        **fields)


def test_nsga2_population_follows_the_trials():
    assert [population_size(t) for t in (1, 6, 16, 100, 1000)] == [2, 2, 4, 25, 50]
    algo, samples, notes = search_algorithm(search_config(algorithm="nsga2", trials=16), limit=2)
    assert samples == 16 and "population 4" in notes[0] and "4 generations" in notes[0]
    assert any("latency_p50_ms" in n and "params" in n for n in notes)


def test_every_objective_is_reported_with_a_proxy_or_its_worst():
    objectives = search_config().objectives
    assert proxied(objectives) == {"latency_p50_ms": "params", "model_mem_mb": "size_mb"}
    row = {"val_accuracy": 0.9, "params": 1_000, "size_mb": 2.5, "latency_p50_ms": None}
    assert tune_metrics(row, objectives) == {"val_accuracy": 0.9, "params": 1000.0, "size_mb": 2.5}
    assert tune_metrics({}, objectives) == {"val_accuracy": 0.0, "params": UNMEASURED, "size_mb": UNMEASURED}


def test_tpe_starts_guided_after_a_quarter_of_a_small_search():
    _, _, notes = search_algorithm(search_config(algorithm="tpe", trials=12), limit=None)
    assert notes[0] == "TPE: the first 3 of 12 trials random, then guided"
    assert search_algorithm(search_config(algorithm="grid"), limit=None) == (None, 1, [])
