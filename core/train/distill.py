"""Distillation: a student learns from the teacher.

The ``kd`` loss reads the teacher's logits from the cache (computed once per teacher and data);
intermediate losses (hidden states, attention maps) need the teacher run online, every step.
A student that declares a ``donor`` (the MobileBERT adapter: a trained roberta-l4) is first
initialised and trained from the donor, then distilled from the teacher like any other.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from alambic.config import DistillConfig
from alambic.config_problems import describe_errors
from alambic.data.tokenize import MODEL_INPUTS, tokenizer_fingerprint
from alambic.errors import AlambicError, ConfigError
from alambic.fingerprint import model_digest, stable_hash
from alambic.model_sources import resolve_model
from alambic.options import NoOptions
from alambic.train import distributed
from alambic.train.distributed import prepare_model, report_epoch, resume_state, worker_context
from alambic.train.loop import TrainSettings
from alambic.train.models import check_vocab, from_teacher_layers, own_tokenizer, weights_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentRecord:
    key: str  # the distillation stage's hash
    student: str  # student plugin id
    path: Path  # a save_pretrained folder (safetensors), with its tokenizer and metrics.json
    metrics: dict[str, Any]
    reused: bool


# --- settings -------------------------------------------------------------------------------


def distill_settings(base: DistillConfig, overrides: Mapping[str, Any], where: str = "--set") -> DistillConfig:
    """The config's distillation settings with ``overrides`` applied, validated like the config."""
    try:
        return DistillConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(where, describe_errors(exc.errors(), root=DistillConfig)) from None


def train_settings(settings: DistillConfig) -> TrainSettings:
    return TrainSettings(
        epochs=settings.epochs, learning_rate=settings.learning_rate, batch_size=settings.batch_size,
        warmup_ratio=settings.warmup_ratio, weight_decay=settings.weight_decay,
        early_stopping_patience=settings.early_stopping_patience, seed=settings.seed,
        bucket=settings.bucket_by_length,
    )


def build_losses(loss_classes: Sequence[type], settings: DistillConfig, teacher_config: Any,
                 student_config: Any) -> list[Any]:
    """One module per loss id; each gets the settings its options name (kd: temperature, alpha)."""
    losses = []
    for cls in loss_classes:
        accepted = {f.name for f in dataclasses.fields(cls.Options)} if cls.Options is not NoOptions else set()
        options = {name: getattr(settings, name) for name in accepted if hasattr(settings, name)}
        losses.append(cls(teacher_config, student_config, layer_map=settings.layer_map,
                          weight=settings.loss_weights.get(cls.id, 1.0), **options))
    return losses


def kd_from_cache(teacher_logits: Any, temperature: float, alpha: float) -> Any:
    """fit()'s ``compute_loss`` for the ``kd`` loss against cached teacher logits (row -> logits)."""
    import numpy as np
    import torch

    from alambic.train.losses import kd_loss

    # a copy: an Arrow-backed array is read-only
    logits = torch.tensor(np.asarray(teacher_logits), dtype=torch.float32)

    def compute_loss(model: Any, batch: dict[str, Any], rows: Any) -> tuple[Any, dict[str, float]]:
        student = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits
        loss = kd_loss(student, logits[torch.as_tensor(rows)].to(student.device), batch["labels"], temperature, alpha)
        return loss, {"kd": float(loss.detach())}
    return compute_loss


