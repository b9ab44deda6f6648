"""The Pareto front of a search's results, its plot, and the choice of one candidate to ship.

::

    run = resolve_run("examples/thucnews.yaml")     # or "artifacts/thucnews", a run directory
    df = mark_front(load_results(run), run.objectives)   # + on_front, front_rank, crowding, knee
    console.print(format_front(df))                  # the front; all_rows=True: every candidate
    plot_front(df, "front.png", run.objectives)
    selection = select(df, run.select)               # the config's select section, or a policy
    selection.require()                              # NothingQualifies (the 3 nearest) if none fits
    write_selected(run, selection)                   # <run dir>/selected.json, atomically

The results table, ``<store>/<run name>/results.parquet``, is written by the search: one row per
candidate (:data:`RESULT_COLUMNS`). Only rows with status "ok" and every objective measured are
ranked, plotted or selected; failed rows stay in the table (``alambic front --all``) and nowhere else.

Every choice (objectives, front, knee, selection limits, the accuracy tolerance) is made on the
validation split: ``val_accuracy``, ``val_macro_f1``. ``test_accuracy`` and ``test_macro_f1`` are
measured once per candidate and only reported, beside the validation figures, so that the test
split stays an unbiased estimate of the shipped model.

A selection policy (plugin kind ``selection_policies``, e.g. ``tier``) states the limits a
candidate must meet (:class:`Limit`); :func:`select` picks, among the candidates meeting them
all, the most accurate on validation, where accuracies within a tolerance count as equal (default
one standard error, about a point on 2,000 rows: the last digit is noise); among those equally
accurate, the smaller, then the faster wins. The knee follows the same rule (:func:`mark_front`)
and the plot draws the standard error. pandas, numpy and matplotlib are imported inside the
functions: ``import alambic.search.front`` is light.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from alambic.errors import AlambicError, ConfigError
from alambic.store import Store

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from rich.console import Group
    from rich.table import Table

    from alambic.config import RunConfig, SelectConfig
    from alambic.registry import Registry

RESULTS = "results.parquet"
SELECTED = "selected.json"
RESULT_COLUMNS = ("candidate_id", "trial_id", "student", "settings", "pruning", "quantization", "val_accuracy",
                  "val_macro_f1", "test_accuracy", "test_macro_f1", "val_examples", "test_examples",
                  "student_val_accuracy", "student_test_accuracy", "size_mb", "latency_p50_ms", "latency_p90_ms",
                  "peak_mem_mb", "model_mem_mb", "params", "runtime", "latency_threads", "latency_machine", "status",
                  "error", "distill_key", "compress_key", "stage", "artifact", "on_front")
REQUIRED = ("candidate_id", "status")  # the rest is checked where it is used
#: the accuracy every choice is made on (the shipped artifact on the validation split)
ACCURACY = "val_accuracy"
METRICS = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "student_val_accuracy",
           "student_test_accuracy", "size_mb", "latency_p50_ms", "latency_p90_ms", "peak_mem_mb", "model_mem_mb")
COUNTS = ("params", "val_examples", "test_examples")  # integers, null for failed rows
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
        from alambic.config import SelectConfig

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
        from alambic.run import RunContext

        ctx = RunContext.open(path, quiet=True)
        return Run(ctx.store, ctx.config, ctx.registry)
    raise AlambicError(f"{path}: no such file or directory; {expected}")


def _store(run: Run | Store | str | os.PathLike[str]) -> Store:
    if isinstance(run, Run):
        return run.store
    return run if isinstance(run, Store) else Store.open(run)


def load_results(run: Run | Store | str | os.PathLike[str]) -> pd.DataFrame:
    """The results table as a DataFrame; metric columns are floats (NaN where not measured), params
    a nullable integer."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = _store(run)
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


