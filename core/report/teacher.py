"""The run's teacher timed here, and shipped artifacts evaluated on raw rows: what a report computes,
cached as stages of the store (``teacher-measure``, ``evaluation``), each keyed by what made it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.compress.measure import Measurement, measure_onnx, measure_pytorch, onnx_evaluate, vocab_files
from alambic.compress.onnx_export import attention_dims, export_onnx, optimize_onnx, ort_session
from alambic.config import MeasureConfig
from alambic.data.dataset import progress_bars
from alambic.data.tokenize import MODEL_INPUTS
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


def evaluate_artifact(ctx: RunContext, model_key: str, model_dir: Path, rows: Any, rows_key: str, *,
                      runtime: str = "pytorch", artifact: Path | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion of a shipped artifact on raw rows (text,
    label), tokenized by the model folder's own tokenizer (a pruned vocabulary has its own); cached
    as an ``evaluation`` stage keyed by the model's stage and ``rows_key`` (what the rows are)."""
    stage = stable_hash({"stage": "evaluation", "model": model_key, "rows": rows_key, "runtime": runtime,
                         "max_length": ctx.config.tokenizer.max_length})[:32]

    def build(folder: Path) -> dict[str, Any]:
        metrics = _evaluate(ctx, model_dir, rows, runtime, artifact)
        (folder / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
        return {k: metrics[k] for k in ("accuracy", "macro_f1", "examples")}

    ctx.store.get_or_build_stage(stage, "evaluation", build)
    done = ctx.store.local_path(ctx.store.stage_path(stage)) / METRICS_FILE
    return json.loads(done.read_text(encoding="utf-8"))


def _evaluate(ctx: RunContext, model_dir: Path, rows: Any, runtime: str, artifact: Path | None) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir)) if vocab_files(model_dir) else ctx.prepared.tokenizer
    length = ctx.config.tokenizer.max_length

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        found = tokenizer(batch["text"], truncation=True, max_length=length)
        return {k: found[k] for k in MODEL_INPUTS if k in found} | {"length": [len(i) for i in found["input_ids"]]}

    with progress_bars(False):  # a given fingerprint spares datasets from hashing the tokenizer
        tokenized = rows.map(encode, batched=True, remove_columns=["text"], new_fingerprint=uuid.uuid4().hex)
    if runtime == "onnxruntime":
        return onnx_evaluate(ort_session(artifact, 1), tokenized)
    if runtime != "pytorch":
        raise AlambicError(f"cannot evaluate runtime {runtime!r} here (pytorch and onnxruntime can be)")
    from alambic.train.loop import evaluate

    model = load_pretrained(model_dir, AutoModelForSequenceClassification).eval()
    if artifact is not None and artifact.is_file():  # a quantized state dict shipped instead of the weights
        import torch
        import torchao.quantization  # noqa: F401 - registers the int8 tensor classes for loading

        model.load_state_dict(torch.load(artifact, weights_only=True, mmap=True), assign=True)
    return evaluate(model, tokenized)


__all__ = ["METRICS_FILE", "TEACHER_RUNTIMES", "Teacher", "evaluate_artifact", "measure_config", "p50_ms",
           "teacher_measurement", "timed_teacher"]
