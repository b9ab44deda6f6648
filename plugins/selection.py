"""Built-in selection policies: one candidate for a class of iPhones, or for explicit limits.

===========  ======================================================================
id           a candidate qualifies when
===========  ======================================================================
tier         it fits an iOS device class: phone latency and peak memory in budget
constraints  it meets the limits given: max_size_mb, max_latency_ms, min_accuracy (validation)
===========  ======================================================================

The device classes (latency budgets from the seeds; memory budgets are this project's defaults)::

    tier   chips           phone latency   peak memory
    high   A16 and newer   < 100 ms        <= 200 MB
    mid    A14-A15         < 200 ms        <= 150 MB
    low    A13             < 500 ms        <= 100 MB

The memory budgets are for one classifier inside an app: A13-A15 iPhones have 4 GB (some 6 GB)
and iOS ends a foreground app well before that, so the model may take a small share, less on
older phones. ``peak_mem_mb`` is what the search measured: the peak RSS of a fresh process that
loads the runtime and runs the artifact once. It includes the Python runtime itself, so it
overstates what the model costs on the phone (more for the pytorch runtime than onnxruntime).

**Phone latency** = the CPU-measured ``latency_p90_ms`` (batch 1, the reference length, this
machine) x ``phone_latency_factor``. The default factor, 1.0, takes the CPU figure as the
phone's: measure one model on the device, set the factor to phone p90 / CPU p90, and every
latency limit (the tier's and ``max_latency_ms``) follows. The output says which factor it used.

Both policies take the explicit limits too: ``tier: mid`` with ``max_size_mb: 20`` needs both.
``min_accuracy`` applies to ``val_accuracy``: every choice is made on the validation split.
Both take the golden gate too (``min_golden_accuracy``, ``max_golden_drop``, ``max_class_recall_drop``:
on data.golden, against the teacher, per class for the last; :mod:`alambic.search.golden`).
Which qualifying candidate wins is :func:`alambic.search.select.select`'s rule: the most accurate on
validation, accuracies within ``accuracy_tolerance`` of it counting as equal (default one standard
error), and among those the smaller, then the faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import alambic
from alambic.config import GOLDEN_LIMITS
from alambic.errors import AlambicError
from alambic.search.golden import golden_limits
from alambic.search.select import Limit, SelectionPolicy

if TYPE_CHECKING:
    from alambic.config import SelectConfig
    from alambic.registry import KindRegistry

#: 1.0 = the CPU's p90 stands in for the phone's; measure on the device and set it
DEFAULT_PHONE_LATENCY_FACTOR = 1.0


@dataclass(frozen=True)
class DeviceTier:
    chips: str
    latency_ms: float  # phone latency must be below it
    memory_mb: float  # peak memory at most this


TIERS = {
    "high": DeviceTier("A16 and newer", 100.0, 200.0),
    "mid": DeviceTier("A14-A15", 200.0, 150.0),
    "low": DeviceTier("A13", 500.0, 100.0),
}


def phone_latency(op: str, bound: float, factor: float) -> Limit:
    """The limit on phone latency: ``latency_p90_ms * factor``."""
    return Limit("latency_p90_ms", op, bound, "phone latency", "ms", factor)  # type: ignore[arg-type]


def explicit_limits(max_size_mb: float | None, max_latency_ms: float | None, min_accuracy: float | None,
                    factor: float) -> list[Limit]:
    """The limits a user gives by value (``select`` section, ``--max-size-mb`` ...)."""
    limits = []
    if max_size_mb is not None:
        limits.append(Limit("size_mb", "<=", max_size_mb, "size", "MB"))
    if max_latency_ms is not None:
        limits.append(phone_latency("<=", max_latency_ms, factor))
    if min_accuracy is not None:  # on validation, like every choice: the test split is only reported
        limits.append(Limit("val_accuracy", ">=", min_accuracy, "val accuracy"))
    return limits


def latency_note(factor: float) -> str:
    if factor == DEFAULT_PHONE_LATENCY_FACTOR:
        return ("phone latency = CPU latency_p90_ms x 1.0 (phone_latency_factor): the CPU figure stands in "
                "for the phone's; measure one model on the device and set the factor to phone p90 / CPU p90")
    return f"phone latency = CPU latency_p90_ms x {factor:g} (phone_latency_factor)"


MEMORY_NOTE = ("model memory = model_mem_mb: the peak RSS of a fresh process running the artifact once, minus "
               "that process's peak after importing its runtime (what the model itself costs; the phone's "
               "runtime differs from Python's)")


def _ranking_options(config: SelectConfig) -> dict[str, Any]:
    return {"phone_latency_factor": config.phone_latency_factor, "accuracy_tolerance": config.accuracy_tolerance}


def _golden_options(config: SelectConfig) -> dict[str, Any]:
    """The select section's golden gate, for a policy to add to its limits."""
    return {key: getattr(config, key) for key in GOLDEN_LIMITS}


