"""plugins/selection.py: the device tiers, explicit constraints, and the choice among qualifiers."""

from __future__ import annotations

import pandas as pd
import pytest

from alambic.config import SelectConfig
from alambic.errors import AlambicError, ConfigError
from alambic.manager import build_registry, get_plugin_manager
from alambic.plugins.selection import TIERS, Constraints, Tier
from alambic.search.select import Limit, Selection, SelectionPolicy, make_policy, select
from tests.core.search.test_front import results_frame

REGISTRY = build_registry(get_plugin_manager(env={}))


def contract_selection_policies(cls: type) -> None:
    """What every selection policy must do (for tests/plugins/test_contract.py's CONTRACTS)."""
    assert issubclass(cls, SelectionPolicy), "a selection policy subclasses alambic.search.select.SelectionPolicy"
    config = SelectConfig(policy=cls.id, max_size_mb=50.0)  # a config every policy can read
    policy = cls.from_config(config)
    limits = policy.limits()
    assert limits and all(isinstance(limit, Limit) for limit in limits)
    assert policy.summary() and isinstance(policy.settings(), dict)
    selection = select(results_frame(), policy)
    assert isinstance(selection, Selection) and selection.policy == cls.id
    assert selection.ok or len(selection.nearest) == 3
    selection.to_dict()


@pytest.mark.parametrize("policy_id", REGISTRY["selection_policies"].ids())
def test_every_registered_policy_meets_the_contract(policy_id):
    entry = REGISTRY["selection_policies"].entries[policy_id]
    assert entry.description, "the class docstring's first line describes it"
    contract_selection_policies(entry.cls)


def test_the_builtins_are_registered():
    assert {"tier", "constraints"} <= set(REGISTRY["selection_policies"].ids())
    assert REGISTRY["selection_policies"].get("tier") is Tier


def test_tiers_are_the_seed_device_classes():
    assert {name: (t.chips, t.latency_ms, t.memory_mb) for name, t in TIERS.items()} == {
        "high": ("A16 and newer", 100.0, 200.0), "mid": ("A14-A15", 200.0, 150.0), "low": ("A13", 500.0, 100.0)}
    limits = Tier(tier="low").limits()
    assert [(x.metric, x.op, x.bound, x.factor) for x in limits] == [
        ("latency_p90_ms", "<", 500.0, 1.0), ("model_mem_mb", "<=", 100.0, 1.0)]
    assert Tier(tier="low").summary() == "tier 'low' (A13): phone latency < 500 ms, model memory <= 100 MB"


def test_phone_latency_is_the_cpu_p90_times_the_factor():
    df = results_frame()
    assert select(df, Tier(tier="high")).candidate_id == "c03"  # p90 95 ms < 100
    slower = select(df, Tier(tier="high", phone_latency_factor=1.1))  # 104.5 ms: out
    assert slower.candidate_id == "c05"
    assert "phone latency 17.6 ms (CPU latency_p90_ms 16.0 x 1.1) < 100 ms" in " ".join(slower.reasons)
    assert slower.notes[0] == "phone latency = CPU latency_p90_ms x 1.1 (phone_latency_factor)"
    assert "measure one model on the device" in Tier().notes()[0], "the default factor says it is a stand-in"


def test_tier_with_explicit_limits_needs_both_and_the_memory_budget_can_change():
    df = results_frame()
    assert select(df, Tier(tier="high", max_size_mb=20.0)).candidate_id == "c05"
    assert select(df, Tier(tier="low", memory_mb=90.0)).candidate_id == "c07"
    assert Tier(tier="low", memory_mb=90.0).settings()["memory_mb"] == 90.0


def test_constraints_policy():
    df = results_frame()
    assert select(df, Constraints(min_accuracy=0.95)).candidate_id == "c01"
    assert select(df, Constraints(max_latency_ms=20.0)).candidate_id == "c05"  # p90 16 ms
    assert select(df, Constraints(max_latency_ms=20.0, phone_latency_factor=2.0)).candidate_id == "c07"
    assert Constraints(min_accuracy=0.9).notes() == [], "no latency limit, no latency note"