def recover(model: Any, train: Any, validation: Any, teacher_logits: Any, settings: DistillConfig,
            epochs: int, progress: Any = None) -> dict[str, Any]:
    """Distill a pruned ``model`` back toward the teacher, in place, in this process: the ``kd``
    loss on the teacher's cached logits (row -> logits, the rows of ``train``) for ``epochs``, with
    the distill section's learning rate, batch size, temperature and alpha. Returns the best epoch's
    validation metrics (its weights are the ones kept). ``progress`` is fit's (step, steps, losses)."""
    from alambic.train.loop import fit

    if len(teacher_logits) != len(train):
        raise AlambicError(f"recovery: the teacher's logits cover {len(teacher_logits)} training rows, "
                           f"the pruned model's training split has {len(train)}")
    loss = kd_from_cache(teacher_logits, settings.temperature, settings.alpha)
    result = fit(model, train, validation, dataclasses.replace(train_settings(settings), epochs=epochs), loss,
                 progress=progress)
    model.eval()
    return {k: v for k, v in result.best_metrics.items() if k not in ("per_class", "confusion")}


# --- per worker -----------------------------------------------------------------------------


def build_student(spec: dict[str, Any], attn_implementation: str | None = None) -> Any:
    """The student, from where its init says: random (its config, at the run's vocabulary size
    and size overrides), pretrained weights (a local folder), or the teacher's own layers."""
    id2label = dict(enumerate(spec["label_names"]))
    init, cls = spec.get("init"), spec["student_class"]  # no init: random
    if init is None or init.kind == "random":
        return cls.build(len(id2label), id2label, vocab_size=spec["vocab_size"],
                         attn_implementation=attn_implementation, **spec["sizes"])
    if init.kind == "teacher-layers":
        return from_teacher_layers(init.folder, spec["sizes"].get("layers", cls.size.layers), attn_implementation)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}  # "weights": a folder
    return cls.from_pretrained(init.folder, len(id2label), id2label, config_key=init.config_key, **kw)


