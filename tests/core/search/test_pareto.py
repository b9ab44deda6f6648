"""core/search/pareto.py: fronts checked against brute force, crowding distance, and the knee."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alambic.search.pareto import beaten_within, crowding_distance, knee_point, non_dominated_sort, pareto_mask


def dominates(a, b, modes) -> bool:
    """The definition, one pair at a time."""
    better = [x > y if m == "max" else x < y for x, y, m in zip(a, b, modes)]
    at_least = [x >= y if m == "max" else x <= y for x, y, m in zip(a, b, modes)]
    return all(at_least) and any(better)


def brute_fronts(points, modes) -> list[list[int]]:
    """Peel the front again and again, by the definition."""
    left = [i for i, p in enumerate(points) if all(v is not None and math.isfinite(v) for v in p)]
    fronts = []
    while left:
        front = [i for i in left if not any(dominates(points[j], points[i], modes) for j in left)]
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


# small integer grids: plenty of ties and duplicates
values = st.one_of(st.integers(0, 4).map(float), st.none())
problems = st.integers(1, 4).flatmap(lambda m: st.tuples(
    st.lists(st.lists(values, min_size=m, max_size=m), max_size=25),
    st.lists(st.sampled_from(["max", "min"]), min_size=m, max_size=m)))


@settings(max_examples=300, deadline=None)
@given(problems)
def test_fronts_match_brute_force(problem):
    points, modes = problem
    points_or_empty = points if points else np.empty((0, len(modes)))
    fronts = non_dominated_sort(points_or_empty, modes)
    assert fronts == brute_fronts(points, modes)
    mask = pareto_mask(points_or_empty, modes)
    assert mask.tolist() == [i in (fronts[0] if fronts else []) for i in range(len(points))]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("objectives", [1, 2, 3, 4])
def test_fronts_on_seeded_random_points(seed, objectives):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(60, objectives)).round(1)  # rounding makes ties
    points[rng.integers(0, 60, 5)] = np.nan  # failed candidates
    modes = list(rng.choice(["max", "min"], objectives))
    fronts = non_dominated_sort(points, modes)
    as_lists = [[None if math.isnan(v) else v for v in row] for row in points.tolist()]
    assert fronts == brute_fronts(as_lists, modes)
    placed = sorted(i for f in fronts for i in f)
    assert placed == [i for i in range(60) if not np.isnan(points[i]).any()], "failed rows are in no front"


def test_duplicates_share_a_front_and_failed_rows_are_left_out():
    points = [[0.9, 10.0], [0.9, 10.0], [0.8, 5.0], [0.8, 12.0], [None, None], [float("nan"), 3.0]]
    assert non_dominated_sort(points, ["max", "min"]) == [[0, 1, 2], [3]]
    assert pareto_mask(points, ["max", "min"]).tolist() == [True, True, True, False, False, False]


def test_one_objective_is_a_ranking_with_ties():
    assert non_dominated_sort([3, 1, 3, 2], ["max"]) == [[0, 2], [3], [1]]
    assert non_dominated_sort([3, 1, 3, 2], ["min"]) == [[1], [3], [0, 2]]


def test_bad_modes_are_clear_errors():
    with pytest.raises(ValueError, match="one mode per column"):
        non_dominated_sort([[1, 2]], ["max"])
    with pytest.raises(ValueError, match="'max' or 'min'"):
        non_dominated_sort([[1, 2]], ["max", "down"])


def test_crowding_boundaries_are_inf_and_interior_is_the_normalized_gap():
    points = [[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]]
    distance = crowding_distance(points, [0, 1, 2, 3])
    assert np.isinf(distance[[0, 3]]).all()
    # point 1: gaps (3 - 0) / 4 and (4 - 1) / 4; point 2: (4 - 1) / 4 and (2 - 0) / 4
    assert distance[1] == pytest.approx(1.5) and distance[2] == pytest.approx(1.25)


def test_crowding_follows_the_front_order_and_small_fronts_are_all_boundary():
    points = [[9.0, 9.0], [4.0, 0.0], [1.0, 2.0], [0.0, 4.0]]
    distance = crowding_distance(points, [3, 2, 1])
    assert np.isinf(distance[[0, 2]]).all() and np.isfinite(distance[1])
    assert np.isinf(crowding_distance(points, [1, 2])).all()
    assert crowding_distance(points, []).shape == (0,)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5).map(float), min_size=3, max_size=3), min_size=3, max_size=20))
def test_crowding_extremes_of_every_varying_objective_are_inf(points):
    distance = crowding_distance(points, list(range(len(points))))
    array = np.array(points)
    assert (distance >= 0).all()
    for column in array.T:
        if column.max() > column.min():
            assert np.isinf(distance[column == column.min()]).any()
            assert np.isinf(distance[column == column.max()]).any()


def test_knee_of_a_convex_front_is_the_elbow():
    # accuracy climbs fast up to 2 MB, then barely: the elbow is the 2 MB model
    sizes = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    accuracy = [0.50, 0.85, 0.90, 0.92, 0.93, 0.935]
    points = [[a, s] for a, s in zip(accuracy, sizes)]
    front = non_dominated_sort(points, ["max", "min"])[0]
    assert front == [0, 1, 2, 3, 4, 5]
    assert knee_point(points, ["max", "min"], front) == 1


def test_knee_ignores_units_and_works_with_three_objectives():
    # the same front in other units (size in bytes) and a third, constant objective
    points = [[0.50, 1e6, 7.0], [0.85, 2e6, 7.0], [0.90, 3e6, 7.0], [0.935, 6e6, 7.0]]
    assert knee_point(points, ["max", "min", "min"], [0, 1, 2, 3]) == 1
    assert knee_point(points, ["max", "min", "min"], [2]) == 2
    with pytest.raises(ValueError, match="non-empty"):
        knee_point(points, ["max", "min", "min"], [])


def test_beaten_within_noise_is_the_selection_rule_as_a_relation():
    # accuracy (max), size (min): 0.407 is within 0.011 of 0.409 and four times smaller
    points = [[0.409, 45.4], [0.407, 11.5], [0.300, 5.0]]
    modes = ["max", "min"]
    assert beaten_within(points, modes, [0, 1, 2], [0.011, 0.0]).tolist() == [True, False, False]
    assert beaten_within(points, modes, [0, 1, 2], [0.0, 0.0]).tolist() == [False, False, False], "plain dominance"
    assert beaten_within(points, modes, [0, 1, 2], [0.5, 0.0]).tolist() == [True, True, False]
    assert beaten_within(points, modes, [2, 0], [0.011, 0.0]).tolist() == [False, False], "only among the front given"
    with pytest.raises(ValueError, match="one tolerance >= 0 per objective"):
        beaten_within(points, modes, [0, 1], [0.01])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5).map(float), min_size=3, max_size=3), min_size=1, max_size=15),
       st.floats(0, 3, allow_subnormal=False))  # training flushes denormals to zero in this process
def test_some_front_point_is_never_beaten_within_noise(points, tolerance):
    modes = ["max", "min", "min"]
    front = non_dominated_sort(points, modes)[0]
    assert not beaten_within(points, modes, front, [tolerance, 0.0, 0.0]).all()


def test_the_knee_can_be_chosen_among_some_points_on_the_front_scale():
    sizes = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    accuracy = [0.50, 0.85, 0.90, 0.92, 0.93, 0.935]
    points = [[a, s] for a, s in zip(accuracy, sizes)]
    assert knee_point(points, ["max", "min"], range(6), among=[0, 2, 5]) == 2  # the next best, same scale
    assert knee_point(points, ["max", "min"], range(6), among=[5]) == 5
    with pytest.raises(ValueError, match="among must be a non-empty subset of front"):
        knee_point(points, ["max", "min"], [0, 1], among=[4])
