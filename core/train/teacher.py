"""The teacher: fine-tune (or build and train) a BERT classifier, and cache its logits once.

Driver side (``train_teacher``, ``teacher_logits``) and per-worker side (``teacher_worker``) are
kept apart: the worker runs inside a Ray Train ``TorchTrainer`` (or a plain process in tests).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.config import TeacherConfig
from alambic.data.tokenize import tokenizer_fingerprint
from alambic.fingerprint import model_digest, stable_hash
from alambic.model_sources import resolve_model
from alambic.train import distributed
from alambic.train.distributed import prepare_model, report_epoch, resume_state, worker_context
from alambic.train.loop import TrainSettings
from alambic.train.models import check_vocab, load_pretrained, own_tokenizer, params, teacher_config

if TYPE_CHECKING:
    from alambic.train.distributed import TrainRun

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TeacherRecord:
    key: str  # the teacher stage's hash
    path: Path  # a save_pretrained folder (safetensors), with its tokenizer and metrics.json
    metrics: dict[str, Any]
    reused: bool

    def tokenizer(self) -> Any:
        """The tokenizer the teacher reads with (saved in its folder)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))


@dataclass(frozen=True)
class TeacherSource:
    """Where the teacher starts: pretrained weights (a local folder) and the tokenizer they came
    with, or None = built from ``teacher.architecture`` with the run's tokenizer."""

    folder: str | None  # a local folder or a hub id; None = from config
    tokenizer: Any
    tokenizer_from: str  # said in the log and in errors
    digest: str  # the weights by content (a hub id: its name)


def teacher_source(ctx: Any) -> TeacherSource:
    """Resolve ``teacher.model`` (hub id, folder, packaged model) and its own tokenizer."""
    config, data = ctx.config.teacher, ctx.prepared
    if config.model is None:
        return TeacherSource(None, data.tokenizer, "the tokenizer section", "random")
    folder = resolve_model(config.model, ctx.registry, ctx.root, "teacher.model")
    tokenizer = own_tokenizer(folder, "teacher.model")
    if tokenizer is None:
        log.info("teacher.model %s has no tokenizer of its own: it reads with the tokenizer section's", config.model)
        tokenizer, origin = data.tokenizer, "the tokenizer section"
    else:
        origin = config.model
    digest = model_digest(folder) if Path(folder).is_dir() else config.model
    return TeacherSource(folder, tokenizer, origin, digest)


def pruned_vocab_source(ctx: Any, source: TeacherSource) -> TeacherSource:
    """The pretrained teacher with only the vocabulary its train split uses (plus specials), a
    stage of its own: a 250k-piece embedding would be most of what the optimizer carries."""
    from transformers import AutoModel

    from alambic.compress.pruning import PruneContext

    tokenized, tokenized_key = ctx.tokenize(source.tokenizer)
    key = stable_hash({"stage": "teacher-vocab", "weights": source.digest, "data": tokenized_key,
                       "tokenizer": tokenizer_fingerprint(source.tokenizer)})[:32]

    def build(folder: Path) -> dict[str, Any]:
        model = load_pretrained(source.folder, AutoModel, config_key="teacher.model")
        check_vocab(model, source.tokenizer, ctx.config.teacher.model, source.tokenizer_from)
        vocab = ctx.registry["pruners"].get("vocab")
        result = vocab.apply(model, vocab.options(), PruneContext(train=tokenized["train"], tokenizer=source.tokenizer))
        result.model.save_pretrained(folder, safe_serialization=True)
        result.tokenizer.save_pretrained(folder)
        return {k: result.report[k] for k in ("vocab_before", "vocab_after", "params_before", "params_after")}

    manifest, reused = ctx.store.get_or_build_stage(key, "teacher-vocab", build)
    log.info("teacher vocabulary %s: %d -> %d pieces (the train split's), %d -> %d parameters",
             "reused" if reused else "pruned", manifest.meta["vocab_before"], manifest.meta["vocab_after"],
             manifest.meta["params_before"], manifest.meta["params_after"])
    path = ctx.store.local_path(ctx.store.stage_path(key))
    from transformers import AutoTokenizer

    return TeacherSource(str(path), AutoTokenizer.from_pretrained(str(path)), source.tokenizer_from, source.digest)


