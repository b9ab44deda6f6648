"""The training loop shared by teacher fine-tuning and distillation (per-worker code).

It runs the same in a plain process (world size 1, for notebooks and tests) and inside a Ray Train
worker, where ``rank``/``world_size`` come from the Ray context and the model is DDP-wrapped.

Batches are padded dynamically, to their longest row: THUCNews headlines are ~20 tokens, so padding
every batch to ``max_length`` would spend most of the compute on padding. Sorting rows by length
into alike batches (``bucket``) pads ~17% less again, but is off by default: headline length goes
with the class, so alike batches are skewed in class, and accuracy swung 3 points with the seed
(BENCHMARKS.md); unbucketed batches are the seeds' computation exactly. Every rank builds the
same global batches from the same seed and takes its own slice of each, so one step on W workers
averages the gradient of exactly the examples one worker would see in one step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from alambic.data.tokenize import MODEL_INPUTS
from alambic.train.metrics import per_class_scores

log = logging.getLogger(__name__)


#: batches sorted by length together when bucketing. Wider windows pad less but make batches more
#: alike (headline length goes with the class): roberta-l4 distilled 2 epochs on 8,000 THUCNews
#: headlines scored 76.3 / 79.6% on test (seeds 42 / 43) with windows of 50, 80.3 / 77.2% with 10,
#: 79.5 / 79.3% unbucketed (benchmarks/training_throughput.py --window-sweep)
BUCKET_WINDOW = 10


@dataclass(frozen=True)
class TrainSettings:
    """How to train; a frozen value so that it can be hashed into a stage key."""

    epochs: int = 3
    learning_rate: float = 3e-5
    batch_size: int = 32  # global: split across workers
    gradient_accumulation: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | fp16 | bf16 | no; only ever on with a CUDA device
    early_stopping_patience: int | None = None
    seed: int = 42
    bucket: bool = False  # sort rows by length into alike batches (every batch is padded dynamically)
    bucket_window: int = BUCKET_WINDOW  # batches sorted by length together
    eval_batch_size: int = 128


def fast_cpu_math() -> None:
    """Flush denormal floats to zero: tiny values (decaying optimizer moments, activation tails)
    otherwise fall onto the CPU's slow path; measured here, a roberta-l4 training step went from
    4.4 s to 0.38 s. No effect on GPUs; numerically harmless at these magnitudes (< 1e-38)."""
    torch.set_flush_denormal(True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before a model is built, so runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- batching -------------------------------------------------------------------------------


def global_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                   shuffle: bool = True, bucket: bool = True, window: int = BUCKET_WINDOW) -> list[np.ndarray]:
    """Row indices of each global batch, identical on every rank for a given (seed, epoch).

    Bucketing sorts examples by length inside windows of ``window`` batches, so each batch
    holds texts of similar length, then shuffles the batch order so training still sees classes mixed.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    if bucket:
        lengths = np.asarray(lengths)
        rows_per_window = batch_size * window
        order = np.concatenate([
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in np.array_split(order, max(1, math.ceil(len(order) / rows_per_window)))
        ]) if len(order) else order
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous slice of a global batch."""
    return np.array_split(batch, world_size)[rank]


def collate(rows: dict[str, list], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch of unpadded token lists to its longest row."""
    width = max(len(ids) for ids in rows["input_ids"])
    out: dict[str, torch.Tensor] = {}
    for key in MODEL_INPUTS:
        if key not in rows:
            continue
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([r + [fill] * (width - len(r)) for r in rows[key]], dtype=torch.long)
    out["labels"] = torch.tensor(rows["label"], dtype=torch.long)
    return out


def iterate(dataset: Any, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False,
            bucket: bool = True, rank: int = 0, world_size: int = 1, window: int = BUCKET_WINDOW):
    """Yield (row indices, padded batch) for this rank. Every rank yields the same number."""
    for batch in global_batches(dataset["length"], batch_size, seed, epoch, shuffle, bucket, window):
        if len(batch) < world_size:  # a last batch too small to give every worker a row: skip it
            continue                 # on all ranks alike, or DDP would wait forever
        rows = shard(batch, rank, world_size)
        yield rows, collate(dataset[rows.tolist()])


