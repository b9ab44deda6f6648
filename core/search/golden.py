"""The golden gate: every candidate and the teacher scored on ``data.golden`` (the user's hand-checked
rows), and the limits ``select`` and ``export`` hold a candidate to against the teacher there.

::

    golden = golden_set(ctx)                          # data.golden's rows and their key; None without it
    teacher = golden_figures(teacher_scores(ctx, teacher.key, teacher.path, golden), "golden_teacher")
    row |= golden_figures(stage_scores(ctx, record.path, record.record, golden)) | teacher   # a trial
    golden_limits(0.9, 2.0, 5.0)                      # select.{min_golden_accuracy, max_golden_drop,
                                                      #   max_class_recall_drop}: Limits a policy adds
    section = export_gate(ctx, stage_dir, force=False)   # export: GoldenGateFailed when a limit is missed

Each score is an ``evaluation`` stage of the store, keyed by the model's stage, the golden rows and
the runtime: the search scores a candidate once, and the report and export find it. A candidate is
scored as it ships, in its runtime (ONNX Runtime for an ONNX graph, PyTorch for a model folder or a
quantized state dict), its rows tokenized by its own tokenizer (a pruned vocabulary has its own).
A runtime that cannot run here (Core ML) keeps no module in its stage: its stage's PyTorch model is
scored instead, which :data:`NOTES` says beside the figures.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alambic.compress.chain import MODEL_DIR, RECORD_FILE
from alambic.compress.measure import onnx_evaluate, vocab_files
from alambic.compress.onnx_export import ort_session
from alambic.config import GOLDEN_LIMITS, SelectConfig
from alambic.data.dataset import load_golden, progress_bars
from alambic.data.tokenize import MODEL_INPUTS
from alambic.errors import AlambicError
from alambic.fingerprint import file_sha256, model_digest, stable_hash
from alambic.paths import inside
from alambic.search.select import Limit
from alambic.train.models import load_pretrained

METRICS_FILE = "metrics.json"
SCORED = ("pytorch", "onnxruntime")  # the runtimes a golden score runs in here
#: why a figure was not made in the candidate's own runtime
NOTES = {"coreml": "Core ML cannot run here: its stage's PyTorch model scored (fp32, before Core ML's compression)"}


# --- scoring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenSet:
    """data.golden's raw rows (text, label: the run's label names) and a key naming what they are."""

    rows: Any  # a datasets.Dataset
    key: str


def golden_set(ctx: Any) -> GoldenSet | None:
    """The run's data.golden, read as its data files are; None when the config has none."""
    rows = load_golden(ctx.config.data, ctx.prepared.label_names)
    if rows is None:
        return None
    key = stable_hash({"golden": file_sha256(ctx.config.data.golden), "data": ctx.prepared.report.fingerprint})
    return GoldenSet(rows, key)