def test_ties_go_to_the_smaller_then_the_faster():
    df = pd.DataFrame([{"candidate_id": cid, "status": "ok", "val_accuracy": 0.9, "size_mb": size,
                        "latency_p50_ms": p50, "latency_p90_ms": p50, "model_mem_mb": 50.0}
                       for cid, size, p50 in (("a", 10.0, 5.0), ("b", 8.0, 6.0), ("c", 8.0, 4.0), ("d", 9.0, 1.0))])
    selection = select(df, Tier())
    assert selection.candidate_id == "c"
    assert "tied with b; the faster: p50 4.00 ms against 6.00 ms" in selection.reasons[2]


def test_a_candidate_not_measured_never_qualifies_and_is_nearest_last():
    df = pd.DataFrame([{"candidate_id": "m", "status": "ok", "val_accuracy": 0.99, "size_mb": 1.0,
                        "latency_p50_ms": 1.0, "latency_p90_ms": 1.0, "model_mem_mb": None},
                       {"candidate_id": "n", "status": "ok", "val_accuracy": 0.8, "size_mb": 1.0,
                        "latency_p50_ms": 1.0, "latency_p90_ms": 150.0, "model_mem_mb": 10.0}])
    selection = select(df, Tier())
    assert not selection.ok and [n.candidate_id for n in selection.nearest] == ["n", "m"]
    assert selection.nearest[1].misses == ("model memory not measured (model_mem_mb is empty)",)
    assert selection.nearest[0].misses == ("phone latency 150.0 ms, not < 100 ms (50.0% over)",)


def test_clear_errors():
    with pytest.raises(AlambicError, match="unknown tier 'top'; allowed: high, mid, low"):
        Tier(tier="top")
    with pytest.raises(AlambicError, match="phone_latency_factor must be > 0"):
        Tier(phone_latency_factor=0)
    with pytest.raises(AlambicError, match="give at least one of max_size_mb, max_latency_ms, min_accuracy"):
        make_policy({"policy": "constraints"}, REGISTRY)
    with pytest.raises(AlambicError, match="select.tier 'mid' is set but select.policy is 'constraints'"):
        make_policy({"policy": "constraints", "tier": "mid", "max_size_mb": 3.0}, REGISTRY)
    with pytest.raises(ConfigError, match="max_size_mb: Input should be greater than 0"):
        make_policy({"policy": "tier", "max_size_mb": -1.0}, REGISTRY)
    with pytest.raises(AlambicError, match="unknown selection_policies id 'teir' \\(did you mean 'tier'\\?\\)"):
        make_policy({"policy": "teir"}, REGISTRY)


def test_config_select_section_builds_the_policy():
    policy = make_policy(SelectConfig(), REGISTRY)
    assert policy == Tier(tier="high")
    policy = make_policy({"policy": "tier", "tier": "mid", "max_size_mb": 20.0, "phone_latency_factor": 1.5},
                         REGISTRY)
    assert policy == Tier(tier="mid", max_size_mb=20.0, phone_latency_factor=1.5)


def test_a_candidate_off_the_front_is_chosen_when_what_beats_it_misses_a_limit():
    # x beats y on accuracy, size and p50, but its p90 (what the tier checks) is too slow
    df = pd.DataFrame([{"candidate_id": cid, "status": "ok", "val_accuracy": 0.9, "size_mb": size,
                        "latency_p50_ms": p50, "latency_p90_ms": p90, "model_mem_mb": 50.0}
                       for cid, size, p50, p90 in (("x", 10.0, 5.0, 200.0), ("y", 12.0, 6.0, 20.0))])
    selection = select(df, Tier())
    assert selection.candidate_id == "y" and selection.row["front_rank"] == 1
    assert selection.reasons[-1].startswith("not on the Pareto front over val_accuracy (max), size_mb (min), "
                                            "latency_p50_ms (min) (rank 1)")