# --- metrics --------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    return np.bincount(labels * num_labels + predictions, minlength=num_labels**2).reshape(num_labels, num_labels)


def classification_metrics(confusion: np.ndarray, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and a per-class report from a confusion matrix (rows = true labels)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive, support = np.diag(confusion), confusion.sum(axis=1)
    precision, recall, f1 = per_class_scores(confusion)
    names = list(label_names) if label_names else [str(i) for i in range(len(confusion))]
    total = confusion.sum()
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()) if len(f1) else 0.0,
        "examples": int(total),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion": confusion.astype(int).tolist(),
    }


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: Any, batch_size: int = 128, *, rank: int = 0,
            world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, logits) of this rank's share of ``dataset``, in bucketed order."""
    model.eval()
    fast_cpu_math()
    device = next(model.parameters()).device
    indices, logits = [], []
    for rows, batch in iterate(dataset, batch_size, rank=rank, world_size=world_size):
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        logits.append(model(**inputs).logits.float().cpu().numpy())
        indices.append(rows)
    if not logits:
        return np.zeros(0, dtype=int), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(indices), np.concatenate(logits)


def evaluate(model: torch.nn.Module, dataset: Any, batch_size: int = 128, *, rank: int = 0,
             world_size: int = 1) -> dict[str, Any]:
    """Metrics on ``dataset``; with several workers each scores a share and the counts are summed."""
    names = dataset.features["label"].names
    rows, logits = predict(model, dataset, batch_size, rank=rank, world_size=world_size)
    labels = np.asarray(dataset["label"])[rows] if len(rows) else np.zeros(0, dtype=int)
    predictions = logits.argmax(axis=-1) if len(rows) else np.zeros(0, dtype=int)
    confusion = torch.from_numpy(confusion_matrix(labels, predictions, len(names)))
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(confusion)
    return classification_metrics(confusion.numpy(), names)


def evaluate_logits(logits_of: Callable[[dict[str, torch.Tensor]], np.ndarray], dataset: Any,
                    batch_size: int = 64) -> dict[str, Any]:
    """Metrics of another runtime on ``dataset``: ``logits_of(batch)`` gives its logits (numpy) for
    each batch (ONNX Runtime, ExecuTorch)."""
    names = dataset.features["label"].names
    labels, predictions = [], []
    for _, batch in iterate(dataset, batch_size):
        predictions.append(logits_of(batch).argmax(-1))
        labels.append(batch["labels"].numpy())
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=int)
    p = np.concatenate(predictions) if predictions else np.zeros(0, dtype=int)
    return classification_metrics(confusion_matrix(y, p, len(names)), names)


# --- the loop -------------------------------------------------------------------------------

#: compute_loss(model, batch, rows) -> (loss, {name: float}) ; rows are the dataset row indices
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], np.ndarray], tuple[torch.Tensor, dict[str, float]]]


def cross_entropy_loss(model, batch, rows):
    """Plain fine-tuning: cross-entropy on the labels."""
    logits = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits
    loss = F.cross_entropy(logits, batch["labels"])
    return loss, {"ce": float(loss.detach())}


