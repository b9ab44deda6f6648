"""The choice of one candidate to ship: the limits a selection policy states, and the rule that
picks among the candidates meeting them.

::

    df = mark_front(load_results(run), run.objectives)   # alambic.search.front
    selection = select(df, run.select)               # the config's select section, or a policy
    selection.require()                              # NothingQualifies (the 3 nearest) if none fits
    write_selected(run, selection)                   # <run dir>/selected.json, atomically

A selection policy (plugin kind ``selection_policies``, e.g. ``tier``) states the limits a
candidate must meet (:class:`Limit`); :func:`select` picks, among the candidates meeting them
all, the most accurate on validation, where accuracies within a tolerance count as equal (default
one standard error, about a point on 2,000 rows: the last digit is noise); among those equally
accurate, the smaller, then the faster wins. Test accuracy is only reported, never chosen on.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ValidationError
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from alambic import __version__
from alambic.config import GOLDEN_LIMITS, SelectConfig
from alambic.config_problems import describe_errors
from alambic.errors import AlambicError, ConfigError
from alambic.manager import build_registry
from alambic.search.front import (
    ACCURACY,
    DEFAULT_OBJECTIVES,
    Objectives,
    Run,
    Tolerance,
    accuracy_tolerance,
    format_cell,
    json_row,
    mark_front,
    need_columns,
    run_store,
)
from alambic.store import Store

if TYPE_CHECKING:
    import pandas as pd

    from alambic.registry import Registry

SELECTED = "selected.json"


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
    standard error, 0 = exact ranking) lets the select section's value through. The golden gate
    (``min_golden_accuracy``, ``max_golden_drop``, ``max_class_recall_drop``: alambic.search.golden)
    is a policy's to add to its limits, as the built-ins do; export holds to it whatever the policy.
    """

    id: ClassVar[str] = ""
    accuracy_tolerance: float | None = None  # select's rule, not a limit: see select()
    min_golden_accuracy: float | None = None  # the golden gate: None = not asked
    max_golden_drop: float | None = None
    max_class_recall_drop: float | None = None

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
        """What was asked, as JSON (selected.json's ``constraints``); a golden limit only when set."""
        found = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {k: v for k, v in found.items() if not (k in GOLDEN_LIMITS and v is None)}

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
            lines.append(f"  {near.candidate_id} (val accuracy {format_cell(near.row.get(ACCURACY), ACCURACY)}, "
                         f"{format_cell(near.row.get('size_mb'), 'size_mb')} MB): {'; '.join(near.misses)}")
        asked = any(k in selection.constraints for k in GOLDEN_LIMITS)
        golden = " or the select section's golden limits" if asked else ""
        lines.append(f"Relax a limit (--max-size-mb, --max-latency-ms, --min-accuracy, another --tier{golden}) "
                     "or search further.")
        super().__init__("\n".join(lines))


def make_policy(spec: SelectionPolicy | SelectConfig | Mapping[str, Any],
                registry: Registry | None = None) -> SelectionPolicy:
    """A policy from a policy, a SelectConfig, or a mapping of its fields (plus extra options such
    as ``phone_latency_factor``), looked up by id among the registered selection policies."""
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
    _need_golden(df, policy)
    need_columns(df, [ACCURACY, "size_mb", "latency_p50_ms", *(limit.metric for limit in limits)],
                 f"policy '{policy.id}'")
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


def _need_golden(df: pd.DataFrame, policy: SelectionPolicy) -> None:
    """A golden limit needs the golden figures a search with data.golden writes."""
    asked = [k for k in GOLDEN_LIMITS if getattr(policy, k, None) is not None]
    if asked and ("golden_accuracy" not in df or df["golden_accuracy"].isna().all()):
        raise AlambicError(f"select.{asked[0]}: the results table has no golden figures (golden_accuracy): set "
                           "data.golden in the run config and run the search again (alambic search RUN); "
                           "its stages are reused")


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
    row = selection.require().row or {}
    table = Table("", "", title=f"selected: {escape(str(row['candidate_id']))}", show_header=False)
    table.add_row("policy", escape(selection.summary))
    for label, key in (("student", "student"), ("pruning", "pruning"), ("quantization", "quantization"),
                       ("runtime", "runtime"), ("val accuracy", "val_accuracy"),
                       ("val accuracy ±1 SE, pt", "val_accuracy_se"), ("val macro-F1", "val_macro_f1"),
                       ("test accuracy (reported only)", "test_accuracy"),
                       ("test macro-F1 (reported only)", "test_macro_f1"),
                       ("golden accuracy", "golden_accuracy"), ("teacher's golden accuracy", "golden_teacher_accuracy"),
                       ("size MB", "size_mb"),
                       ("latency p50 ms", "latency_p50_ms"), ("latency p90 ms", "latency_p90_ms"),
                       ("peak memory MB", "peak_mem_mb"), ("latency measured on", "latency_machine"),
                       ("artifact", "artifact")):
        if key in row and not (key.startswith("golden") and row[key] is None):  # golden: only a run with it
            table.add_row(label, escape(format_cell(row[key], key)))
    if selection.tolerance is not None:
        table.add_row("accuracy tolerance", escape(selection.tolerance.text().removeprefix("the tolerance of ")))
    lines = ["why:", *(f"  - {escape(r)}" for r in selection.reasons)]
    lines += [f"[yellow]note:[/yellow] {escape(n)}" for n in selection.notes]
    return Group(table, *lines)


def write_selected(run: Run | Store | str | os.PathLike[str], selection: Selection) -> str:
    """Write ``<run dir>/selected.json`` atomically (readers see the old file or the new one);
    returns where. Refuses a selection where nothing qualified (NothingQualifies)."""
    store = run_store(run)
    store.write_json(SELECTED, selection.require().to_dict())
    return f"{store.uri}/{SELECTED}"


__all__ = ["Limit", "Near", "NothingQualifies", "SELECTED", "Selection", "SelectionPolicy", "format_selection",
           "make_policy", "select", "write_selected"]