# --- accuracy within noise ------------------------------------------------------------------

#: The issue's held-out task: 0.2 point apart on 2,000 validation rows, one standard error ~1.1 point.
NOISY = (("fp32", 0.4090, 45.4, "none", 30.0), ("int8", 0.4070, 11.5, "dynamic-int8", 12.0))


def noisy_frame(rows=NOISY, val_examples: int | None = 2_000) -> pd.DataFrame:
    return pd.DataFrame([{"candidate_id": cid, "status": "ok", "val_accuracy": acc, "val_examples": val_examples,
                          "test_accuracy": acc, "size_mb": size, "quantization": quant, "latency_p50_ms": p50,
                          "latency_p90_ms": p50 * 2, "model_mem_mb": 100.0}
                         for cid, acc, size, quant, p50 in rows])


def test_accuracies_within_one_standard_error_count_as_equal_and_the_smaller_wins():
    selection = select(noisy_frame(), Tier(tier="mid"))
    assert selection.candidate_id == "int8"
    assert ("int8 (11.5 MB, dynamic-int8) chosen over fp32 (45.4 MB, none), the most accurate: 0.20 pt apart, "
            "within the tolerance of 1.10 pt (one standard error on 2,000 validation rows); the smaller wins"
            in " ".join(selection.reasons))
    assert selection.to_dict()["accuracy_tolerance"] == {
        "points": pytest.approx(1.0994, abs=1e-4), "basis": "one standard error on 2,000 validation rows"}


def test_tolerance_zero_ranks_by_the_last_digit_as_before():
    assert select(noisy_frame(), Tier(tier="mid", accuracy_tolerance=0.0)).candidate_id == "fp32"
    exact = select(noisy_frame(), {"policy": "tier", "tier": "mid", "accuracy_tolerance": 0.0}, registry=REGISTRY)
    assert exact.candidate_id == "fp32"
    assert "the most accurate of 2 qualifying candidates (val accuracy 0.4090; next: int8, 0.4070)" in exact.reasons
    assert make_policy(SelectConfig(accuracy_tolerance=0.5), REGISTRY) == Tier(accuracy_tolerance=0.5)


def test_a_gap_larger_than_the_tolerance_keeps_the_more_accurate():
    wider = noisy_frame((("fp32", 0.4300, 45.4, "none", 30.0), NOISY[1]))  # 2.3 points, 1.1 the error
    selection = select(wider, Tier(tier="mid"))
    assert selection.candidate_id == "fp32"
    assert ("the most accurate of 2 qualifying candidates (val accuracy 0.4300; next: int8, 0.4070, 2.30 pt lower: "
            "beyond the tolerance of 1.11 pt (one standard error on 2,000 validation rows))" in selection.reasons)
    stated = select(noisy_frame(), Tier(tier="mid", accuracy_tolerance=0.1))  # a tolerance in points
    assert stated.candidate_id == "fp32" and "beyond the tolerance of 0.10 pt (accuracy_tolerance)" in stated.reasons[2]
    looser = select(wider, Tier(tier="mid", accuracy_tolerance=2.5))
    assert looser.candidate_id == "int8" and "within the tolerance of 2.50 pt (accuracy_tolerance)" in looser.reasons[2]


def test_within_the_tolerance_the_same_size_goes_to_the_faster():
    rows = (("slow", 0.4090, 11.5, "dynamic-int8", 30.0), ("fast", 0.4070, 11.5, "dynamic-int8", 12.0))
    selection = select(noisy_frame(rows), Tier(tier="mid"))
    assert selection.candidate_id == "fast"
    assert "the same size; the faster wins: p50 12.00 ms against 30.00 ms" in selection.reasons[2]


def test_without_val_examples_the_ranking_is_exact_and_says_so():
    selection = select(noisy_frame(val_examples=None), Tier(tier="mid"))
    assert selection.candidate_id == "fp32"
    assert selection.to_dict()["accuracy_tolerance"]["points"] == 0.0
    assert any("no val_examples" in note for note in selection.notes)
