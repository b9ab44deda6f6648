"""The search space: the config's students, settings, pruning and quantization as Tune's param
space, and a trial's params back as the :class:`Candidate` it builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alambic.compress.records import step_label
from alambic.config import DOMAINS, PruningStep
from alambic.errors import ConfigError
from alambic.fingerprint import stable_hash

PRIMITIVE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Candidate:
    """One point of the search space, resolved: what a trial builds."""

    student: str
    settings: dict[str, Any]  # distillation settings that differ from the config's distill section
    pruning: tuple[PruningStep, ...]
    quantization: str  # a quantizer id or "none"
    init: str = ""  # search.student_init's entry for the student; "" = its default

    @property
    def id(self) -> str:
        fields = {"student": self.student, "settings": self.settings,
                  "pruning": [s.model_dump() for s in self.pruning], "quant": self.quantization}
        if self.init:  # only when given: candidates without an init keep the ids they had
            fields["init"] = self.init
        return stable_hash(fields)[:12]

    @property
    def pruning_label(self) -> str:
        return ",".join(step_label(s) for s in self.pruning) or "none"


def _domain(value: Any) -> tuple[str, Any] | None:
    """``{"choice": [...]}`` -> ("choice", [...]); a plain value -> None."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DOMAINS:
        return next(iter(value.items()))
    return None


def _values_as_tune(values: list[Any], as_grid: bool) -> Any:
    """Values as a Tune grid axis (algorithm grid) or choice (the others: Optuna knows no grid).
    Values Optuna cannot take as categories (lists, dicts) are chosen by index, looked up in the trial."""
    from ray import tune

    options = values if all(isinstance(v, PRIMITIVE) for v in values) else list(range(len(values)))
    return tune.grid_search(options) if as_grid else tune.choice(options)


@dataclass(frozen=True)
class Space:
    """The search config as a Tune param space, and the way back from a trial's params."""

    search: Any  # SearchConfig

    def param_space(self, algorithm: str) -> dict[str, Any]:
        from ray import tune

        grid = algorithm == "grid"
        space: dict[str, Any] = {
            "student": _values_as_tune(list(self.search.students), grid),
            "pruning": _values_as_tune(list(range(len(self.search.pruning))), grid),
            "quantization": _values_as_tune(list(self.search.quantization), grid),
        }
        distill = {}
        for name, value in self.search.space.items():
            found = _domain(value)
            if found is None:
                continue  # a fixed value: part of every candidate's settings, not a dimension
            kind, args = found
            if kind in ("choice", "grid"):
                distill[name] = _values_as_tune(args, grid)
            elif grid:
                raise ConfigError("search", [f"search.space.{name}: algorithm 'grid' needs choice or grid "
                                             f"values, got {kind} {args}; use algorithm random, nsga2 or tpe"])
            else:
                low, high = args
                distill[name] = {"uniform": tune.uniform, "loguniform": tune.loguniform,
                                 "randint": lambda lo, hi: tune.randint(int(lo), int(hi) + 1)}[kind](low, high)
        if distill:
            space["distill"] = distill
        return space

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        """The candidate a trial's params stand for (indices looked up, fixed values added)."""
        settings = {}
        chosen = params.get("distill", {})
        for name, value in self.search.space.items():
            found = _domain(value)
            if found is None:
                settings[name] = value
            elif found[0] in ("choice", "grid"):
                values = found[1]
                pick = chosen[name]
                primitive = all(isinstance(v, PRIMITIVE) for v in values)
                settings[name] = pick if primitive else values[int(pick)]
            else:
                settings[name] = int(chosen[name]) if found[0] == "randint" else float(chosen[name])
        steps = tuple(self.search.pruning[int(params["pruning"])])
        return Candidate(student=params["student"], settings=settings, pruning=steps,
                         quantization=params["quantization"],
                         init=self.search.student_init.get(params["student"], ""))

    def size(self) -> int:
        """How many candidates the grid holds (students x pruning x quantization x choices)."""
        n = len(self.search.students) * len(self.search.pruning) * len(self.search.quantization)
        for value in self.search.space.values():
            found = _domain(value)
            if found and found[0] in ("choice", "grid"):
                n *= len(found[1])
        return n


def check_space(ctx: Any) -> None:
    """Every value a domain may take is a valid distillation setting: fail before any trial."""
    from alambic.train.distill import distill_settings

    for name, value in ctx.config.search.space.items():
        found = _domain(value)
        values = [value] if found is None else found[1]
        for v in values:
            distill_settings(ctx.config.distill, {name: v}, where=f"search.space.{name}")


__all__ = ["Candidate", "PRIMITIVE", "Space", "check_space"]
