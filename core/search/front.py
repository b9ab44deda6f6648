"""The Pareto front of a search's results: the results table read, the noise tolerance, the front
marked, and its table.

::

    run = resolve_run("examples/thucnews.yaml")     # or "artifacts/thucnews", a run directory
    df = mark_front(load_results(run), run.objectives)   # + on_front, front_rank, crowding, knee
    console.print(format_front(df))                  # the front; all_rows=True: every candidate

The results table, ``<store>/<run name>/results.parquet``, is written by the search: one row per
candidate (:data:`RESULT_COLUMNS`). Only rows with status "ok" and every objective measured are
ranked, plotted or selected; failed rows stay in the table (``alambic front --all``) and nowhere else.
A candidate whose runtime cannot run here (Core ML: ``latency_note``) has no latency: it is ranked
among its kind on the other objectives, and its latency is shown as not measured, never as a figure.

Every choice (objectives, front, knee, selection limits, the accuracy tolerance) is made on the
validation split: ``val_accuracy``, ``val_macro_f1``. ``test_accuracy`` and ``test_macro_f1`` are
measured once per candidate and only reported, beside the validation figures, so that the test
split stays an unbiased estimate of the shipped model.

The knee follows the selection's rule (alambic.search.select): validation accuracies within a
tolerance count as equal (default one standard error, about a point on 2,000 rows: the last digit
is noise); among those equally accurate, the smaller, then the faster wins. The plot
(alambic.search.plot) draws the standard error. pandas and numpy are imported inside the
functions: ``import alambic.search.front`` is light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from alambic.config import SelectConfig
from alambic.errors import AlambicError
from alambic.run import RunContext
from alambic.search.pareto import beaten_within, crowding_distance, knee_point, non_dominated_sort
from alambic.store import Store

if TYPE_CHECKING:
    import pandas as pd

    from alambic.config import RunConfig
    from alambic.registry import Registry

RESULTS = "results.parquet"
RESULT_COLUMNS = ("candidate_id", "trial_id", "student", "settings", "pruning", "quantization", "val_accuracy",
                  "val_macro_f1", "test_accuracy", "test_macro_f1", "val_examples", "test_examples",
                  "student_val_accuracy", "student_test_accuracy", "size_mb", "latency_p50_ms", "latency_p90_ms",
                  "peak_mem_mb", "model_mem_mb", "params", "runtime", "latency_threads", "latency_machine",
                  "latency_note", "status", "error", "distill_key", "compress_key", "stage", "artifact", "on_front")
REQUIRED = ("candidate_id", "status")  # the rest is checked where it is used
#: the accuracy every choice is made on (the shipped artifact on the validation split)
ACCURACY = "val_accuracy"
METRICS = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "student_val_accuracy",
           "student_test_accuracy", "size_mb", "latency_p50_ms", "latency_p90_ms", "peak_mem_mb", "model_mem_mb",
           "executorch_p50_ms", "executorch_p90_ms")
COUNTS = ("params", "val_examples", "test_examples")  # integers, null for failed rows
#: the objectives a runtime that cannot run here leaves empty (alambic.compress.latency.UNTIMED)
TIMED = ("latency_p50_ms", "latency_p90_ms", "peak_mem_mb", "model_mem_mb", "executorch_p50_ms", "executorch_p90_ms")
#: search.objectives' default (config.SearchConfig): used when RUN is not a config
DEFAULT_OBJECTIVES = (("val_accuracy", "max"), ("size_mb", "min"), ("latency_p50_ms", "min"))
Objectives = Sequence[Any]  # (metric, mode) pairs or config.Objective


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A run directory (a Store: local or remote) and, when RUN named one, its config."""

    store: Store
    config: RunConfig | None = None
    registry: Registry | None = None

    @property
    def objectives(self) -> list[tuple[str, str]]:
        search = self.config.search if self.config is not None else None
        return objective_pairs(search.objectives) if search is not None else list(DEFAULT_OBJECTIVES)

    @property
    def select(self) -> SelectConfig:
        return self.config.select if self.config is not None else SelectConfig(policy="tier", tier="high")


