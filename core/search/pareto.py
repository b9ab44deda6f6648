"""Pareto fronts of candidates scored on several objectives, each maximized or minimized.

::

    points = [[0.93, 40.1, 12.0], [0.91, 11.2, 4.1], [0.90, 12.0, 5.0], [None, None, None]]
    modes = ["max", "min", "min"]              # accuracy up, size and latency down
    non_dominated_sort(points, modes)          # [[0, 1], [2]]: row 3 (failed) is in no front
    pareto_mask(points, modes)                 # [True, True, False, False]
    crowding_distance(points, [0, 1])          # [inf, inf]: both are boundary points
    knee_point(points, modes, [0, 1])          # the front's best compromise (an index of points)
    beaten_within(points, modes, [0, 1], [0.02, 0, 0])  # [True, False]: 0.91 is within 0.02 of 0.93,
                                                        # and smaller and faster

A point *dominates* another when it is at least as good on every objective and better on one.
Equal points (duplicates, ties) do not dominate each other: they share a front.

A measured accuracy is noisy (one standard error on 2,000 rows is about a point), so
``beaten_within`` says which front points another beats *within noise*: within the tolerance on
the noisy objectives, at least as good on every other and better on one. The knee can be chosen
among the points not so beaten (``knee_point(..., among=...)``).

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


def beaten_within(points: Any, modes: Sequence[str], front: Sequence[int], tolerances: Sequence[float]) -> np.ndarray:
    """Per point of ``front`` (same order): another front point beats it within noise.

    ``tolerances``, one per objective in its own unit (0 = exact): q beats p when q is within
    the tolerance of p on every objective with one (may be a little worse there), at least as good
    on every other objective, and better on one of those. The selection's rule, as a relation: two
    accuracies within the tolerance are equally good, so the smaller or faster wins. With no
    tolerance at all it is plain dominance, and no front point is beaten. Always some point of a
    non-empty front is not beaten: "better on an exact objective" orders points strictly.
    """
    import numpy as np

    p = oriented(points, modes)[list(front)]
    tol = np.asarray(tolerances, dtype=float)
    if tol.shape != (p.shape[1],) or (tol < 0).any():
        raise ValueError(f"one tolerance >= 0 per objective ({p.shape[1]}), got {list(tolerances)}")
    exact = tol == 0
    close = (p[:, None, :] >= p[None, :, :] - tol - 1e-12).all(-1)  # close[q, p]: q within reach of p
    better = (p[:, None, exact] > p[None, :, exact]).any(-1)
    return (close & better).any(axis=0)


def knee_point(points: Any, modes: Sequence[str], front: Sequence[int], among: Sequence[int] | None = None) -> int:
    """The front's knee: the point closest to the ideal point once objectives are normalized.

    Each objective is scaled to [0, 1] over the front, 1 being the best value on the front, so
    that fractions, megabytes and milliseconds weigh alike; the knee is the point with the
    smallest Euclidean distance to (1, ..., 1). We use the distance to the ideal point rather
    than the distance to the line between the extremes because it is defined for any number of
    objectives and any front (the extremes of 3+ objectives need not span a hyperplane), and on
    a convex 2-objective front it lands on the same elbow. Ties go to the first point of
    ``front``; an objective constant over the front is ignored. ``among``: choose only among
    these points of ``front`` (e.g. those no point beats within noise); the scale is still the
    whole front's, so leaving points out does not move the others.

    :returns: an index of ``points`` (one of ``among``, default ``front``).
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
    if among is not None:
        allowed = set(among)
        if not allowed or not allowed <= set(front):
            raise ValueError("knee_point: among must be a non-empty subset of front")
        gaps = np.where([i in allowed for i in front], gaps, np.inf)
    return front[int(np.argmin(gaps))]


def _width(points: Any) -> int:
    import numpy as np

    array = np.asarray(points, dtype=float)
    return 1 if array.ndim == 1 else array.shape[1]


__all__ = ["MODES", "beaten_within", "crowding_distance", "dominance", "knee_point", "non_dominated_sort", "oriented",
           "pareto_mask", "valid_rows"]
