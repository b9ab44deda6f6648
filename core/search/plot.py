"""The front's plot: validation accuracy (± one standard error) against size, coloured by latency (Core ML
candidates, whose latency is not measured here, as hollow diamonds).

matplotlib and numpy are imported inside the functions: ``import alambic.search.plot`` is light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.errors import AlambicError
from alambic.search.front import (
    ACCURACY,
    Objectives,
    float_columns,
    marked,
    need_columns,
    objectives_text,
    standard_errors,
    tolerance_of,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def plot_front(df: pd.DataFrame, path: str | os.PathLike[str], objectives: Objectives | None = None) -> Path:
    """Write :func:`front_figure` to ``path`` (PNG)."""
    fig = front_figure(df, objectives)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def front_figure(df: pd.DataFrame, objectives: Objectives | None = None) -> Figure:
    """Validation accuracy (y, ± one standard error) against size (x), coloured by latency p50, the
    front joined and highlighted, the knee named; test accuracy drawn beside as reported only.
    Failed candidates are not drawn."""
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas draws it
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    df = marked(df, objectives)
    need_columns(df, [ACCURACY, "size_mb", "latency_p50_ms"], "the plot")
    values = float_columns(df, ["size_mb", ACCURACY, "latency_p50_ms"])
    errors = np.nan_to_num(standard_errors(df), nan=0.0)
    tested = float_columns(df, ["test_accuracy"])[:, 0] if "test_accuracy" in df else np.full(len(df), np.nan)
    drawn = (df["status"] == "ok").to_numpy() & np.isfinite(values[:, :2]).all(axis=1)
    if not drawn.any():
        raise AlambicError("nothing to plot: no candidate with status ok and a measured accuracy and size")
    latency = values[:, 2]
    finite = drawn & np.isfinite(latency)
    norm = Normalize(*(np.min(latency[finite]), np.max(latency[finite])) if finite.any() else (0, 1))
    untimed = drawn & _untimed(df)  # Core ML: no latency to colour by; their own front
    front = drawn & df["on_front"].to_numpy()
    order = np.flatnonzero(front & ~untimed)[np.argsort(values[front & ~untimed, 0], kind="stable")]

    fig = Figure(figsize=(8, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(values[drawn, 0], values[drawn, 1], yerr=errors[drawn], fmt="none", ecolor="gray", elinewidth=0.8,
                capsize=2, alpha=0.6, zorder=1, label="± 1 standard error (validation)")
    reported = drawn & np.isfinite(tested)
    if reported.any():  # beside, not instead: the test split is never used to choose
        ax.scatter(values[reported, 0], tested[reported], marker="x", color="dimgray", s=18, linewidths=0.8,
                   zorder=2, label="test accuracy (reported only, not used to choose)")
    rest = drawn & ~front & ~untimed
    ax.scatter(values[rest, 0], values[rest, 1], c=latency[rest], cmap="viridis", norm=norm, s=30, alpha=0.7,
               label="candidate" if rest.any() else None)
    ax.plot(values[order, 0], values[order, 1], color="crimson", lw=1.2, zorder=2)
    ax.scatter(values[order, 0], values[order, 1], c=latency[order], cmap="viridis", norm=norm, s=90,
               edgecolors="crimson", linewidths=1.8, zorder=3, label="Pareto front")
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="latency p50 (ms, CPU, batch 1)")
    if untimed.any():
        _draw_untimed(ax, values, untimed, front)
    for i in np.flatnonzero(df["knee"].to_numpy() & drawn):
        size, accuracy, ms = values[i]
        test = f", test {tested[i]:.2%}" if np.isfinite(tested[i]) else ""
        speed = f"{ms:,.1f} ms" if np.isfinite(ms) else "latency not measured here"
        ax.annotate(f"knee: {df['candidate_id'].iloc[i]}\nval {accuracy:.2%} ± {100 * errors[i]:.2f} pt{test}\n"
                    f"{size:,.1f} MB, {speed}",
                    xy=(size, accuracy), xytext=(25, -40), textcoords="offset points", fontsize=9,
                    arrowprops={"arrowstyle": "->", "color": "black"},
                    bbox={"boxstyle": "round", "fc": "white", "alpha": 0.9})
    sizes = values[drawn, 0]
    if sizes.min() > 0 and sizes.max() / sizes.min() > 20:  # a teacher-sized model beside int8 students
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("size (MB shipped)")
    ax.set_ylabel("validation accuracy, ± 1 standard error")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    tolerance = tolerance_of(df)
    ax.set_title(f"{int(drawn.sum())} candidates, {int(front.sum())} on the front ({len(df) - int(drawn.sum())} "
                 f"failed or unmeasured: not drawn)\nfront over {objectives_text(df)}, chosen on validation\n"
                 f"knee: val accuracies within {tolerance.points:.2f} pt ({tolerance.basis}) count as equal",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _untimed(df: pd.DataFrame) -> Any:
    """Rows whose runtime cannot run here (``latency_note``): no latency, never a colour for one."""
    import numpy as np

    if "latency_note" not in df:
        return np.zeros(len(df), dtype=bool)
    return (df["latency_note"].fillna("").astype(str).str.len() > 0).to_numpy()


def _draw_untimed(ax: Any, values: Any, untimed: Any, front: Any) -> None:
    """Hollow diamonds, their own front dashed: ranked on accuracy and size only."""
    import numpy as np

    ax.scatter(values[untimed, 0], values[untimed, 1], marker="D", facecolors="none", edgecolors="darkorange",
               s=50, linewidths=1.5, zorder=3, label="Core ML: latency not measured here")
    own = np.flatnonzero(untimed & front)
    own = own[np.argsort(values[own, 0], kind="stable")]
    ax.plot(values[own, 0], values[own, 1], color="darkorange", lw=1.0, ls="--", zorder=2,
            label="their front (accuracy, size)")


__all__ = ["front_figure", "plot_front"]