def resolve_run(arg: str | os.PathLike[str]) -> Run:
    """RUN as the user gives it: a run config (YAML: its store and name), a run directory holding
    results.parquet, that file itself, or a store URI of a run directory (s3://...)."""
    text = os.fspath(arg)
    expected = f"expected a run config (YAML) or a run directory <store>/<run name>/ holding {RESULTS}"
    if "://" in text:
        return Run(Store.open(text))
    path = Path(text)
    if path.is_dir():
        if not (path / RESULTS).is_file():
            raise AlambicError(f"{path}: no {RESULTS} in this directory; {expected} (the search writes it)")
        return Run(Store.open(path))
    if path.is_file() and path.name == RESULTS:
        return Run(Store.open(path.parent))
    if path.is_file():
        ctx = RunContext.open(path, quiet=True)
        return Run(ctx.store, ctx.config, ctx.registry)
    raise AlambicError(f"{path}: no such file or directory; {expected}")


def run_store(run: Run | Store | str | os.PathLike[str]) -> Store:
    if isinstance(run, Run):
        return run.store
    return run if isinstance(run, Store) else Store.open(run)


def load_results(run: Run | Store | str | os.PathLike[str]) -> pd.DataFrame:
    """The results table as a DataFrame; metric columns are floats (NaN where not measured), params
    a nullable integer."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = run_store(run)
    where = f"{store.uri}/{RESULTS}"
    if not store.exists(RESULTS):
        raise AlambicError(f"{where}: no results table; the search writes it when it finishes")
    try:
        table = pq.read_table(pa.BufferReader(store.read_bytes(RESULTS)))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise AlambicError(f"{where}: not a readable Parquet table ({exc})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise AlambicError(f"{where}: missing column(s) {', '.join(missing)}; a results table has "
                           f"{', '.join(RESULT_COLUMNS)}")
    if ACCURACY not in table.column_names:
        old = " (its `accuracy` is the test split's, which must not choose)" if "accuracy" in table.column_names else ""
        raise AlambicError(f"{where}: no {ACCURACY} column{old}; choices are made on the validation split and "
                           "test accuracy is only reported: re-run the search (alambic search RUN) to write "
                           "val_accuracy and test_accuracy")
    df = table.to_pandas()
    for column in METRICS:
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    for column in COUNTS:  # null for failed rows: a nullable integer, so a JSON row keeps an int
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").round().astype("Int64")
    return df


def objective_pairs(objectives: Objectives) -> list[tuple[str, str]]:
    """``[("val_accuracy", "max"), ...]`` from pairs or config Objectives."""
    pairs = [(o.metric, o.mode) if hasattr(o, "metric") else (str(o[0]), str(o[1])) for o in objectives]
    if not pairs:
        raise AlambicError("no objectives: the front needs at least one (metric, max|min)")
    return pairs


def need_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = sorted({c for c in columns if c not in df})
    if missing:
        raise AlambicError(f"the results table has no column {', '.join(missing)} (needed by {what}); "
                           f"its columns: {', '.join(map(str, df.columns))}")


def float_columns(df: pd.DataFrame, columns: Sequence[str]) -> Any:
    import numpy as np
    import pandas as pd

    return df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


# --- noise -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """Two validation accuracies at most ``points`` apart (percentage points) count as equal."""

    points: float
    basis: str  # why this much: "one standard error on 2,000 validation rows", "accuracy_tolerance"

    def equal(self, best: float, other: float) -> bool:
        return (best - other) * 100 <= self.points + 1e-9  # 1e-9: 0.4090 - 0.4070 is 0.1999... points

    def text(self) -> str:
        return f"the tolerance of {self.points:.2f} pt ({self.basis})"

    def to_dict(self) -> dict[str, Any]:
        return {"points": self.points, "basis": self.basis}


def standard_error(accuracy: float, examples: float) -> float:
    """One standard error of an accuracy measured on ``examples`` rows (a fraction, binomial)."""
    return math.sqrt(accuracy * (1 - accuracy) / examples)


def accuracy_tolerance(setting: float | None, row: Mapping[str, Any] | None) -> Tolerance:
    """The tolerance ``setting`` asks for: points as given (0: exact ranking), or for None one
    standard error of ``row``'s validation accuracy on its ``val_examples`` rows (exact ranking,
    said so, when the table does not have them)."""
    if setting is not None:
        return Tolerance(float(setting), "accuracy_tolerance" if setting else "accuracy_tolerance 0: exact ranking")
    accuracy, examples = (_float(row.get(key)) if row is not None else math.nan for key in (ACCURACY, "val_examples"))
    if not (examples >= 1 and 0 <= accuracy <= 1):  # NaN fails both
        return Tolerance(0.0, "exact ranking: no val_examples to take a standard error from (re-run the search)")
    return Tolerance(100 * standard_error(accuracy, examples), f"one standard error on {int(examples):,} validation rows")


def _float(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):  # pandas' <NA>
        return math.nan


def standard_errors(df: pd.DataFrame) -> Any:
    """Per row, one standard error of val_accuracy (a fraction); NaN where not measured."""
    import numpy as np

    if ACCURACY not in df or "val_examples" not in df:
        return np.full(len(df), np.nan)
    accuracy, examples = float_columns(df, [ACCURACY, "val_examples"]).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(examples >= 1, np.sqrt(accuracy * (1 - accuracy) / examples), np.nan)


# --- the front ------------------------------------------------------------------------------


def mark_front(df: pd.DataFrame, objectives: Objectives = DEFAULT_OBJECTIVES,
               accuracy_tolerance: float | None = None) -> pd.DataFrame:
    """A copy of ``df`` with ``on_front``, ``front_rank`` (0 = the front, <NA> when not ranked),
    ``crowding`` (NSGA-II distance within its front), ``knee`` (the front's knee point) and
    ``val_accuracy_se`` (one standard error of val_accuracy, a fraction).

    Only rows with status "ok" and every objective measured are ranked. The front itself is exact;
    the knee is not chosen by the last digit: it is the front point nearest the ideal among those
    that no other front point beats within noise (val_accuracy within the tolerance, no worse on
    every other objective, better on one), so a point that :func:`alambic.search.select.select` would pass over for a
    smaller, equally accurate one is never the knee. ``accuracy_tolerance``: points, or None for
    one standard error of the front's most accurate point (``attrs["accuracy_tolerance"]``).
    """
    import numpy as np
    import pandas as pd

    pairs = objective_pairs(objectives)
    need_columns(df, ["status", *(m for m, _ in pairs)], "the objectives")
    out = df.copy()
    rank = [None] * len(out)
    crowding = np.full(len(out), np.nan)
    knee = np.zeros(len(out), dtype=bool)
    tolerance = None
    for rows, columns in ranked_groups(out, pairs):
        points = float_columns(out, [pairs[j][0] for j in columns])[rows]
        modes = [pairs[j][1] for j in columns]
        fronts = non_dominated_sort(points, modes)
        for r, front in enumerate(fronts):
            for i in rows[front]:
                rank[i] = r
            crowding[rows[front]] = crowding_distance(points, front)
        if tolerance is not None or not fronts:
            continue  # the knee is the first group's with a front: the timed candidates when there are any
        tolerance = _front_tolerance(out, rows[fronts[0]], accuracy_tolerance)
        noise = [tolerance.points / 100 if pairs[j][0] == ACCURACY else 0.0 for j in columns]
        beaten = beaten_within(points, modes, fronts[0], noise)
        among = [i for i, out_of_it in zip(fronts[0], beaten) if not out_of_it]
        knee[rows[knee_point(points, modes, fronts[0], among)]] = True
    tolerance = tolerance or _front_tolerance(out, [], accuracy_tolerance)
    out["front_rank"] = pd.array(rank, dtype="Int64")
    out["on_front"] = (out["front_rank"] == 0).fillna(False).astype(bool)
    out["crowding"] = crowding
    out["knee"] = knee
    out["val_accuracy_se"] = standard_errors(out)
    out.attrs["objectives"] = pairs  # format_front and plot_front name them
    out.attrs["accuracy_tolerance"] = tolerance  # and say how the knee treated noise
    return out


def ranked_groups(df: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> list[tuple[Any, list[int]]]:
    """The rows ranked together, and the objectives (indices of ``pairs``) they are ranked on: the ok
    rows on every objective; then, when latency or memory is an objective, the ok rows whose runtime
    cannot run here (``latency_note``: Core ML) on the others, among themselves: an unmeasured
    latency is neither better nor worse than a measured one."""
    import numpy as np

    ok = (df["status"] == "ok").to_numpy()
    notes = df["latency_note"] if "latency_note" in df else None
    untimed = ok & (notes.fillna("").astype(str).str.len() > 0).to_numpy() if notes is not None else ok & False
    measured = [j for j, (metric, _) in enumerate(pairs) if metric not in TIMED]  # what an untimed row has
    if len(measured) == len(pairs) or not untimed.any():
        return [(np.flatnonzero(ok), list(range(len(pairs))))]
    return [(np.flatnonzero(ok & ~untimed), list(range(len(pairs)))), (np.flatnonzero(untimed), measured)]


def _front_tolerance(df: pd.DataFrame, front: Any, setting: float | None) -> Tolerance:
    """The knee's tolerance: ``setting``, or one standard error of the front's most accurate row."""
    import numpy as np

    front = np.asarray(front, dtype=int)
    accuracy = float_columns(df, [ACCURACY])[front, 0] if ACCURACY in df and len(front) else np.array([])
    measured = np.isfinite(accuracy)
    top = dict(df.iloc[front[measured][np.argmax(accuracy[measured])]]) if measured.any() else None
    return accuracy_tolerance(setting, top)


def marked(df: pd.DataFrame, objectives: Objectives | None) -> pd.DataFrame:
    """``df`` as marked (keeping the tolerance it was marked with), or marked over ``objectives``."""
    same = objectives is None or objective_pairs(objectives) == df.attrs.get("objectives")
    if "front_rank" in df and same:
        return df
    return mark_front(df, objectives or DEFAULT_OBJECTIVES)


def objectives_text(df: pd.DataFrame) -> str:
    return ", ".join(f"{m} ({mode})" for m, mode in df.attrs.get("objectives", DEFAULT_OBJECTIVES))


def tolerance_of(df: pd.DataFrame) -> Tolerance:
    return df.attrs.get("accuracy_tolerance") or accuracy_tolerance(0.0, None)


def front_tolerance(df: pd.DataFrame) -> dict[str, Any]:
    """How the knee of a marked table treated noise: ``{"points": ..., "basis": ...}``."""
    return tolerance_of(marked(df, None)).to_dict()


def front_rows(df: pd.DataFrame, all_rows: bool = False) -> list[dict[str, Any]]:
    """The front's rows (every row with ``all_rows``) as JSON-ready dicts, smallest first."""
    df = _sorted(marked(df, None), all_rows)
    return [json_row(row) for _, row in df.iterrows()]


def _sorted(df: pd.DataFrame, all_rows: bool) -> pd.DataFrame:
    shown = df if all_rows else df[df["on_front"]]
    keys = [k for k in ("front_rank", "size_mb", "candidate_id") if k in shown]
    return shown.sort_values(keys, na_position="last", kind="stable")


def json_row(row: Any) -> dict[str, Any]:
    """A row as plain JSON values: NaN and <NA> become null, numpy scalars Python ones."""
    import pandas as pd

    out = {}
    for key, value in dict(row).items():
        if hasattr(value, "item") and not isinstance(value, (list, dict)):
            value = value.item()
        if pd.api.types.is_scalar(value) and pd.isna(value):
            value = None
        elif isinstance(value, float) and math.isinf(value):
            value = "inf"  # crowding of boundary points; JSON has no infinity
        out[str(key)] = value
    return out


def format_front(df: pd.DataFrame, all_rows: bool = False, title: str | None = None) -> Table:
    """A rich table of the front (``all_rows``: every candidate, with status and error), smallest first."""
    df = marked(df, None)
    shown = _sorted(df, all_rows)
    ok = int((df["status"] == "ok").sum())
    table = Table(title=title or f"Pareto front: {int(df['on_front'].sum())} of {ok} measured candidates "
                  f"({len(df) - ok} failed)", caption=_caption(df))
    # validation (what chooses) and test (what is reported) side by side, never one "accuracy"
    columns = [("", "candidate_id"), ("candidate", "candidate_id"), ("student", "student"),
               ("pruning", "pruning"), ("quant", "quantization"), ("runtime", "runtime"),
               ("val acc", "val_accuracy"), ("±1 SE pt", "val_accuracy_se"), ("val F1", "val_macro_f1"),
               ("test acc (reported only)", "test_accuracy"), ("test F1", "test_macro_f1"),
               ("size MB", "size_mb"), ("p50 ms", "latency_p50_ms"), ("p90 ms", "latency_p90_ms"),
               ("peak MB", "peak_mem_mb"), ("rank", "front_rank"), ("crowding", "crowding")]
    columns += [("status", "status"), ("error", "error")] if all_rows else []
    for header, _ in columns:
        table.add_column(header, justify="right" if header.endswith(("MB", "ms")) else "left")
    for _, row in shown.iterrows():
        cells = ["*" if row["knee"] else ""]
        cells += [escape("not measured" if key in TIMED and _untimed(row) else format_cell(row.get(key), key))
                  for _, key in columns[1:]]
        table.add_row(*cells, style=None if row["status"] == "ok" else "dim")
    return table


def _untimed(row: Mapping[str, Any]) -> bool:
    note = row.get("latency_note")
    return isinstance(note, str) and bool(note)


def _caption(df: pd.DataFrame) -> str:
    threads = sorted({str(int(t)) for t in df.get("latency_threads", []) if t is not None and t == t})
    machines = sorted({str(m) for m in df.get("latency_machine", []) if isinstance(m, str) and m})
    return (f"front over {objectives_text(df)}; * = knee, where val accuracies within "
            f"{tolerance_of(df).text()} count as equal. Choices (front, knee, select) are made on the "
            "validation split; test accuracy is measured once per candidate and only reported. ±1 SE: one "
            "standard error of val acc, in points. Latency: batch 1, "
            f"{'/'.join(threads) or '?'} thread(s), measured on {', '.join(machines) or 'this machine'}; "
            "peak memory: a fresh process running the artifact once" + _untimed_caption(df))


def _untimed_caption(df: pd.DataFrame) -> str:
    notes = sorted({str(n) for n in df.get("latency_note", []) if isinstance(n, str) and n})
    return (f". Latency {'; '.join(notes)}; those candidates are ranked among themselves on the other objectives"
            if notes else "")


def format_cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "<NA>":
        return "-"
    if key == "val_accuracy_se":
        return f"±{100 * value:.2f}"
    if key.endswith(("accuracy", "macro_f1")):
        return f"{value:.4f}"
    if key == "crowding":
        return "inf" if math.isinf(value) else f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["ACCURACY", "DEFAULT_OBJECTIVES", "RESULTS", "RESULT_COLUMNS", "Run", "Tolerance", "accuracy_tolerance",
           "float_columns", "format_cell", "format_front", "front_rows", "front_tolerance", "json_row",
           "load_results", "mark_front", "marked", "need_columns", "objective_pairs", "objectives_text",
           "resolve_run", "run_store", "standard_error", "standard_errors", "tolerance_of"]