def distill_worker(loop_config: dict[str, Any]) -> None:
    """Per-worker function: build the student, (donor transfer,) distill, report each epoch."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from alambic.train.loop import fast_cpu_math, fit, seed_everything
    from alambic.train.losses import needs_online_teacher, output_flags

    context = worker_context(loop_config)
    fast_cpu_math()
    settings: DistillConfig = loop_config["settings"]
    spec = loop_config["student"]
    seed_everything(settings.seed)
    flags = output_flags(loop_config["loss_classes"])
    attention = "eager" if flags["output_attentions"] else None  # SDPA cannot return attention maps
    student = build_student(spec, attention)
    teacher_config = AutoConfig.from_pretrained(loop_config["teacher_path"])
    losses = build_losses(loop_config["loss_classes"], settings, teacher_config, student.config)
    online = needs_online_teacher(losses)
    device = context.device
    if loop_config.get("donor_path"):
        donor = AutoModelForSequenceClassification.from_pretrained(loop_config["donor_path"], use_safetensors=True)
        spec["student_class"].prepare_from_donor(student, donor.to(device), loop_config["train"], context, settings)
    teacher = None
    if online:
        teacher = AutoModelForSequenceClassification.from_pretrained(
            loop_config["teacher_path"], use_safetensors=True,
            attn_implementation=attention,
        ).to(device).eval().requires_grad_(False)
    cached = None if online else torch.tensor(loop_config["teacher_logits"])
    for loss in losses:
        loss.to(device)
    model = prepare_model(student, context)

    def compute_loss(model: Any, batch: dict[str, Any], rows: Any) -> tuple[Any, dict[str, float]]:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        student_out = model(**inputs, **flags)
        if teacher is not None:
            with torch.no_grad():
                teacher_out = teacher(**inputs, **flags)
        else:
            teacher_out = SimpleNamespace(logits=cached[torch.as_tensor(rows)].to(device))
        parts = {loss.id: loss(student_out, teacher_out, batch) for loss in losses}
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}

    extra = [(f"{loss.id}.{name}", p) for loss in losses for name, p in loss.named_parameters()]
    fit(model, loop_config["train"], loop_config["validation"], train_settings(settings), compute_loss,
        extra_parameters=extra, rank=context.rank, world_size=context.world_size, resume=resume_state(context),
        progress=loop_config.get("progress"),
        on_epoch=lambda epoch, metrics, is_best, state: report_epoch(model, metrics, is_best, context, state))


# --- driver ---------------------------------------------------------------------------------


def student_sizes(ctx: Any, student_id: str) -> dict[str, int]:
    """The size overrides the config gives this student (search.student_sizes), if any."""
    search = ctx.config.search
    sizes = search.student_sizes.get(student_id) if search else None
    return {k: v for k, v in sizes.model_dump().items() if v is not None} if sizes else {}


@dataclass(frozen=True)
class StudentInit:
    """Where a student's weights start: ``random`` (its config), ``weights`` (a folder of
    pretrained weights) or ``teacher-layers``; the tokenizer it reads with, and the key part
    that names the weights by content."""

    kind: str
    folder: str | None  # the weights folder, or the teacher's folder for teacher-layers
    tokenizer: Any
    tokenizer_from: str
    key: Any  # what enters the distill stage's key (content hashes, not paths)
    config_key: str = "--init"
    name: str = "random"  # the init as the user wrote it (for the record)


def student_init(ctx: Any, student_class: type, init: str | None, teacher: Any, sizes: dict[str, int]) -> StudentInit:
    """Resolve a student's initialisation: ``init`` (``--init``), else ``search.student_init``,
    else the student's default; random init is said in the log."""
    sid = student_class.id
    search = ctx.config.search
    where = "--init" if init else f"search.student_init.{sid}"
    init = init or (search.student_init.get(sid) if search else None) or student_class.default_init
    if init == "teacher-layers":
        if student_class.default_init != "teacher-layers":
            raise AlambicError(f"{where}: 'teacher-layers' is the student 'teacher-layers' (the teacher's own "
                               f"architecture); student '{sid}' has its own: give it weights or 'random'")
        extra = sorted(set(sizes) - {"layers"})
        if extra:
            raise AlambicError(f"search.student_sizes.{sid}: only 'layers' applies to the teacher's layers "
                               f"(width, heads and FFN are the teacher's); remove {', '.join(extra)}")
        tokenizer = teacher.tokenizer()
        return StudentInit("teacher-layers", str(teacher.path), tokenizer, "the teacher",
                           {"teacher-layers": sizes.get("layers", student_class.size.layers)}, where, init)
    if init == "random":
        if student_class.default_init == "teacher-layers":
            raise AlambicError(f"{where}: student 'teacher-layers' starts from the teacher's layers; "
                               f"for a random student use roberta-l4 or tinybert-4l")
        log.info("student %s starts from random weights (set search.student_init.%s or --init to start "
                 "from pretrained weights)", sid, sid)
        return StudentInit("random", None, ctx.prepared.tokenizer, "the tokenizer section", "random", where)
    if sizes:
        raise AlambicError(f"search.student_sizes.{sid} and {where} both given: pretrained weights fix the "
                           f"student's size; remove one")
    folder = str(weights_folder(resolve_model(init, ctx.registry, ctx.root, where), where))
    tokenizer = own_tokenizer(folder, where)
    origin = init
    if tokenizer is None:
        log.info("%s %s has no tokenizer of its own: student %s reads with the tokenizer section's", where, init, sid)
        tokenizer, origin = ctx.prepared.tokenizer, "the tokenizer section"
    return StudentInit("weights", folder, tokenizer, origin,
                       {"weights": model_digest(folder), "tokenizer": tokenizer_fingerprint(tokenizer)}, where, init)


def check_tokenizers(loss_classes: Sequence[type], init: StudentInit, teacher_tokenizer: Any) -> None:
    """Losses beyond the cached logits run the teacher on the student's batch: that needs one
    tokenizer. Cached logits are per example, so any two tokenizers distill through them."""
    from alambic.train.losses import needs_online_teacher

    if not needs_online_teacher(loss_classes):
        return
    if tokenizer_fingerprint(init.tokenizer) == tokenizer_fingerprint(teacher_tokenizer):
        return
    online = [cls.id for cls in loss_classes if cls.needs - {"logits"}]
    raise AlambicError(
        f"distill.losses {online} compare the teacher's and the student's tokens position by position, but "
        f"the student reads with {init.tokenizer_from}'s tokenizer ({len(init.tokenizer)} tokens) and the "
        f"teacher with its own ({len(teacher_tokenizer)}): use losses: [kd] (the cached logits), or a student "
        f"that shares the teacher's tokenizer (teacher-layers)")