@dataclass
class FitResult:
    best_metrics: dict[str, Any]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None: mixed precision is used only on a CUDA device."""
    if device.type != "cuda" or setting == "no":
        return None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], settings: TrainSettings,
                   eight_bit: bool = False, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights (the BERT recipe).

    ``fused`` (None = when every parameter is a float on a CPU or CUDA device): PyTorch's fused
    AdamW kernel, one pass over all parameters instead of a loop of small ops: a roberta-l4
    distillation step (batch 16) took 0.149 s against 0.197 s with the default implementation
    (benchmarks/training_throughput.py, BENCHMARKS.md "Training throughput").
    """
    decay = [p for n, p in params if p.requires_grad and not _no_decay(n)]
    no_decay = [p for n, p in params if p.requires_grad and _no_decay(n)]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if eight_bit:
        import bitsandbytes as bnb  # only reached with a CUDA GPU and bitsandbytes installed

        return bnb.optim.AdamW8bit(groups, lr=settings.learning_rate)
    trainable = decay + no_decay
    if fused is None:
        fused = bool(trainable) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in trainable)
    return torch.optim.AdamW(groups, lr=settings.learning_rate, fused=fused)


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def fit(model: torch.nn.Module, train: Any, validation: Any, settings: TrainSettings,
        compute_loss: LossFn = cross_entropy_loss, *, extra_parameters: Sequence[tuple[str, torch.nn.Parameter]] = (),
        rank: int = 0, world_size: int = 1, eight_bit_optimizer: bool = False,
        resume: dict[str, Any] | None = None,
        on_epoch: Callable[[int, dict[str, Any], bool, Callable[[], dict[str, Any]]], None] | None = None,
        progress: Callable[[int, int, dict[str, float]], None] | None = None) -> FitResult:
    """Train ``model`` (maybe DDP-wrapped); evaluate each epoch; keep the best state by macro-F1.

    ``on_epoch(epoch, metrics, is_best, training_state)`` is where a Ray worker reports and
    checkpoints; ``training_state()`` builds what :func:`training_state` returns, and giving that
    back as ``resume`` continues after its epoch (a restarted worker redoes at most one epoch).
    ``progress(step, steps, losses)`` feeds a progress bar.
    """
    from transformers import get_linear_schedule_with_warmup

    device = next(model.parameters()).device
    fast_cpu_math()
    torch.manual_seed(settings.seed)
    steps_per_epoch = sum(1 for b in global_batches(train["length"], settings.batch_size, settings.seed, 0,
                                                    bucket=settings.bucket, window=settings.bucket_window)
                          if len(b) >= world_size)
    updates = max(1, math.ceil(steps_per_epoch / settings.gradient_accumulation) * settings.epochs)
    optimizer = make_optimizer(list(model.named_parameters()) + list(extra_parameters), settings, eight_bit_optimizer)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * updates), updates)
    amp_dtype = autocast_dtype(settings.mixed_precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    log.info("training on %s, %d torch threads, rank %d of %d, %d steps per epoch", device,
             torch.get_num_threads(), rank, world_size, steps_per_epoch)
    result, stale, start = FitResult(best_metrics={}, best_epoch=-1), 0, 0
    if resume is not None:
        start, stale = restore_training_state(resume, model, optimizer, scheduler, scaler, extra_parameters, result)
        log.info("resuming after epoch %d of %d from its checkpoint", start, settings.epochs)
    for epoch in range(start, settings.epochs):
        if result.stopped_early:  # the checkpoint resumed from was taken as training stopped
            break
        model.train()
        step, epoch_start, loss_sums = 0, time.perf_counter(), {}
        for step, (rows, batch) in enumerate(iterate(train, settings.batch_size, seed=settings.seed, epoch=epoch,
                                                     shuffle=True, bucket=settings.bucket,
                                                     window=settings.bucket_window, rank=rank,
                                                     world_size=world_size), start=1):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, parts = compute_loss(model, batch, rows)
            scaler.scale(loss / settings.gradient_accumulation).backward()
            if step % settings.gradient_accumulation == 0 or step == steps_per_epoch:
                scaler.unscale_(optimizer)
                average_gradients(extra_parameters, world_size)
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            for name, value in parts.items():
                loss_sums[name] = loss_sums.get(name, 0.0) + value
            if progress:
                progress(epoch * steps_per_epoch + step, settings.epochs * steps_per_epoch, parts)
        metrics = evaluate(model, validation, settings.eval_batch_size, rank=rank, world_size=world_size)
        losses = {f"train_{k}": v / max(1, step) for k, v in loss_sums.items()}
        metrics = {"epoch": epoch, "epoch_seconds": round(time.perf_counter() - epoch_start, 1), **losses, **metrics}
        is_best = metrics["macro_f1"] > result.best_metrics.get("macro_f1", -1.0)
        result.history.append({k: v for k, v in metrics.items() if k not in ("per_class", "confusion")})
        if is_best:
            stale = 0
            result.best_metrics, result.best_epoch = metrics, epoch
            result.best_state = copy.deepcopy(unwrap(model).state_dict())
        else:
            stale += 1
        log.info("epoch %d/%d (%.0f s): %s, validation accuracy %.4f macro-F1 %.4f%s", epoch + 1, settings.epochs,
                 metrics["epoch_seconds"], ", ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                 metrics["accuracy"], metrics["macro_f1"], " (best)" if is_best else "")
        if settings.early_stopping_patience and stale >= settings.early_stopping_patience:
            result.stopped_early = True
            log.info("early stopping after epoch %d: no macro-F1 gain for %d epoch(s)", epoch, stale)
        if on_epoch:
            on_epoch(epoch, metrics, is_best, lambda: training_state(  # built only where it is saved
                epoch, stale, model, optimizer, scheduler, scaler, extra_parameters, result))
        if result.stopped_early:
            break
    if result.best_state is not None:
        unwrap(model).load_state_dict(result.best_state)
    return result


# --- resuming -------------------------------------------------------------------------------


def training_state(epoch: int, stale: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: Any, scaler: Any, extra_parameters: Sequence[tuple[str, torch.nn.Parameter]],
                   result: FitResult) -> dict[str, Any]:
    """Everything a restarted worker needs to go on after ``epoch`` as if it had never stopped.

    Plain tensors, numbers and strings only, so that it loads with ``torch.load(weights_only=True)``.
    The best weights are stored apart only when they are not the current ones.
    """
    return {
        "epoch": epoch, "stale": stale, "stopped_early": result.stopped_early,
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "extra": {name: p.detach() for name, p in extra_parameters},
        "best_epoch": result.best_epoch, "best_metrics": result.best_metrics, "history": result.history,
        "best_state": None if result.best_epoch == epoch else result.best_state,
        "torch_rng": torch.get_rng_state(),
    }


def restore_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any, scaler: Any, extra_parameters: Sequence[tuple[str, torch.nn.Parameter]],
                           result: FitResult) -> tuple[int, int]:
    """Load a :func:`training_state` into the objects ``fit`` built; return (next epoch, stale epochs)."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    with torch.no_grad():
        for name, parameter in extra_parameters:
            parameter.copy_(state["extra"][name])
    torch.set_rng_state(state["torch_rng"])
    result.best_epoch, result.best_metrics = state["best_epoch"], state["best_metrics"]
    result.history, result.stopped_early = list(state["history"]), state["stopped_early"]
    best = state["best_state"] if state["best_state"] is not None else state["model"]
    result.best_state = {k: v.clone() for k, v in best.items()}
    return state["epoch"] + 1, state["stale"]


def average_gradients(parameters: Sequence[tuple[str, torch.nn.Parameter]], world_size: int) -> None:
    """DDP syncs the model's gradients; parameters outside it (loss projections, a model not
    DDP-wrapped yet) are averaged over the workers here, by hand."""
    if world_size == 1 or not torch.distributed.is_initialized():
        return
    for _, p in parameters:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world_size


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int, dict[str, float]], None] | None]:
    """A progress bar fed by fit's ``progress(step, steps, losses)``; None when disabled."""
    if not enabled:
        yield None
        return

    with tqdm(desc=label, unit="step", leave=False) as bar:
        def update(step: int, steps: int, losses: dict[str, float]) -> None:
            bar.total, bar.n = steps, step
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            bar.refresh()
        yield update