def teacher_settings(config: TeacherConfig) -> TrainSettings:
    return TrainSettings(
        epochs=config.epochs, learning_rate=config.learning_rate, batch_size=config.batch_size,
        gradient_accumulation=config.gradient_accumulation, warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay, mixed_precision=config.mixed_precision,
        early_stopping_patience=config.early_stopping_patience, seed=config.seed,
        bucket=config.bucket_by_length,
    )


# --- per worker -----------------------------------------------------------------------------


def build_teacher(spec: dict[str, Any]) -> Any:
    """The teacher model: loaded from a hub id / local folder, or built from its architecture."""
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    id2label = dict(enumerate(spec["label_names"]))
    num_labels = len(id2label)
    if spec["model"] is None:
        config = teacher_config(num_labels, id2label, spec["architecture"], vocab_size=spec["vocab_size"])
        return BertForSequenceClassification(config)
    return load_pretrained(spec["model"], AutoModelForSequenceClassification, num_labels=num_labels,
                           id2label=id2label, trust_remote_code=spec["trust_remote_code"],
                           config_key="teacher.model")


def freeze_below_top(model: Any, top_layers: int | None) -> None:
    """Train only the top-k encoder layers (and the pooler and head): the seeds' GPU recipe."""
    if top_layers is None:
        return
    layers = model.base_model.encoder.layer
    frozen = len(layers) - top_layers
    for parameter in model.base_model.embeddings.parameters():
        parameter.requires_grad = False
    for layer in layers[:max(0, frozen)]:
        for parameter in layer.parameters():
            parameter.requires_grad = False
    log.info("training the top %d of %d encoder layers", min(top_layers, len(layers)), len(layers))


def use_eight_bit(optimizer: str) -> bool:
    """8-bit AdamW needs bitsandbytes and a CUDA GPU; otherwise plain AdamW (and say so)."""
    if optimizer != "adamw-8bit":
        return False

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        return True
    log.warning("teacher.optimizer adamw-8bit needs bitsandbytes and a CUDA GPU: using plain AdamW")
    return False


def teacher_worker(loop_config: dict[str, Any]) -> None:
    """Per-worker training function: build the teacher, train it, report each epoch to Ray."""
    from alambic.train.loop import fit, seed_everything

    context = worker_context(loop_config)
    spec = loop_config["model"]
    seed_everything(loop_config["settings"].seed)
    model = build_teacher(spec)
    freeze_below_top(model, spec["train_top_layers"])
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    model = prepare_model(model, context)
    fit(model, loop_config["train"], loop_config["validation"], loop_config["settings"],
        rank=context.rank, world_size=context.world_size,
        eight_bit_optimizer=use_eight_bit(spec["optimizer"]), resume=resume_state(context),
        progress=loop_config.get("progress"),
        on_epoch=lambda epoch, metrics, is_best, state: report_epoch(model, metrics, is_best, context, state))


# --- driver ---------------------------------------------------------------------------------


def teacher_key(config: TeacherConfig, tokenized_key: str, label_names: list[str], weights: str = "random",
                tokenizer: str = "") -> str:
    """The teacher stage's key: its settings, the data, the labels, its starting weights by
    content and the tokenizer it reads with."""
    return stable_hash({"stage": "teacher", "teacher": config, "data": tokenized_key, "labels": label_names,
                        "weights": weights, "tokenizer": tokenizer})[:32]


def current_teacher_key(ctx: Any, source: TeacherSource | None = None) -> str:
    """The key of the run's teacher stage (trained or not yet): nothing is trained."""
    source = source or teacher_source(ctx)
    data = ctx.prepared
    return teacher_key(ctx.config.teacher, data.tokenized_key, data.label_names, source.digest,
                       tokenizer_fingerprint(source.tokenizer))