def _need(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = sorted({c for c in columns if c not in df})
    if missing:
        raise AlambicError(f"the results table has no column {', '.join(missing)} (needed by {what}); "
                           f"its columns: {', '.join(map(str, df.columns))}")


def _numbers(df: pd.DataFrame, columns: Sequence[str]) -> Any:
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


def _standard_errors(df: pd.DataFrame) -> Any:
    """Per row, one standard error of val_accuracy (a fraction); NaN where not measured."""
    import numpy as np

    if ACCURACY not in df or "val_examples" not in df:
        return np.full(len(df), np.nan)
    accuracy, examples = _numbers(df, [ACCURACY, "val_examples"]).T
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
    every other objective, better on one), so a point that :func:`select` would pass over for a
    smaller, equally accurate one is never the knee. ``accuracy_tolerance``: points, or None for
    one standard error of the front's most accurate point (``attrs["accuracy_tolerance"]``).
    """
    import numpy as np
    import pandas as pd

    from alambic.search.pareto import beaten_within, crowding_distance, knee_point, non_dominated_sort

    pairs = objective_pairs(objectives)
    _need(df, ["status", *(m for m, _ in pairs)], "the objectives")
    out = df.copy()
    ok = np.flatnonzero((out["status"] == "ok").to_numpy())
    points = _numbers(out, [m for m, _ in pairs])[ok]
    modes = [mode for _, mode in pairs]
    rank = [None] * len(out)
    crowding = np.full(len(out), np.nan)
    knee = np.zeros(len(out), dtype=bool)
    fronts = non_dominated_sort(points, modes)
    for r, front in enumerate(fronts):
        for i in ok[front]:
            rank[i] = r
        crowding[ok[front]] = crowding_distance(points, front)
    tolerance = _front_tolerance(out, ok[fronts[0]] if fronts else [], accuracy_tolerance)
    if fronts:
        noise = [tolerance.points / 100 if metric == ACCURACY else 0.0 for metric, _ in pairs]
        beaten = beaten_within(points, modes, fronts[0], noise)
        among = [i for i, out_of_it in zip(fronts[0], beaten) if not out_of_it]
        knee[ok[knee_point(points, modes, fronts[0], among)]] = True
    out["front_rank"] = pd.array(rank, dtype="Int64")
    out["on_front"] = (out["front_rank"] == 0).fillna(False).astype(bool)
    out["crowding"] = crowding
    out["knee"] = knee
    out["val_accuracy_se"] = _standard_errors(out)
    out.attrs["objectives"] = pairs  # format_front and plot_front name them
    out.attrs["accuracy_tolerance"] = tolerance  # and say how the knee treated noise
    return out


def _front_tolerance(df: pd.DataFrame, front: Any, setting: float | None) -> Tolerance:
    """The knee's tolerance: ``setting``, or one standard error of the front's most accurate row."""
    import numpy as np

    front = np.asarray(front, dtype=int)
    accuracy = _numbers(df, [ACCURACY])[front, 0] if ACCURACY in df and len(front) else np.array([])
    measured = np.isfinite(accuracy)
    top = dict(df.iloc[front[measured][np.argmax(accuracy[measured])]]) if measured.any() else None
    return accuracy_tolerance(setting, top)


def _marked(df: pd.DataFrame, objectives: Objectives | None) -> pd.DataFrame:
    """``df`` as marked (keeping the tolerance it was marked with), or marked over ``objectives``."""
    same = objectives is None or objective_pairs(objectives) == df.attrs.get("objectives")
    if "front_rank" in df and same:
        return df
    return mark_front(df, objectives or DEFAULT_OBJECTIVES)


def _objectives_text(df: pd.DataFrame) -> str:
    return ", ".join(f"{m} ({mode})" for m, mode in df.attrs.get("objectives", DEFAULT_OBJECTIVES))


def _tolerance_of(df: pd.DataFrame) -> Tolerance:
    return df.attrs.get("accuracy_tolerance") or accuracy_tolerance(0.0, None)


def front_tolerance(df: pd.DataFrame) -> dict[str, Any]:
    """How the knee of a marked table treated noise: ``{"points": ..., "basis": ...}``."""
    return _tolerance_of(_marked(df, None)).to_dict()


def front_rows(df: pd.DataFrame, all_rows: bool = False) -> list[dict[str, Any]]:
    """The front's rows (every row with ``all_rows``) as JSON-ready dicts, smallest first."""
    df = _sorted(_marked(df, None), all_rows)
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
    from rich.markup import escape
    from rich.table import Table

    df = _marked(df, None)
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
        cells += [escape(_cell(row.get(key), key)) for _, key in columns[1:]]
        table.add_row(*cells, style=None if row["status"] == "ok" else "dim")
    return table