def distill(ctx: Any, student_id: str, overrides: Mapping[str, Any] | None = None, *, local: bool = False,
            teacher: Any = None, init: str | None = None) -> StudentRecord:
    """Distill ``student_id`` from the run's teacher, or reuse the identical distillation.

    :param init: where the student's weights start (``--init``): a hub id, a folder, a packaged
        ``<source>:<model>``, or ``random``; default ``search.student_init``, else the student's own.
    """
    from alambic.train.losses import needs_online_teacher
    from alambic.train.teacher import finish_model_folder, teacher_logits, train_teacher

    settings = distill_settings(ctx.config.distill, overrides or {})
    teacher = teacher or train_teacher(ctx, local=local)
    student_class = ctx.registry["students"].get(student_id)
    loss_classes = [ctx.registry["distill_losses"].get(loss_id) for loss_id in settings.losses]
    donor = None
    if student_class.donor:
        donor = distill(ctx, student_class.donor, overrides, local=local, teacher=teacher)
    data = ctx.prepared
    sizes = student_sizes(ctx, student_id)
    start_from = student_init(ctx, student_class, init, teacher, sizes)
    key = stable_hash({"stage": "distill", "teacher": teacher.key, "data": data.tokenized_key,
                       "student": student_id, "sizes": sizes, "settings": settings,
                       "donor": donor.key if donor else None, "init": start_from.key})[:32]

    def build(folder: Path) -> dict[str, Any]:
        online = needs_online_teacher(loss_classes)
        check_tokenizers(loss_classes, start_from, teacher.tokenizer())
        spec = {"student_class": student_class, "label_names": data.label_names,
                "vocab_size": len(start_from.tokenizer), "sizes": sizes, "init": start_from}
        check_vocab(build_student(spec), start_from.tokenizer, start_from.folder or f"student '{student_id}' config",
                    start_from.tokenizer_from)  # before training starts
        tokenized, _ = ctx.tokenize(start_from.tokenizer)
        loop_config = {
            "student": spec,
            "settings": settings, "loss_classes": loss_classes, "teacher_path": str(teacher.path),
            "teacher_logits": None if online else teacher_logits(ctx, teacher),
            "donor_path": str(donor.path) if donor else None,
            "train": tokenized["train"], "validation": tokenized["validation"],
        }
        start = time.perf_counter()
        run = distributed.launch(distill_worker, loop_config, name=f"distill-{student_id}-{key[:12]}",
                                 scratch=ctx.cache_dir, ray_config=ctx.config.ray, local=local, quiet=ctx.quiet)
        extra = {"student": student_id, "sizes": sizes, "settings": settings.model_dump(),
                 "teacher": teacher.key, "teacher_test_accuracy": teacher.metrics["test"]["accuracy"],
                 "online_teacher": online, "donor": donor.key if donor else None,
                 "init": start_from.name,
                 "tokenizer_from": start_from.tokenizer_from}
        return finish_model_folder(run, folder, start_from.tokenizer, tokenized, time.perf_counter() - start, extra)

    manifest, reused = ctx.store.get_or_build_stage(key, "distill", build)
    record = StudentRecord(key=key, student=student_id, path=ctx.store.local_path(ctx.store.stage_path(key)),
                           metrics=manifest.meta, reused=reused)
    log.info("student %s %s %s: test accuracy %.4f", student_id, key[:12], "reused" if reused else "distilled",
             record.metrics["test"]["accuracy"])
    ctx.pm.hook.alambic_after_distill(context=ctx, student=record)
    return record
