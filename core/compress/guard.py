"""The accuracy guard: a compression step is kept only if it costs at most ``max_drop`` points.

``guard: {max_drop: 1.0, max_total_drop: 1.0, retries: 2}`` in the run config. After a pruning or
quantization step the model is evaluated on the validation split; when its accuracy falls more than
``max_drop`` points below the step's input, or more than ``max_total_drop`` points below the chain's
start (the distilled student: k steps that each cost ``max_drop`` must not add up to k times it), the
step is tried again at half strength, up to ``retries`` times, and then given up (*reverted*: the
step's input goes on unchanged)::

    result, decisions = guarded_step(
        apply=lambda options: Pruner.apply(model, options, context),
        evaluate=lambda result: accuracy(result.model),
        options=Pruner.options(0.5), half=Pruner.half,
        accuracy_before=0.91, max_drop=1.0, retries=2, name="heads:0.5", plugin="heads",
        start_accuracy=0.915, max_total_drop=1.0)   # the chain's budget: at least 0.905 after
    # decisions: one per attempt; outcome "retried" (too costly, tried again at half strength),
    # "kept" (this attempt is the step's result) or "reverted" (too costly, no retry left)

Pure logic: no ML import, so it is tested with fakes; the compression loop (:mod:`alambic.compress.chain`)
supplies the real ``apply`` and ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from rich.markup import escape
from rich.table import Table

log = logging.getLogger(__name__)

Options = TypeVar("Options")
Result = TypeVar("Result")
Outcome = Literal["kept", "retried", "reverted"]
OUTCOMES: tuple[str, ...] = ("kept", "retried", "reverted")
_EPS = 1e-9  # accuracies are floats: a drop of exactly max_drop passes


@dataclass(frozen=True)
class GuardDecision:
    """One attempt of one step: what was tried, what it cost, and what the guard did."""

    step: str  # the step as the user wrote it ("heads:0.25"), or "quant:<id>"
    plugin: str  # pruner or quantizer id
    attempt: int  # 0 = as asked; n = after n halvings
    strength: float | None  # the options' amount, if they have one
    options: dict[str, Any]  # the options tried, as JSON
    accuracy_before: float  # validation accuracy of the step's input (fraction)
    accuracy_after: float  # validation accuracy of this attempt's result (fraction)
    drop_points: float  # 100 * (before - after); negative when accuracy rose
    max_drop: float  # the step's budget, in points
    outcome: Outcome
    note: str = ""
    total_drop_points: float | None = None  # 100 * (chain start - after): what the chain has cost so far
    max_total_drop: float | None = None  # the chain's budget, in points

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardDecision:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def describe_options(options: Any) -> dict[str, Any]:
    """Options as JSON: a dataclass's fields, a mapping's items, else ``{"value": repr}``."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return _jsonable(dataclasses.asdict(options))
    if isinstance(options, Mapping):
        return _jsonable(dict(options))
    if options is None:
        return {}
    return {"value": _jsonable(options)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def strength_of(options: Any) -> float | None:
    """The options' ``amount`` (a fraction), when they have a numeric one."""
    amount = options.get("amount") if isinstance(options, Mapping) else getattr(options, "amount", None)
    return float(amount) if isinstance(amount, (int, float)) and not isinstance(amount, bool) else None


def guarded_step(apply: Callable[[Options], Result], evaluate: Callable[[Result], float], options: Options,
                 half: Callable[[Options], Options | None], accuracy_before: float, max_drop: float,
                 retries: int, name: str, *, plugin: str = "", start_accuracy: float | None = None,
                 max_total_drop: float | None = None, on_decision: Callable[[GuardDecision], None] | None = None,
                 ) -> tuple[Result | None, list[GuardDecision]]:
    """Apply a step under the guard; return its result (None when reverted) and every decision.

    :param apply: runs the step with some options and returns its result; must not change its
        input (pruners and quantizers work on copies), since a failed attempt is thrown away.
    :param evaluate: validation accuracy (a fraction in [0, 1]) of a result.
    :param half: the same options at half strength; None when there is no weaker version (a
        quantizer, a pruner without strength): the step is then kept or reverted at once.
    :param accuracy_before: validation accuracy of the step's input (a fraction).
    :param max_drop: accuracy points (0-100 scale) the step may cost.
    :param retries: attempts at half strength after the first, at most.
    :param start_accuracy: validation accuracy where the chain of steps began (the distilled
        student); with ``max_total_drop``, the result must also stay within that many points of it.
    :param on_decision: called with each decision as it is made (printing, logging).

    Errors raised by ``apply`` or ``evaluate`` propagate: a step that cannot run is a mistake in
    the setting, not something to retry.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if max_drop < 0 or (max_total_drop is not None and max_total_drop < 0):
        raise ValueError(f"max_drop and max_total_drop must be >= 0, got {max_drop}, {max_total_drop}")
    total = max_total_drop is not None and start_accuracy is not None
    decisions: list[GuardDecision] = []
    attempt = 0
    while True:
        result = apply(options)
        after = float(evaluate(result))
        drop = 100.0 * (accuracy_before - after)
        total_drop = 100.0 * (start_accuracy - after) if total else None
        costs = f"costs {drop:.2f} pt" + (f" ({total_drop:.2f} pt for the chain)" if total else "")
        over = _over_budget(drop, max_drop, total_drop, max_total_drop)
        weaker = half(options) if attempt < retries and over else None
        if not over:
            outcome: Outcome = "kept"
            note = f"{costs}, within {max_drop:g}" + (f" and {max_total_drop:g} for the chain" if total else "")
        elif weaker is not None:
            outcome = "retried"
            note = f"{costs}: {over}; retrying at half strength"
        else:
            outcome = "reverted"
            why = "no retry left" if attempt >= retries else "no weaker setting"
            note = f"{costs}: {over}, {why}: step reverted"
        decision = GuardDecision(step=name, plugin=plugin, attempt=attempt, strength=strength_of(options),
                                 options=describe_options(options), accuracy_before=float(accuracy_before),
                                 accuracy_after=after, drop_points=drop, max_drop=float(max_drop),
                                 outcome=outcome, note=note, total_drop_points=total_drop,
                                 max_total_drop=float(max_total_drop) if total else None)
        decisions.append(decision)
        log.info("guard %s (%s, attempt %d): accuracy %.4f -> %.4f, %s", name, plugin or "?", attempt,
                 accuracy_before, after, note)
        if on_decision is not None:
            on_decision(decision)
        if outcome == "kept":
            return result, decisions
        if outcome == "reverted":
            return None, decisions
        options, attempt = weaker, attempt + 1


def _over_budget(drop: float, max_drop: float, total_drop: float | None, max_total_drop: float | None) -> str:
    """Which budget a step overran ("" when within both)."""
    if drop > max_drop + _EPS:
        return f"over the step's budget of {max_drop:g} pt"
    if total_drop is not None and max_total_drop is not None and total_drop > max_total_drop + _EPS:
        return f"over the chain's budget of {max_total_drop:g} pt (guard.max_total_drop)"
    return ""


def final_outcome(decisions: Iterable[GuardDecision]) -> str:
    """How a step ended: "kept" (first try), "kept after N retries", or "reverted"."""
    decisions = list(decisions)
    if not decisions:
        return "not run"
    last = decisions[-1]
    if last.outcome == "kept" and last.attempt:
        return f"kept after {last.attempt} retr{'y' if last.attempt == 1 else 'ies'}"
    return last.outcome


def format_decisions(decisions: Iterable[GuardDecision | Mapping[str, Any]], title: str = "guard decisions") -> Table:
    """A rich table: one row per attempt (step, plugin, strength, accuracy before/after, drop, outcome)."""
    table = Table(title=title, caption="accuracy on the validation split; drop in points against the step's "
                  "input / guard.max_drop; chain: against the distilled student / guard.max_total_drop")
    for header, justify in (("step", "left"), ("plugin", "left"), ("try", "right"), ("strength", "right"),
                            ("acc before", "right"), ("acc after", "right"), ("drop pt", "right"),
                            ("chain pt", "right"), ("outcome", "left")):
        table.add_column(header, justify=justify)
    colour = {"kept": "green", "retried": "yellow", "reverted": "red"}
    for d in decisions:
        d = d if isinstance(d, GuardDecision) else GuardDecision.from_dict(d)
        strength = "-" if d.strength is None else f"{d.strength:.4g}"
        table.add_row(escape(d.step), escape(d.plugin), str(d.attempt), strength, f"{d.accuracy_before:.4f}",
                      f"{d.accuracy_after:.4f}", f"{d.drop_points:+.2f} / {d.max_drop:g}",
                      "-" if d.total_drop_points is None else f"{d.total_drop_points:+.2f} / {d.max_total_drop:g}",
                      f"[{colour[d.outcome]}]{d.outcome}[/{colour[d.outcome]}]")
    return table


__all__ = ["GuardDecision", "OUTCOMES", "describe_options", "final_outcome", "format_decisions",
           "guarded_step", "strength_of"]