def train_teacher(ctx: Any, local: bool = False) -> TeacherRecord:
    """Train the teacher, or reuse the one this config and data already produced.

    Training runs on Ray Train; ``local`` runs the same worker function in this process.
    """
    config, data = ctx.config.teacher, ctx.prepared
    if config.trust_remote_code:  # said before anything of it is fetched or run
        log.warning("teacher.trust_remote_code is on: code shipped with %s will run on this machine",
                    config.model)
    source = teacher_source(ctx)
    key = current_teacher_key(ctx, source)
    spec = {
        "model": source.folder, "architecture": config.architecture.model_dump(),
        "label_names": data.label_names, "vocab_size": len(source.tokenizer),
        "trust_remote_code": config.trust_remote_code, "train_top_layers": config.train_top_layers,
        "gradient_checkpointing": config.gradient_checkpointing, "optimizer": config.optimizer,
    }

    def build(folder: Path) -> dict[str, Any]:
        nonlocal source
        if source.folder is not None and config.prune_vocab:
            source = pruned_vocab_source(ctx, source)
            spec["model"], spec["vocab_size"] = source.folder, len(source.tokenizer)
        # fail before Ray starts, not in a worker
        check_vocab(build_teacher(spec), source.tokenizer, config.model or "teacher.architecture",
                    source.tokenizer_from)
        tokenized, _ = ctx.tokenize(source.tokenizer)
        start = time.perf_counter()
        run = distributed.launch(
            teacher_worker,
            {"model": spec, "settings": teacher_settings(config),
             "train": tokenized["train"], "validation": tokenized["validation"]},
            name=f"teacher-{key[:12]}", scratch=ctx.cache_dir, ray_config=ctx.config.ray,
            local=local, quiet=ctx.quiet,
        )
        return finish_model_folder(run, folder, source.tokenizer, tokenized, time.perf_counter() - start,
                                   {"weights": config.model or "random", "tokenizer_from": source.tokenizer_from})

    manifest, reused = ctx.store.get_or_build_stage(key, "teacher", build)
    path = ctx.store.local_path(ctx.store.stage_path(key))
    record = TeacherRecord(key=key, path=path, metrics=manifest.meta, reused=reused)
    log.info("teacher %s %s: test accuracy %.4f", key[:12], "reused" if reused else "trained",
             record.metrics["test"]["accuracy"])
    ctx.pm.hook.alambic_after_teacher(context=ctx, teacher=record)
    return record


def finish_model_folder(run: TrainRun, folder: Path, tokenizer: Any, tokenized: Any, wall_time_s: float,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the run's best checkpoint into ``folder`` with the model's own tokenizer, score it on
    test (``tokenized`` by that tokenizer), write metrics; then discard the run's scratch (its
    checkpoints were for resuming; the stage has it now)."""
    from transformers import AutoModelForSequenceClassification

    from alambic.train.loop import evaluate

    checkpoint = run.checkpoint
    if checkpoint is None:
        raise RuntimeError("training finished without reporting a checkpoint")
    for item in checkpoint.iterdir():
        if item.is_file():
            shutil.copy2(item, folder / item.name)
    validation = json.loads((folder / METRICS_FILE).read_text())
    tokenizer.save_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    test = evaluate(model, tokenized["test"])
    metrics = {"validation": validation, "test": test, "params": params(model),
               "wall_time_s": round(wall_time_s, 1), **(extra or {})}
    (folder / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2))
    run.discard()
    return {"validation": _headline(validation), "test": _headline(test), "params": metrics["params"],
            "wall_time_s": metrics["wall_time_s"], **(extra or {})}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "epoch") if k in metrics}


def teacher_logits(ctx: Any, teacher: TeacherRecord) -> Any:
    """The teacher's logits on the train split, (rows, labels) float32: computed once per
    (teacher, tokenized data) and stored as Parquet; every distillation reads them from there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = ctx.prepared
    key = stable_hash({"stage": "teacher-logits", "teacher": teacher.key, "data": data.tokenized_key})[:32]

    def build(folder: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForSequenceClassification

        from alambic.train.loop import predict

        model = AutoModelForSequenceClassification.from_pretrained(teacher.path, use_safetensors=True)
        tokenized, _ = ctx.tokenize(teacher.tokenizer())  # the teacher reads with its own tokenizer
        start = time.perf_counter()
        rows, logits = predict(model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenized["train"])
        order = np.argsort(rows)
        table = pa.table({"row": pa.array(rows[order], pa.int64()),
                          "logits": pa.FixedSizeListArray.from_arrays(
                              pa.array(logits[order].astype(np.float32).ravel()), logits.shape[1])})
        pq.write_table(table, folder / "logits.parquet")
        return {"rows": int(len(rows)), "seconds": round(time.perf_counter() - start, 1)}

    _, reused = ctx.store.get_or_build_stage(key, "teacher-logits", build)
    log.info("teacher logits %s", "reused" if reused else "computed")
    table = pq.read_table(ctx.store.local_path(ctx.store.stage_path(key)) / "logits.parquet")
    logits = np.asarray(table.column("logits").combine_chunks().flatten()).reshape(table.num_rows, -1)
    return logits