def evaluate_rows(ctx: Any, model_key: str, model_dir: Path, rows: Any, rows_key: str, *,
                  runtime: str = "pytorch", artifact: Path | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion of a shipped artifact on raw rows (text,
    label), tokenized by the model folder's own tokenizer; cached as an ``evaluation`` stage keyed
    by the model's stage and ``rows_key`` (what the rows are)."""
    stage = stable_hash({"stage": "evaluation", "model": model_key, "rows": rows_key, "runtime": runtime,
                         "max_length": ctx.config.tokenizer.max_length})[:32]

    def build(folder: Path) -> dict[str, Any]:
        metrics = _evaluate(ctx, model_dir, rows, runtime, artifact)
        (folder / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
        return {k: metrics[k] for k in ("accuracy", "macro_f1", "examples")}

    ctx.store.get_or_build_stage(stage, "evaluation", build)
    done = ctx.store.local_path(ctx.store.stage_path(stage)) / METRICS_FILE
    return json.loads(done.read_text(encoding="utf-8"))


def _evaluate(ctx: Any, model_dir: Path, rows: Any, runtime: str, artifact: Path | None) -> dict[str, Any]:
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
        raise AlambicError(f"cannot evaluate runtime {runtime!r} here ({' and '.join(SCORED)} can be)")
    from alambic.train.loop import evaluate

    model = load_pretrained(model_dir, AutoModelForSequenceClassification).eval()
    if artifact is not None and artifact.is_file():  # a quantized state dict shipped instead of the weights
        import torch
        import torchao.quantization  # noqa: F401 - registers the int8 tensor classes for loading

        model.load_state_dict(torch.load(artifact, weights_only=True, mmap=True), assign=True)
    return evaluate(model, tokenized)


def stage_scores(ctx: Any, stage: Path, record: Mapping[str, Any], golden: GoldenSet) -> dict[str, Any]:
    """A compress stage's shipped artifact on the golden rows, in its runtime (record.json says which;
    Core ML: the stage's PyTorch model, see :data:`NOTES`); ``scored_in`` and ``note`` say how."""
    runtime = record.get("runtime", "pytorch")
    model_dir = stage / MODEL_DIR if (stage / MODEL_DIR).is_dir() else stage  # or a save_pretrained folder
    artifact = None
    if runtime in SCORED and record.get("artifact"):
        artifact = inside(stage, record["artifact"], source=f"{stage}/{RECORD_FILE}", key="artifact")
    scored_in = runtime if runtime in SCORED else "pytorch"
    key = record.get("key") or model_digest(model_dir)
    scores = evaluate_rows(ctx, key, model_dir, golden.rows, golden.key, runtime=scored_in, artifact=artifact)
    return scores | {"scored_in": scored_in, "note": NOTES.get(runtime)}


def teacher_scores(ctx: Any, key: str, path: Path, golden: GoldenSet) -> dict[str, Any]:
    """The teacher (fp32, PyTorch) on the golden rows: once per teacher and golden file."""
    return evaluate_rows(ctx, key, Path(path), golden.rows, golden.key)


def current_teacher_scores(ctx: Any, golden: GoldenSet) -> dict[str, Any] | None:
    """The run's current teacher on the golden rows; None when it is not trained (nothing trains here)."""
    from alambic.train.teacher import current_teacher_key

    key = current_teacher_key(ctx)
    if ctx.store.load_manifest(ctx.store.stage_path(key)) is None:
        return None
    return teacher_scores(ctx, key, ctx.store.local_path(ctx.store.stage_path(key)), golden)


def recall(scores: Mapping[str, Any]) -> dict[str, float]:
    """Recall per class that has golden rows (a class with none has no recall to lose)."""
    return {name: c["recall"] for name, c in scores["per_class"].items() if c["support"]}


def golden_figures(scores: Mapping[str, Any] | None, prefix: str = "golden") -> dict[str, Any]:
    """Results columns: ``golden_accuracy``, ``golden_examples``, ``golden_recall`` (per class); with
    ``prefix="golden_teacher"`` the teacher's accuracy and recall."""
    if scores is None:
        return {f"{prefix}_accuracy": None, f"{prefix}_recall": None}
    found = {f"{prefix}_accuracy": scores["accuracy"], f"{prefix}_recall": recall(scores)}
    return found | ({"golden_examples": scores["examples"]} if prefix == "golden" else {})


# --- the gate -------------------------------------------------------------------------------


def _recall_of(row: Mapping[str, Any], key: str) -> dict[str, float]:
    value = row.get(key)
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _number(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return float("nan") if value is None else float(value)


class GoldenDrop(Limit):
    """Points the candidate's golden accuracy lies below the teacher's."""

    def value(self, row: Mapping[str, Any]) -> float:
        return round(100 * (_number(row, "golden_teacher_accuracy") - _number(row, "golden_accuracy")), 6)

    def describe(self, row: Mapping[str, Any]) -> str:
        drop = self.value(row)
        if math.isnan(drop):
            return f"{self.label} not measured (no golden figures for the candidate or the teacher)"
        change = f"teacher {row['golden_teacher_accuracy']:.3f} → {row['golden_accuracy']:.3f}"
        if self.miss(drop):
            return f"golden accuracy fell {drop:.1f} points ({change}), more than {self.bound:g}"
        return f"{self.label} {drop:.1f} pt ({change}) <= {self.bound:g} pt"


class ClassRecallDrop(Limit):
    """The largest fall of one class's golden recall against the teacher's, in points."""

    def drops(self, row: Mapping[str, Any]) -> dict[str, float]:
        """Points each class's recall fell, the worst first."""
        teacher, found = _recall_of(row, "golden_teacher_recall"), _recall_of(row, "golden_recall")
        drops = {c: round(100 * (r - found[c]), 6) for c, r in teacher.items() if c in found}
        return dict(sorted(drops.items(), key=lambda item: -item[1]))

    def value(self, row: Mapping[str, Any]) -> float:
        drops = self.drops(row)
        return max(drops.values()) if drops else float("nan")

    def describe(self, row: Mapping[str, Any]) -> str:
        drops = self.drops(row)
        if not drops:
            return f"{self.label} not measured (no golden recall for the candidate or the teacher)"
        teacher, found = _recall_of(row, "golden_teacher_recall"), _recall_of(row, "golden_recall")
        change = {c: f"teacher {teacher[c]:.3f} → {found[c]:.3f}" for c in drops}
        over = [c for c, d in drops.items() if self.miss(d)]
        if over:  # every class that fell too far, the worst first
            return "; ".join(f"golden recall of {c} fell {drops[c]:.1f} points ({change[c]}), more than "
                             f"{self.bound:g}" for c in over)
        worst = next(iter(drops))
        return f"{self.label} {drops[worst]:.1f} pt (worst: {worst}, {change[worst]}) <= {self.bound:g} pt"


def golden_limits(min_accuracy: float | None = None, max_drop: float | None = None,
                  max_class_drop: float | None = None) -> list[Limit]:
    """The golden gate as selection limits (``select.min_golden_accuracy``, ``max_golden_drop``,
    ``max_class_recall_drop``); none when none is set."""
    limits: list[Limit] = []
    if min_accuracy is not None:
        limits.append(Limit("golden_accuracy", ">=", min_accuracy, "golden accuracy"))
    if max_drop is not None:
        limits.append(GoldenDrop("golden_accuracy", "<=", max_drop, "golden accuracy drop vs the teacher", "pt"))
    if max_class_drop is not None:
        limits.append(ClassRecallDrop("golden_recall", "<=", max_class_drop, "golden recall drop of any class "
                                      "vs the teacher", "pt"))
    return limits


def config_limits(select: SelectConfig) -> list[Limit]:
    """The run config's golden gate (its select section)."""
    return golden_limits(*(getattr(select, key) for key in GOLDEN_LIMITS))


class GoldenGateFailed(AlambicError):
    """The candidate to export misses a golden limit; export refuses it unless forced."""


def export_gate(ctx: Any, stage_dir: Path, *, candidate: str | None = None, force: bool = False
                ) -> dict[str, Any] | None:
    """verification.json's ``golden`` section for the stage to export: its figures on data.golden,
    the teacher's, and the gate's verdict (the config's golden limits); None without data.golden.

    :raises GoldenGateFailed: a limit is missed and ``force`` is not given.
    """
    golden = golden_set(ctx)
    if golden is None:
        return None
    record_file = Path(stage_dir) / RECORD_FILE
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    scores = stage_scores(ctx, Path(stage_dir), record, golden)
    teacher = current_teacher_scores(ctx, golden)
    row = golden_figures(scores) | golden_figures(teacher, "golden_teacher")
    limits = config_limits(ctx.config.select)
    misses = [limit.describe(row) for limit in limits if limit.miss(limit.value(row))]
    section = {"rows": scores["examples"], "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
               "recall": row["golden_recall"], "scored_in": scores["scored_in"], "note": scores["note"],
               "teacher": None if teacher is None else {"accuracy": teacher["accuracy"],
                                                        "recall": row["golden_teacher_recall"]},
               "gate": {"limits": [limit.rule() for limit in limits], "passed": not misses, "misses": misses,
                        "forced": bool(misses) and force}}
    if misses and not force:
        who = f"candidate {candidate}" if candidate else f"stage {stage_dir}"
        raise GoldenGateFailed(f"export refused: {who} fails the golden gate on data.golden ({scores['examples']} "
                               f"rows): {'; '.join(misses)}. Choose another (alambic select RUN), relax the select "
                               "section's golden limits, or pass --force to export it anyway (verification.json "
                               "records that it was forced)")
    return section


__all__ = ["ClassRecallDrop", "GoldenDrop", "GoldenGateFailed", "GoldenSet", "NOTES", "config_limits",
           "current_teacher_scores", "evaluate_rows", "export_gate", "golden_figures", "golden_limits",
           "golden_set", "recall", "stage_scores", "teacher_scores"]