def _check_factor(who: str, factor: float) -> None:
    if not factor > 0:
        raise AlambicError(f"selection policy '{who}': phone_latency_factor must be > 0, got {factor!r}")


def _check_tolerance(who: str, tolerance: float | None) -> None:
    if tolerance is not None and not 0 <= tolerance <= 100:
        raise AlambicError(f"selection policy '{who}': accuracy_tolerance is in accuracy points, 0 to 100 "
                           f"(null = one standard error), got {tolerance!r}")


@dataclass(frozen=True)
class Tier(SelectionPolicy):
    """iOS device class: high (A16+, < 100 ms), mid (A14-A15, < 200 ms), low (A13, < 500 ms)."""

    id: ClassVar[str] = "tier"
    tier: str = "high"
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    phone_latency_factor: float = DEFAULT_PHONE_LATENCY_FACTOR
    memory_mb: float | None = None  # None = the tier's budget
    accuracy_tolerance: float | None = None  # points; None = one standard error (select's rule)
    min_golden_accuracy: float | None = None  # the golden gate (data.golden, against the teacher)
    max_golden_drop: float | None = None
    max_class_recall_drop: float | None = None

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise AlambicError(f"selection policy 'tier': unknown tier {self.tier!r}; allowed: {', '.join(TIERS)}")
        _check_factor(self.id, self.phone_latency_factor)
        _check_tolerance(self.id, self.accuracy_tolerance)

    @classmethod
    def from_config(cls, config: SelectConfig, **options: Any) -> Tier:
        options = _golden_options(config) | _ranking_options(config) | options
        return cls(tier=config.tier or "high", max_size_mb=config.max_size_mb, max_latency_ms=config.max_latency_ms,
                   min_accuracy=config.min_accuracy, **options)

    @property
    def device(self) -> DeviceTier:
        return TIERS[self.tier]

    def limits(self) -> list[Limit]:
        memory = self.device.memory_mb if self.memory_mb is None else self.memory_mb
        return [phone_latency("<", self.device.latency_ms, self.phone_latency_factor),
                Limit("model_mem_mb", "<=", memory, "model memory", "MB"),
                *explicit_limits(self.max_size_mb, self.max_latency_ms, self.min_accuracy, self.phone_latency_factor),
                *golden_limits(self.min_golden_accuracy, self.max_golden_drop, self.max_class_recall_drop)]

    def summary(self) -> str:
        return f"tier '{self.tier}' ({self.device.chips}): " + ", ".join(limit.rule() for limit in self.limits())

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"chips": self.device.chips, "latency_ms": self.device.latency_ms,
                                     "memory_mb": self.limits()[1].bound}

    def notes(self) -> list[str]:
        return [latency_note(self.phone_latency_factor), MEMORY_NOTE]


@dataclass(frozen=True)
class Constraints(SelectionPolicy):
    """Explicit limits: max_size_mb, max_latency_ms (phone latency), min_accuracy (validation)."""

    id: ClassVar[str] = "constraints"
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    phone_latency_factor: float = DEFAULT_PHONE_LATENCY_FACTOR
    accuracy_tolerance: float | None = None  # points; None = one standard error (select's rule)
    min_golden_accuracy: float | None = None  # the golden gate (data.golden, against the teacher)
    max_golden_drop: float | None = None
    max_class_recall_drop: float | None = None

    def __post_init__(self) -> None:
        if not self.limits():
            raise AlambicError("selection policy 'constraints': give at least one of max_size_mb, max_latency_ms, "
                               "min_accuracy (the select section, or --max-size-mb / --max-latency-ms / "
                               f"--min-accuracy) or of the golden limits ({', '.join(GOLDEN_LIMITS)})")
        _check_factor(self.id, self.phone_latency_factor)
        _check_tolerance(self.id, self.accuracy_tolerance)

    @classmethod
    def from_config(cls, config: SelectConfig, **options: Any) -> Constraints:
        if config.tier is not None:
            raise AlambicError(f"select.tier {config.tier!r} is set but select.policy is 'constraints': "
                               "use policy 'tier' (which takes the explicit limits too), or drop the tier")
        options = _golden_options(config) | _ranking_options(config) | options
        return cls(max_size_mb=config.max_size_mb, max_latency_ms=config.max_latency_ms,
                   min_accuracy=config.min_accuracy, **options)

    def limits(self) -> list[Limit]:
        return [*explicit_limits(self.max_size_mb, self.max_latency_ms, self.min_accuracy, self.phone_latency_factor),
                *golden_limits(self.min_golden_accuracy, self.max_golden_drop, self.max_class_recall_drop)]

    def notes(self) -> list[str]:
        return [latency_note(self.phone_latency_factor)] if self.max_latency_ms is not None else []


@alambic.hookimpl
def alambic_register_selection_policies(register: KindRegistry) -> None:
    register.add(Tier)
    register.add(Constraints)
