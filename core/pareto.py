"""Pareto fronts of candidates scored on several objectives, each maximized or minimized.

::

    points = [[0.93, 40.1, 12.0], [0.91, 11.2, 4.1], [0.90, 12.0, 5.0], [None, None, None]]
    modes = ["max", "min", "min"]              # accuracy up, size and latency down
    non_dominated_sort(points, modes)          # [[0, 1], [2]]: row 3 (failed) is in no front
    pareto_mask(points, modes)                 # [True, True, False, False]
    crowding_distance(points, [0, 1])          # [inf, inf]: both are boundary points
    knee_point(points, modes, [0, 1])          # the front's best compromise (an index of points)

A point *dominates* another when it is at least as good on every objective and better on one.
Equal points (duplicates, ties) do not dominate each other: they share a front.

Rows with a missing value (NaN, None, ±inf: a failed candidate) are in no front: they never
dominate and are never ranked. ``pareto_mask`` is False for them. Pure numpy, O(M·N²) time:
fine for the thousands of candidates a search measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MODES = ("max", "min")
_CHUNK = 512  # rows compared at once: bounds the (chunk, N, M) temporaries


def oriented(points: Any, modes: Sequence[str]) -> np.ndarray:
    """Points as an (N, M) float array where larger is better on every objective ("min" negated).

    A 1-D input is one objective. Missing values (None) become NaN.
    """
    import numpy as np

    array = np.asarray(points, dtype=float)
    if array.ndim == 1:  # one objective, or no rows at all
        array = array.reshape(0, len(modes)) if array.size == 0 else array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"points must be an (N, M) array, got shape {array.shape}")
    if len(modes) != array.shape[1]:
        raise ValueError(f"{len(modes)} mode(s) for {array.shape[1]} objective(s): one mode per column")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes must be 'max' or 'min', got {bad}")
    signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
    return array * signs


def valid_rows(oriented_points: np.ndarray) -> np.ndarray:
    """Indices of the rows with every value finite (the candidates that can be ranked)."""
    import numpy as np

    return np.flatnonzero(np.isfinite(oriented_points).all(axis=1))


def dominance(oriented_points: np.ndarray) -> np.ndarray:
    """``D[i, j]``: row i dominates row j (larger is better, every value finite)."""
    import numpy as np

    p = oriented_points
    n = len(p)
    out = np.zeros((n, n), dtype=bool)
    for start in range(0, n, _CHUNK):
        block = p[start:start + _CHUNK, None, :]  # (C, 1, M) against (1, N, M)
        out[start:start + _CHUNK] = (block >= p[None]).all(-1) & (block > p[None]).any(-1)
    return out


def non_dominated_sort(points: Any, modes: Sequence[str]) -> list[list[int]]:
    """Fronts, best first: front 0 is the Pareto front, front k is dominated only by fronts < k.

    Indices are rows of ``points``, ascending within a front. Rows with a missing value are left
    out of every front.
    """
    import numpy as np

    p = oriented(points, modes)
    rows = valid_rows(p)
    dominates = dominance(p[rows])
    beaten_by = dominates.sum(axis=0)  # how many rows dominate each row
    placed = np.zeros(len(rows), dtype=bool)
    fronts = []
    while not placed.all():
        current = np.flatnonzero((beaten_by == 0) & ~placed)
        fronts.append(rows[current].tolist())
        placed[current] = True
        beaten_by = beaten_by - dominates[current].sum(axis=0)
    return fronts


def pareto_mask(points: Any, modes: Sequence[str]) -> np.ndarray:
    """A boolean per row: on the Pareto front (False for rows with a missing value)."""
    import numpy as np

    p = oriented(points, modes)
    mask = np.zeros(len(p), dtype=bool)
    fronts = non_dominated_sort(points, modes)
    if fronts:
        mask[fronts[0]] = True
    return mask


def crowding_distance(points: Any, front: Sequence[int]) -> np.ndarray:
    """NSGA-II crowding distance of each row of ``front`` (same order): how much room it has.

    Per objective, the front is sorted and each point gets the gap between its two neighbours,
    divided by the objective's range on the front; the sum over objectives is its distance. The
    two boundary points of each objective get ``inf`` (they must survive any thinning). An
    objective constant over the front adds nothing. Modes do not matter: gaps are symmetric.
    """
    import numpy as np

    p = oriented(points, ["max"] * _width(points))[list(front)]
    distance = np.zeros(len(p))
    if len(p) <= 2:
        return np.full(len(p), np.inf)
    for values in p.T:
        order = np.argsort(values, kind="stable")
        span = values[order[-1]] - values[order[0]]
        if span == 0:
            continue
        distance[order[1:-1]] += (values[order[2:]] - values[order[:-2]]) / span
        distance[order[[0, -1]]] = np.inf
    return distance


def knee_point(points: Any, modes: Sequence[str], front: Sequence[int]) -> int:
    """The front's knee: the point closest to the ideal point once objectives are normalized.

    Each objective is scaled to [0, 1] over the front, 1 being the best value on the front, so
    that fractions, megabytes and milliseconds weigh alike; the knee is the point with the
    smallest Euclidean distance to (1, ..., 1). We use the distance to the ideal point rather
    than the distance to the line between the extremes because it is defined for any number of
    objectives and any front (the extremes of 3+ objectives need not span a hyperplane), and on
    a convex 2-objective front it lands on the same elbow. Ties go to the first point of
    ``front``; an objective constant over the front is ignored.

    :returns: an index of ``points`` (one of ``front``).
    """
    import numpy as np

    front = list(front)
    if not front:
        raise ValueError("knee_point needs a non-empty front")
    p = oriented(points, modes)[front]
    if not np.isfinite(p).all():
        raise ValueError("knee_point: the front has rows with missing values")
    low, high = p.min(axis=0), p.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    normalized = np.where(high > low, (p - low) / span, 1.0)
    gaps = np.linalg.norm(1.0 - normalized, axis=1)
    return front[int(np.argmin(gaps))]


def _width(points: Any) -> int:
    import numpy as np

    array = np.asarray(points, dtype=float)
    return 1 if array.ndim == 1 else array.shape[1]


__all__ = ["MODES", "crowding_distance", "dominance", "knee_point", "non_dominated_sort", "oriented",
           "pareto_mask", "valid_rows"]