def _caption(df: pd.DataFrame) -> str:
    threads = sorted({str(int(t)) for t in df.get("latency_threads", []) if t is not None and t == t})
    machines = sorted({str(m) for m in df.get("latency_machine", []) if isinstance(m, str) and m})
    return (f"front over {_objectives_text(df)}; * = knee, where val accuracies within "
            f"{_tolerance_of(df).text()} count as equal. Choices (front, knee, select) are made on the "
            "validation split; test accuracy is measured once per candidate and only reported. ±1 SE: one "
            "standard error of val acc, in points. Latency: batch 1, "
            f"{'/'.join(threads) or '?'} thread(s), measured on {', '.join(machines) or 'this machine'}; "
            "peak memory: a fresh process running the artifact once")


def _cell(value: Any, key: str) -> str:
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

    df = _marked(df, objectives)
    _need(df, [ACCURACY, "size_mb", "latency_p50_ms"], "the plot")
    values = _numbers(df, ["size_mb", ACCURACY, "latency_p50_ms"])
    errors = np.nan_to_num(_standard_errors(df), nan=0.0)
    tested = _numbers(df, ["test_accuracy"])[:, 0] if "test_accuracy" in df else np.full(len(df), np.nan)
    drawn = (df["status"] == "ok").to_numpy() & np.isfinite(values[:, :2]).all(axis=1)
    if not drawn.any():
        raise AlambicError("nothing to plot: no candidate with status ok and a measured accuracy and size")
    latency = values[:, 2]
    finite = drawn & np.isfinite(latency)
    norm = Normalize(*(np.min(latency[finite]), np.max(latency[finite])) if finite.any() else (0, 1))
    front = drawn & df["on_front"].to_numpy()
    order = np.flatnonzero(front)[np.argsort(values[front, 0], kind="stable")]

    fig = Figure(figsize=(8, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(values[drawn, 0], values[drawn, 1], yerr=errors[drawn], fmt="none", ecolor="gray", elinewidth=0.8,
                capsize=2, alpha=0.6, zorder=1, label="± 1 standard error (validation)")
    reported = drawn & np.isfinite(tested)
    if reported.any():  # beside, not instead: the test split is never used to choose
        ax.scatter(values[reported, 0], tested[reported], marker="x", color="dimgray", s=18, linewidths=0.8,
                   zorder=2, label="test accuracy (reported only, not used to choose)")
    rest = drawn & ~front
    ax.scatter(values[rest, 0], values[rest, 1], c=latency[rest], cmap="viridis", norm=norm, s=30, alpha=0.7,
               label="candidate" if rest.any() else None)
    ax.plot(values[order, 0], values[order, 1], color="crimson", lw=1.2, zorder=2)
    ax.scatter(values[order, 0], values[order, 1], c=latency[order], cmap="viridis", norm=norm, s=90,
               edgecolors="crimson", linewidths=1.8, zorder=3, label="Pareto front")
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="latency p50 (ms, CPU, batch 1)")
    for i in np.flatnonzero(df["knee"].to_numpy() & drawn):
        size, accuracy, ms = values[i]
        test = f", test {tested[i]:.2%}" if np.isfinite(tested[i]) else ""
        ax.annotate(f"knee: {df['candidate_id'].iloc[i]}\nval {accuracy:.2%} ± {100 * errors[i]:.2f} pt{test}\n"
                    f"{size:,.1f} MB, {ms:,.1f} ms",
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
    tolerance = _tolerance_of(df)
    ax.set_title(f"{int(drawn.sum())} candidates, {int(front.sum())} on the front ({len(df) - int(drawn.sum())} "
                 f"failed or unmeasured: not drawn)\nfront over {_objectives_text(df)}, chosen on validation\n"
                 f"knee: val accuracies within {tolerance.points:.2f} pt ({tolerance.basis}) count as equal",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# --- selection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """One requirement: ``row[metric] * factor`` must be ``op bound`` (e.g. phone latency < 100)."""

    metric: str  # a results column
    op: Literal["<", "<=", ">="]
    bound: float
    label: str  # how the output names it: "phone latency"
    unit: str = ""  # "ms", "MB"; "" for fractions
    factor: float = 1.0  # the column is scaled first (phone_latency_factor)

    def value(self, row: Mapping[str, Any]) -> float:
        raw = row.get(self.metric)
        number = float("nan") if raw is None else float(raw)
        return number * self.factor

    def miss(self, value: float) -> float:
        """0 when met; else by how much it misses, relative to the bound; inf when not measured."""
        if math.isnan(value):
            return math.inf
        gap = (value - self.bound) if self.op != ">=" else (self.bound - value)
        met = gap < 0 if self.op == "<" else gap <= 0
        return 0.0 if met else max(gap, 1e-12) / max(abs(self.bound), 1e-12)

    def rule(self) -> str:
        return f"{self.label} {self.op} {self._bound()}"

    def describe(self, row: Mapping[str, Any]) -> str:
        """"phone latency 84.2 ms < 100 ms" or "peak memory 220.0 MB, not <= 200 MB (10.0% over)"."""
        value = self.value(row)
        if math.isnan(value):
            return f"{self.label} not measured ({self.metric} is empty)"
        number = f"{value:.4f}" if not self.unit else f"{value:,.1f} {self.unit}"
        if self.factor != 1:
            number += f" (CPU {self.metric} {value / self.factor:,.1f} x {self.factor:g})"
        miss = self.miss(value)
        if not miss:
            return f"{self.label} {number} {self.op} {self._bound()}"
        side = "under" if self.op == ">=" else "over"
        return f"{self.label} {number}, not {self.op} {self._bound()} ({miss:.1%} {side})"

    def _bound(self) -> str:
        return f"{self.bound:,g} {self.unit}".rstrip()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SelectionPolicy:
    """Base of selection policies: the limits a candidate must meet to qualify.

    Which qualifying candidate wins is :func:`select`'s rule, the same for every policy: the most
    accurate on validation, where accuracies within ``accuracy_tolerance`` of the best count as
    equal; among those, the smaller, then the faster. Subclasses set ``id`` and implement
    ``from_config`` and ``limits``; a dataclass field ``accuracy_tolerance`` (points, None = one
    standard error, 0 = exact ranking) lets the select section's value through.
    """

    id: ClassVar[str] = ""
    accuracy_tolerance: float | None = None  # select's rule, not a limit: see select()

    @classmethod
    def from_config(cls, config: SelectConfig, **options: Any) -> SelectionPolicy:
        """The policy the run config's ``select`` section asks for; ``options``: extra settings
        (``phone_latency_factor``)."""
        raise NotImplementedError

    def limits(self) -> list[Limit]:
        raise NotImplementedError

    def summary(self) -> str:
        """One line: what a candidate must meet."""
        return f"policy '{self.id}': " + ", ".join(limit.rule() for limit in self.limits())

    def settings(self) -> dict[str, Any]:
        """What was asked, as JSON (selected.json's ``constraints``)."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def notes(self) -> list[str]:
        """Caveats to print with the choice (e.g. how phone latency is estimated)."""
        return []


@dataclass(frozen=True)
class Near:
    """A candidate that missed, and what it misses."""

    candidate_id: str
    miss: float  # the sum of its relative misses (inf: a limit's metric not measured)
    misses: tuple[str, ...]
    row: dict[str, Any]


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`: the chosen row and why, or the nearest misses."""

    policy: str
    summary: str
    constraints: dict[str, Any]
    limits: tuple[Limit, ...]
    row: dict[str, Any] | None  # the chosen candidate's full results row; None: nothing qualifies
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    considered: int = 0  # candidates with status ok
    qualifying: int = 0
    nearest: tuple[Near, ...] = ()
    objectives: tuple[tuple[str, str], ...] = DEFAULT_OBJECTIVES
    failed: int = 0
    tolerance: Tolerance | None = None  # how close two val accuracies count as equal (None: nothing qualified)

    @property
    def ok(self) -> bool:
        return self.row is not None

    @property
    def candidate_id(self) -> str | None:
        return None if self.row is None else str(self.row["candidate_id"])

    def require(self) -> Selection:
        """This selection; NothingQualifies (an AlambicError: exit code 2) when nothing qualifies."""
        if not self.ok:
            raise NothingQualifies(self)
        return self

    def _limit(self, limit: Limit) -> dict[str, Any]:
        if self.row is None:
            return limit.to_dict()
        value = limit.value(self.row)
        return limit.to_dict() | {"value": _finite(value), "met": not limit.miss(value)}

    def to_dict(self) -> dict[str, Any]:
        """selected.json: see :func:`write_selected`."""
        from alambic import __version__

        return {
            "candidate_id": self.candidate_id, "policy": self.policy, "summary": self.summary,
            "constraints": self.constraints,
            "limits": [self._limit(limit) for limit in self.limits],
            "reasons": list(self.reasons), "notes": list(self.notes),
            "objectives": [{"metric": m, "mode": mode} for m, mode in self.objectives],
            "chosen_on": "validation",
            "accuracy_tolerance": None if self.tolerance is None else self.tolerance.to_dict(),
            "considered": self.considered, "qualifying": self.qualifying, "failed": self.failed,
            "nearest": [{"candidate_id": n.candidate_id, "miss": _finite(n.miss), "misses": list(n.misses)}
                        for n in self.nearest],
            "row": self.row,
            "selected_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "alambic_version": __version__,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class NothingQualifies(AlambicError):
    """No measured candidate meets the policy; the message lists the nearest ones."""

    def __init__(self, selection: Selection):
        self.selection = selection
        lines = [f"no candidate meets {selection.summary}: 0 of {selection.considered} measured candidate(s) "
                 f"qualify ({selection.failed} failed)."]
        if selection.nearest:
            lines.append("Nearest (smallest relative miss):")
        for near in selection.nearest:
            lines.append(f"  {near.candidate_id} (val accuracy {_cell(near.row.get(ACCURACY), ACCURACY)}, "
                         f"{_cell(near.row.get('size_mb'), 'size_mb')} MB): {'; '.join(near.misses)}")
        lines.append("Relax a limit (--max-size-mb, --max-latency-ms, --min-accuracy, another --tier) "
                     "or search further.")
        super().__init__("\n".join(lines))


def make_policy(spec: SelectionPolicy | SelectConfig | Mapping[str, Any],
                registry: Registry | None = None) -> SelectionPolicy:
    """A policy from a policy, a SelectConfig, or a mapping of its fields (plus extra options such
    as ``phone_latency_factor``), looked up by id among the registered selection policies."""
    from pydantic import ValidationError

    from alambic.config import SelectConfig, describe_errors

    if isinstance(spec, SelectionPolicy):
        return spec
    options: dict[str, Any] = {}
    if not isinstance(spec, SelectConfig):
        fields = {k: v for k, v in spec.items() if k in SelectConfig.model_fields}
        options = {k: v for k, v in spec.items() if k not in SelectConfig.model_fields}
        try:
            spec = SelectConfig(**fields)
        except ValidationError as exc:
            raise ConfigError("select", describe_errors(exc.errors(), root=SelectConfig)) from None
    if registry is None:
        from alambic.manager import build_registry

        registry = build_registry()
    return registry["selection_policies"].get(spec.policy).from_config(spec, **options)


def select(df: pd.DataFrame, policy: SelectionPolicy | SelectConfig | Mapping[str, Any], *,
           objectives: Objectives | None = None, registry: Registry | None = None) -> Selection:
    """Choose one candidate among the rows with status ok meeting every limit of ``policy``.

    Validation accuracy decides, but not by its last digit: the candidates within the policy's
    ``accuracy_tolerance`` (points; None = one standard error of the most accurate qualifier's
    val_accuracy on val_examples rows; 0 = exact) of the most accurate count as equally accurate,
    and among them the smaller size_mb wins, then the lower latency_p50_ms, then the more accurate,
    then candidate_id. The reasons say which rule decided.

    Never raises for an empty choice: the Selection then holds the 3 nearest candidates (the
    smallest sum of relative misses); call ``.require()`` to turn that into an error.
    """
    policy = make_policy(policy, registry)
    setting = policy.accuracy_tolerance
    df = mark_front(df, objectives or df.attrs.get("objectives") or DEFAULT_OBJECTIVES, setting)
    limits = tuple(policy.limits())
    _need(df, [ACCURACY, "size_mb", "latency_p50_ms", *(limit.metric for limit in limits)], f"policy '{policy.id}'")
    rows = [json_row(row) for _, row in df[df["status"] == "ok"].iterrows()]
    misses = [[limit.miss(limit.value(row)) for limit in limits] for row in rows]
    fits = sorted((row for row, miss in zip(rows, misses) if not any(miss)), key=_preference)
    base = {"policy": policy.id, "summary": policy.summary(), "constraints": policy.settings(), "limits": limits,
            "notes": tuple(policy.notes()), "considered": len(rows), "qualifying": len(fits),
            "objectives": tuple(df.attrs.get("objectives", DEFAULT_OBJECTIVES)), "failed": len(df) - len(rows)}
    if not fits:
        ranked = sorted(zip(rows, misses), key=lambda rm: (sum(rm[1]), _preference(rm[0])))[:3]
        nearest = tuple(Near(str(row["candidate_id"]), sum(miss),
                             tuple(limit.describe(row) for limit, m in zip(limits, miss) if m), row)
                        for row, miss in ranked)
        return Selection(row=None, nearest=nearest, **base)
    tolerance = accuracy_tolerance(setting, fits[0])
    if setting is None and not tolerance.points:
        base["notes"] += (f"accuracy tolerance: {tolerance.basis}",)
    equal = [row for row in fits if tolerance.equal(fits[0][ACCURACY], row[ACCURACY])]
    best = min(equal, key=_smaller_first)
    reasons = [f"meets {limit.describe(best)}" for limit in limits]
    reasons += [_why_best(best, fits, equal, tolerance), _front_note(best, base["objectives"])]
    return Selection(row=best, reasons=tuple(reasons), tolerance=tolerance, **base)


def _number(row: Mapping[str, Any], key: str, sign: float = 1.0) -> float:
    value = row.get(key)
    return math.inf if value is None or value != value else sign * float(value)  # missing = worst


def _preference(row: Mapping[str, Any]) -> tuple:
    """Sort key by the last digit: most accurate, then smaller, then faster."""
    return (_number(row, ACCURACY, -1.0), _number(row, "size_mb"), _number(row, "latency_p50_ms"),
            str(row["candidate_id"]))


def _smaller_first(row: Mapping[str, Any]) -> tuple:
    """Sort key among the equally accurate: smaller, then faster, then more accurate."""
    return (_number(row, "size_mb"), _number(row, "latency_p50_ms"), _number(row, ACCURACY, -1.0),
            str(row["candidate_id"]))


def _why_best(best: Mapping[str, Any], fits: Sequence[Mapping[str, Any]], equal: Sequence[Mapping[str, Any]],
              tolerance: Tolerance) -> str:
    """Which rule decided: the only one, the most accurate beyond the tolerance, or among the
    equally accurate the smaller (then the faster)."""
    if len(fits) == 1:
        return "the only qualifying candidate"
    top = fits[0]
    head = f"the most accurate of {len(fits)} qualifying candidates (val accuracy {top[ACCURACY]:.4f}"
    if len(equal) == 1:
        second = fits[1]
        gap = 100 * (top[ACCURACY] - second[ACCURACY])
        beyond = f", {gap:.2f} pt lower: beyond {tolerance.text()}" if tolerance.points else ""
        return f"{head}; next: {second['candidate_id']}, {second[ACCURACY]:.4f}{beyond})"
    if best is not top:  # the tolerance decided
        gap = 100 * (top[ACCURACY] - best[ACCURACY])
        return (f"{_named(best)} chosen over {_named(top)}, the most accurate: {gap:.2f} pt apart, within "
                f"{tolerance.text()}; {_smaller_rule(best, top)}")
    other = sorted(equal, key=_smaller_first)[1]
    if other[ACCURACY] == top[ACCURACY]:  # an exact tie, tolerance or not
        if best.get("size_mb") != other.get("size_mb"):
            return (f"{head}, tied with {other['candidate_id']}; the smaller: {best['size_mb']:,.2f} MB against "
                    f"{other['size_mb']:,.2f} MB)")
        return (f"{head} and size, tied with {other['candidate_id']}; the faster: p50 {best['latency_p50_ms']:,.2f} "
                f"ms against {other['latency_p50_ms']:,.2f} ms)")
    return (f"{head}) and, of the {len(equal)} within {tolerance.text()}, no larger or slower: "
            f"{best['size_mb']:,.2f} MB against {other['size_mb']:,.2f} MB for {other['candidate_id']}")


def _named(row: Mapping[str, Any]) -> str:
    quantization = f", {row['quantization']}" if row.get("quantization") else ""
    return f"{row['candidate_id']} ({row['size_mb']:,.1f} MB{quantization})"


def _smaller_rule(best: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    if best.get("size_mb") != other.get("size_mb"):
        return "the smaller wins"
    return (f"the same size; the faster wins: p50 {best['latency_p50_ms']:,.2f} ms against "
            f"{other['latency_p50_ms']:,.2f} ms")


def _front_note(row: Mapping[str, Any], objectives: Sequence[tuple[str, str]]) -> str:
    over = ", ".join(f"{m} ({mode})" for m, mode in objectives)
    if row.get("on_front"):
        return f"on the Pareto front over {over}" + (", and its knee" if row.get("knee") else "")
    return (f"not on the Pareto front over {over} (rank {row.get('front_rank')}): the candidates that beat it "
            "there miss a limit, or lose on size or latency while within the accuracy tolerance")


def format_selection(selection: Selection) -> Group:
    """Rich renderables: the chosen candidate's figures, then why it was chosen, then the notes."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    row = selection.require().row or {}
    table = Table("", "", title=f"selected: {escape(str(row['candidate_id']))}", show_header=False)
    table.add_row("policy", escape(selection.summary))
    for label, key in (("student", "student"), ("pruning", "pruning"), ("quantization", "quantization"),
                       ("runtime", "runtime"), ("val accuracy", "val_accuracy"),
                       ("val accuracy ±1 SE, pt", "val_accuracy_se"), ("val macro-F1", "val_macro_f1"),
                       ("test accuracy (reported only)", "test_accuracy"),
                       ("test macro-F1 (reported only)", "test_macro_f1"), ("size MB", "size_mb"),
                       ("latency p50 ms", "latency_p50_ms"), ("latency p90 ms", "latency_p90_ms"),
                       ("peak memory MB", "peak_mem_mb"), ("latency measured on", "latency_machine"),
                       ("artifact", "artifact")):
        if key in row:
            table.add_row(label, escape(_cell(row[key], key)))
    if selection.tolerance is not None:
        table.add_row("accuracy tolerance", escape(selection.tolerance.text().removeprefix("the tolerance of ")))
    lines = ["why:", *(f"  - {escape(r)}" for r in selection.reasons)]
    lines += [f"[yellow]note:[/yellow] {escape(n)}" for n in selection.notes]
    return Group(table, *lines)


def write_selected(run: Run | Store | str | os.PathLike[str], selection: Selection) -> str:
    """Write ``<run dir>/selected.json`` atomically (readers see the old file or the new one);
    returns where. Refuses a selection where nothing qualified (NothingQualifies)."""
    store = _store(run)
    store.write_json(SELECTED, selection.require().to_dict())
    return f"{store.uri}/{SELECTED}"


__all__ = ["ACCURACY", "DEFAULT_OBJECTIVES", "Limit", "Near", "NothingQualifies", "RESULTS", "RESULT_COLUMNS",
           "Run", "SELECTED", "Selection", "SelectionPolicy", "Tolerance", "accuracy_tolerance", "format_front",
           "format_selection", "front_figure", "front_rows", "front_tolerance", "json_row", "load_results",
           "make_policy", "mark_front", "objective_pairs", "plot_front", "resolve_run", "select",
           "standard_error", "write_selected"]
