"""The run's teacher timed here, and shipped artifacts evaluated on raw rows: what a report computes,
cached as stages of the store (``teacher-measure``, ``evaluation``), each keyed by what made it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.compress.measure import Measurement, measure_onnx, measure_pytorch, vocab_files
from alambic.compress.onnx_export import attention_dims, export_onnx, optimize_onnx
from alambic.config import MeasureConfig
from alambic.errors import AlambicError
from alambic.fingerprint import stable_hash
from alambic.machine import identity
from alambic.train.models import load_pretrained

if TYPE_CHECKING:
    from alambic.run import RunContext

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MEASUREMENT_FILE = "measurement.json"
#: the runtimes the teacher is timed in (fp32), the fastest being every speed-up's baseline
TEACHER_RUNTIMES = ("pytorch", "onnxruntime")


@dataclass
class Teacher:
    """The run's current teacher: its metrics, and its timings here, fp32, in each runtime."""

    key: str
    path: Path
    metrics: dict[str, Any]  # metrics.json: validation, test (per_class, confusion), params
    timed: dict[tuple[str, int], Measurement]  # (runtime, threads): the teacher timed here, fp32
    untimed: dict[str, str] = field(default_factory=dict)  # runtime: why it could not be timed

    def at(self, threads: int) -> dict[str, Measurement]:
        """The teacher's measurements at ``threads``, by runtime, fastest first."""
        found = {rt: m for (rt, t), m in self.timed.items() if t == threads and p50_ms(m)}
        return dict(sorted(found.items(), key=lambda item: p50_ms(item[1])))


def p50_ms(m: Measurement) -> float | None:
    """Its p50 latency in milliseconds (None: not timed)."""
    return m.headline()["latency_p50_ms"]


def measure_config(ctx: RunContext) -> Any:
    """The search's measure settings (the defaults when the run has no search)."""
    return ctx.config.search.measure if ctx.config.search is not None else MeasureConfig()


def timed_teacher(ctx: RunContext, threads: list[int]) -> Teacher | None:
    """The run's current teacher timed here in each runtime at each of ``threads``; None before it is trained."""
    from alambic.train.teacher import current_teacher_key

    key = current_teacher_key(ctx)
    if ctx.store.load_manifest(ctx.store.stage_path(key)) is None:
        return None  # not trained yet: a report never trains
    path = ctx.store.local_path(ctx.store.stage_path(key))
    metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
    teacher = Teacher(key, path, metrics, {})
    for runtime in TEACHER_RUNTIMES:
        for n in threads:
            try:
                teacher.timed[runtime, n] = teacher_measurement(ctx, key, path, runtime=runtime, threads=n)
            except Exception as exc:  # noqa: BLE001 - a model ONNX cannot export: PyTorch stays the baseline
                if runtime == "pytorch":
                    raise
                log.warning("the teacher could not be timed in %s: %s", runtime, exc)
                teacher.untimed[runtime] = f"{type(exc).__name__}: {exc}"
    return teacher


def teacher_measurement(ctx: RunContext, key: str, path: Path, *, runtime: str = "pytorch",
                        threads: int = 1) -> Measurement:
    """The teacher folder timed as the candidates are (the search's lengths and runs, ``threads``),
    in ``runtime`` at fp32 (ONNX Runtime: exported and fused as the candidates' graphs are), without
    the memory child; once per teacher, settings and machine (a ``teacher-measure`` stage)."""
    measure = measure_config(ctx)
    settings = {"lengths": tuple(measure.lengths), "runs": measure.runs, "warmup": measure.warmup}
    here = identity()  # a timing is this machine's: never reused elsewhere
    stage = stable_hash({"stage": "teacher-measure", "teacher": key, "data": ctx.prepared.tokenized_key,
                         "runtime": runtime, "threads": threads, "memory": False, "machine": here,
                         **settings})[:32]

    def build(folder: Path) -> dict[str, Any]:
        found = _time_teacher(ctx, path, runtime, threads, settings)
        (folder / MEASUREMENT_FILE).write_text(json.dumps(found.to_dict(), indent=2), encoding="utf-8")
        return found.headline()

    ctx.store.get_or_build_stage(stage, "teacher-measure", build)
    done = ctx.store.local_path(ctx.store.stage_path(stage)) / MEASUREMENT_FILE
    return Measurement.from_dict(json.loads(done.read_text(encoding="utf-8")))


def _time_teacher(ctx: RunContext, path: Path, runtime: str, threads: int, settings: dict[str, Any]) -> Measurement:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenized, _ = ctx.tokenize(AutoTokenizer.from_pretrained(str(path)))  # the teacher's own tokenizer
    if runtime == "pytorch":
        return measure_pytorch(path, tokenized["test"], threads=threads, memory=False, **settings)
    if runtime != "onnxruntime":
        raise AlambicError(f"cannot time the teacher in runtime {runtime!r} ({', '.join(TEACHER_RUNTIMES)} can be)")
    model = load_pretrained(path, AutoModelForSequenceClassification).eval()
    with tempfile.TemporaryDirectory(prefix="alambic-teacher-") as tmp:  # the graph is not kept: ~ the weights
        heads, width = attention_dims(model.config)  # fused as the quantizers fuse the candidates' graphs
        graph = optimize_onnx(export_onnx(model, Path(tmp) / "teacher.onnx"), Path(tmp) / "teacher.fused.onnx",
                              heads, width)
        found = measure_onnx(graph, tokenized["test"], threads=threads, memory=False,
                             tokenizer_files=vocab_files(path), **settings)
    found.artifact = f"{path} (exported to ONNX, fused)"
    return found


__all__ = ["METRICS_FILE", "TEACHER_RUNTIMES", "Teacher", "measure_config", "p50_ms",
           "teacher_measurement", "timed_teacher"]
