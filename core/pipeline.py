"""`alambic run`: the whole pipeline in one call, each step skipped when its artifact exists.

What runs today: data -> teacher -> one distillation per student of ``search.students`` (with the
``distill`` settings). The search over compression settings, the Pareto front, export and the
report plug in here as they arrive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: the steps `alambic run` will have; those not yet available are announced, never faked
PLANNED_STEPS = ("search", "front", "select", "export", "report")


@dataclass
class PipelineResult:
    teacher: Any
    students: list[Any] = field(default_factory=list)
    seconds: float = 0.0


def run_pipeline(ctx: Any, local: bool = False,
                 on_step: Callable[[str, int, int], None] | None = None) -> PipelineResult:
    """Data, teacher, students; ``on_step(name, index, total)`` feeds a progress display."""
    from alambic.distill import distill
    from alambic.teacher import train_teacher

    students = ctx.config.search.students if ctx.config.search else []
    steps = ["data", "teacher", *(f"distill {s}" for s in students)]
    start = time.perf_counter()

    def step(index: int) -> None:
        if on_step:
            on_step(steps[index], index, len(steps))

    step(0)
    ctx.prepared  # noqa: B018  (loads, tokenizes and caches the data)
    step(1)
    result = PipelineResult(teacher=train_teacher(ctx, local=local))
    for index, student in enumerate(students, start=2):
        step(index)
        result.students.append(distill(ctx, student, local=local, teacher=result.teacher))
    result.seconds = time.perf_counter() - start
    return result
