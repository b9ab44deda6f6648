"""Training throughput on THUCNews: padded vs length-bucketed batches, online vs cached teacher logits.

For distillation and for teacher fine-tuning; with --accuracy, the test accuracy each recipe reaches.

    python benchmarks/training_throughput.py [--steps 40] [--batch-size 16] [--max-length 128]
    python benchmarks/training_throughput.py --accuracy [--train-examples 8000] [--epochs 2]
    python benchmarks/training_throughput.py --window-sweep [--windows 0,50,10] [--seeds 42,43]

Data: the 45,000 THUCNews training headlines of examples/thucnews.yaml (~20 tokens each, <= 32).
CPU by default; every variant of a run starts from the same weights, side by side in one process.

Throughput (the default). Teacher: bert-base-chinese's architecture from config, random weights
(speed does not depend on them); student: --student (roberta-l4), full size. Each variant times
--steps training steps (collate, loss, backward, gradient clipping, AdamW) after 3 warm-up steps,
on the same headlines: the first batches of a bucketed epoch (its batch order is shuffled, so they
are a random sample of its batches), and for the unbucketed variants the same rows in random batches.
One full epoch is projected as s/step x steps per epoch.

  distillation (kd loss, the config's temperature and alpha)
    online, padded to 128   the teacher runs every step, every batch padded to --max-length (the seeds')
    online, per batch       the teacher runs every step, each batch padded to its longest row
    online, bucketed        the same, rows sorted by length into alike batches (bucket_by_length)
    cached, ...             the same three with the teacher's logits read from a cache
    ..., fused AdamW        per batch and bucketed with PyTorch's fused AdamW kernel; padded per
                            batch is alambic's default
  teacher fine-tuning (the bert-base-sized teacher, cross-entropy): padded to 128 (the seeds'),
    per batch, bucketed, and the last two with the fused AdamW kernel
The other rows use PyTorch's default (for-loop) AdamW, as the seeds' do.

The cache is not free: computing the teacher's logits once for the 45,000 headlines (projected from
the sampled rows) is charged to alambic's epoch, spread over the config's distill.epochs.

Accuracy (--accuracy). The config's teacher (4 layers, hidden 256), reused from the store (or
trained there first, ~10 min on 2 cores); at each of --seeds, one initial --student distilled on
the first --train-examples headlines for --epochs with the config's distill settings (batch size,
learning rate, T, alpha), through alambic.train.loop.fit, three ways:

  seeds              teacher run online every step, batches padded to --max-length
  alambic's default  teacher logits computed once on the subset (timed), each batch padded to its
                     longest row
  bucket_by_length   the same, rows sorted by length into alike batches

With --no-dropout the student trains without dropout, so the seeds' recipe and alambic's default
run the same arithmetic on the same batches (up to float rounding): what is left between them is
what padding and the cache change, not the draw of dropout masks.

Each is scored on the 10,000 test headlines; wall time covers the logits, training and the
validation after each epoch (10,000 headlines, the same for all), not the test scoring. A summary
gives each recipe's mean over the seeds and its difference from the seeds' recipe, paired by seed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from alambic import machine
from alambic.data.tokenize import MODEL_INPUTS
from alambic.run import RunContext
from alambic.train.distill import kd_from_cache, train_settings
from alambic.train.loop import (
    BUCKET_WINDOW,
    LossFn,
    TrainSettings,
    collate,
    cross_entropy_loss,
    evaluate,
    fast_cpu_math,
    fit,
    global_batches,
    make_optimizer,
    predict,
    seed_everything,
)
from alambic.train.losses import kd_loss
from alambic.train.models import teacher_config
from alambic.train.teacher import train_teacher

WARMUP_STEPS = 3

# --- losses: fit()'s compute_loss(model, batch, rows) -------------------------------------------


def kd_online(teacher: torch.nn.Module, temperature: float, alpha: float) -> LossFn:
    """KD with the teacher run on every batch (the seeds' recipe)."""
    def compute_loss(model, batch, rows):
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        loss = kd_loss(model(**inputs).logits, teacher_logits, batch["labels"], temperature, alpha)
        return loss, {"kd": float(loss.detach())}
    return compute_loss


def padded_to(width: int, compute_loss: LossFn) -> LossFn:
    """The same loss on batches padded to ``width`` tokens, as a fixed-shape pipeline feeds them."""
    def padded(model, batch, rows):
        batch = {k: F.pad(v, (0, max(0, width - v.shape[1]))) if v.dim() == 2 else v for k, v in batch.items()}
        return compute_loss(model, batch, rows)
    padded.width = width  # type: ignore[attr-defined]  (the tokens it processes)
    return padded


def cached_logits(teacher: torch.nn.Module, dataset: Any) -> torch.Tensor:
    """The teacher's logits for every row of ``dataset``, indexed by row (alambic's cache)."""
    rows, logits = predict(teacher, dataset)
    cache = torch.zeros(len(dataset), logits.shape[1])
    cache[torch.as_tensor(rows)] = torch.from_numpy(logits)
    return cache


# --- throughput -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measured:
    group: str  # distillation | teacher fine-tuning: ratios are against the group's first (the seeds')
    name: str
    seconds_per_step: float
    real_tokens: int  # in the timed steps
    padded_tokens: int  # processed in the timed steps, padding included
    steps_per_epoch: int

    @property
    def epoch_seconds(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch


def padded_tokens(batches: list[np.ndarray], lengths: np.ndarray, width: int = 0) -> int:
    """Tokens processed: each batch padded to its longest row, or to ``width`` if wider."""
    return int(sum(len(b) * max(width, lengths[b].max()) for b in batches))


def seconds_per_step(model: torch.nn.Module, data: Any, batches: list[np.ndarray], compute_loss: LossFn,
                     fused: bool) -> float:
    """Mean time of a training step after the warm-up: collate, loss, backward, clipping, AdamW
    (PyTorch's default for-loop implementation, or the ``fused`` kernel alambic uses)."""
    model.train()
    optimizer = make_optimizer(list(model.named_parameters()), TrainSettings(), fused=fused)
    seconds = []
    for rows in batches:
        start = time.perf_counter()
        loss, _ = compute_loss(model, collate(data[rows.tolist()]), rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return float(np.mean(seconds[WARMUP_STEPS:]))


def sample_batches(lengths: np.ndarray, batch_size: int, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``count`` batches of a bucketed epoch, and the same rows shuffled into batches."""
    bucketed = global_batches(lengths, batch_size, seed=0, epoch=0)[:count]
    rows = np.random.default_rng(0).permutation(np.concatenate(bucketed))
    return bucketed, [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def sample_cache(teacher: torch.nn.Module, data: Any, sample: np.ndarray) -> tuple[torch.Tensor, float]:
    """The cache for the sampled rows, and the seconds it takes for all rows (projected)."""
    rows = data.select(sample)
    predict(teacher, rows.select(range(16)))  # warm-up
    start = time.perf_counter()
    logits = cached_logits(teacher, rows)
    seconds = (time.perf_counter() - start) * len(data) / len(sample)
    cache = torch.zeros(len(data), logits.shape[1])  # only the sampled rows are ever read
    cache[torch.as_tensor(sample)] = logits
    return cache, seconds


def throughput(ctx: RunContext, args: argparse.Namespace) -> None:
    data, names, vocab_size = ctx.prepared.tokenized["train"], ctx.prepared.label_names, len(ctx.prepared.tokenizer)
    lengths = np.asarray(data["length"])
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(teacher_config(len(names), names, vocab_size=vocab_size)).eval()
    student_class = ctx.registry["students"].get(args.student)
    initial_student = student_class.build(len(names), names, vocab_size=vocab_size).state_dict()

    def student() -> torch.nn.Module:
        model = student_class.build(len(names), names, vocab_size=vocab_size)
        model.load_state_dict(initial_student)  # the same start for every variant
        return model

    bucketed, shuffled = sample_batches(lengths, args.batch_size, WARMUP_STEPS + args.steps)
    sample = np.concatenate(bucketed)
    cache, logits_once = sample_cache(teacher, data, sample)
    T, alpha, w = ctx.config.distill.temperature, ctx.config.distill.alpha, args.max_length
    online, cached = kd_online(teacher, T, alpha), kd_from_cache(cache, T, alpha)

    def trainee() -> torch.nn.Module:
        return copy.deepcopy(teacher)  # the teacher itself stays untrained, for the online variants

    # (group, name, model, bucketed batches?, loss, fused AdamW); each group's first row is the
    # seeds' recipe. Unbucketed rows take the same rows in random batches, padded to --max-length
    # by padded_to() or else to each batch's longest row (alambic's default).
    variants: list[tuple[str, str, Callable[[], torch.nn.Module], bool, LossFn, bool]] = [
        ("distillation", f"online teacher, padded to {w} (the seeds')", student, False, padded_to(w, online), False),
        ("distillation", "online teacher, padded per batch", student, False, online, False),
        ("distillation", "online teacher, bucketed", student, True, online, False),
        ("distillation", f"cached logits, padded to {w}", student, False, padded_to(w, cached), False),
        ("distillation", "cached logits, padded per batch", student, False, cached, False),
        ("distillation", "cached logits, bucketed", student, True, cached, False),
        ("distillation", "cached logits, padded per batch, fused AdamW (alambic's default)", student, False, cached,
         True),
        ("distillation", "cached logits, bucketed, fused AdamW (bucket_by_length: true)", student, True, cached, True),
        ("teacher fine-tuning", f"padded to {w} (the seeds')", trainee, False, padded_to(w, cross_entropy_loss),
         False),
        ("teacher fine-tuning", "padded per batch", trainee, False, cross_entropy_loss, False),
        ("teacher fine-tuning", "bucketed", trainee, True, cross_entropy_loss, False),
        ("teacher fine-tuning", "padded per batch, fused AdamW (alambic's default)", trainee, False,
         cross_entropy_loss, True),
        ("teacher fine-tuning", "bucketed, fused AdamW (bucket_by_length: true)", trainee, True, cross_entropy_loss,
         True),
    ]
    steps_per_epoch = len(global_batches(lengths, args.batch_size, seed=0, epoch=0))
    results = []
    for group, name, build, bucket, compute_loss, fused in variants:
        batches = bucketed if bucket else shuffled
        timed = batches[WARMUP_STEPS:]
        width = getattr(compute_loss, "width", 0)
        results.append(Measured(group, name, seconds_per_step(build(), data, batches, compute_loss, fused),
                                int(lengths[np.concatenate(timed)].sum()),
                                padded_tokens(timed, lengths, width), steps_per_epoch))
        print(f"  {group}: {name:<70} {results[-1].seconds_per_step:6.3f} s/step", flush=True)
    report(args, ctx, results, lengths, logits_once, len(sample))


def class_entropy(batches: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean entropy (nats) of the batches' class mix: alike batches hold fewer classes."""
    def entropy(batch: np.ndarray) -> float:
        p = np.bincount(labels[batch]) / len(batch)
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return float(np.mean([entropy(b) for b in batches]))


def report(args, ctx, results: list[Measured], lengths: np.ndarray, logits_once: float, sample_rows: int) -> None:
    def epoch(bucket: bool) -> list[np.ndarray]:
        return global_batches(lengths, args.batch_size, 0, 0, bucket=bucket)

    def epoch_width(bucket: bool) -> float:  # tokens a batch is wide, over a whole epoch
        return padded_tokens(epoch(bucket), lengths) / len(lengths)

    labels = np.asarray(ctx.prepared.tokenized["train"]["label"])

    print(f"\nmachine: {machine.summary()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(lengths):,} headlines, {lengths.mean():.1f} tokens on average; batch {args.batch_size}, "
          f"max_length {args.max_length}; student {args.student}; {args.steps} timed steps per variant after "
          f"{WARMUP_STEPS} warm-up; over an epoch, batches padded per batch are {epoch_width(False):.1f} tokens "
          f"wide on average, bucketed ones {epoch_width(True):.1f}; their mean class entropy "
          f"{class_entropy(epoch(False), labels):.2f} and {class_entropy(epoch(True), labels):.2f} nats")
    print(f"\n| variant | s/step | real tokens/s | padded tokens/s | epoch s (projected: {args.steps} steps "
          f"measured, {results[0].steps_per_epoch:,} an epoch) | vs the seeds' |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        seeds = next(s for s in results if s.group == r.group)
        seconds = r.seconds_per_step * args.steps
        print(f"| {r.group}: {r.name} | {r.seconds_per_step:.3f} | {r.real_tokens / seconds:,.0f} | "
              f"{r.padded_tokens / seconds:,.0f} | {r.epoch_seconds:,.0f} | "
              f"{seeds.epoch_seconds / r.epoch_seconds:.2f}x |")
    epochs = ctx.config.distill.epochs
    distillation = [r for r in results if r.group == "distillation"]
    seeds = distillation[0]
    default = next(r for r in distillation if "alambic's default" in r.name)
    alambic = default.epoch_seconds + logits_once / epochs
    print(f"\nteacher logits once, {len(lengths):,} headlines: {logits_once:,.0f} s (projected from {sample_rows:,})")
    print(f"seeds' epoch {seeds.epoch_seconds:,.0f} s vs alambic's epoch {default.epoch_seconds:,.0f} s "
          f"+ logits once / {epochs} epochs {logits_once / epochs:,.0f} s = {alambic:,.0f} s: "
          f"{seeds.epoch_seconds / alambic:.2f}x faster")


# --- accuracy ---------------------------------------------------------------------------------


def accuracy(ctx: RunContext, args: argparse.Namespace) -> None:
    """The seeds' recipe, alambic's default and alambic with bucketing, at each of ``--seeds``."""
    record = train_teacher(ctx, local=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(record.path, use_safetensors=True).eval()
    data, names = ctx.prepared.tokenized, ctx.prepared.label_names
    train = data["train"].select(range(args.train_examples))
    distill = ctx.config.distill
    settings = dataclasses.replace(train_settings(distill), epochs=args.epochs)
    student_class = ctx.registry["students"].get(args.student)
    start = time.perf_counter()
    cache = cached_logits(teacher, train)
    cache_seconds = time.perf_counter() - start  # charged to every alambic row
    T, alpha = distill.temperature, distill.alpha
    # (name, bucketed, loss, seconds charged besides training)
    variants = [
        (f"seeds: online teacher, padded to {args.max_length}", False,
         padded_to(args.max_length, kd_online(teacher, T, alpha)), 0.0),
        ("alambic's default: cached logits, padded per batch", False, kd_from_cache(cache, T, alpha), cache_seconds),
        (f"alambic, bucket_by_length: cached logits, bucketed (window {BUCKET_WINDOW})", True,
         kd_from_cache(cache, T, alpha), cache_seconds),
    ]
    rows = []
    for seed in args.seeds:
        seed_everything(seed)  # the same initial student for the three variants of a seed
        initial = student_class.build(len(names), names, vocab_size=len(ctx.prepared.tokenizer)).state_dict()
        for name, bucket, compute_loss, charged in variants:
            student = student_class.build(len(names), names, vocab_size=len(ctx.prepared.tokenizer))
            student.load_state_dict(initial)
            if args.no_dropout:  # training then runs the same arithmetic in every variant
                for module in student.modules():
                    if isinstance(module, torch.nn.Dropout):
                        module.p = 0.0
            start = time.perf_counter()
            result = fit(student, train, data["validation"], dataclasses.replace(settings, seed=seed, bucket=bucket),
                         compute_loss)
            seconds = time.perf_counter() - start + charged
            test = evaluate(student, data["test"])
            rows.append((name, seed, test["accuracy"], test["macro_f1"], result.best_epoch + 1, seconds))
            print(f"  seed {seed}: {name:<62} {test['accuracy']:.4f} {seconds:6.0f} s", flush=True)
    print_accuracy(args, record, settings, distill, rows, len(train), len(data["test"]), cache_seconds)


def window_sweep(ctx: RunContext, args: argparse.Namespace) -> None:
    """alambic's recipe (cached logits) with each bucketing window of ``--windows`` (0 = not
    bucketed: each batch padded to its longest row, the seeds' arithmetic) at each of ``--seeds``."""
    record = train_teacher(ctx, local=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(record.path, use_safetensors=True).eval()
    data, names = ctx.prepared.tokenized, ctx.prepared.label_names
    train = data["train"].select(range(args.train_examples))
    cache = cached_logits(teacher, train)
    distill = ctx.config.distill
    base = dataclasses.replace(train_settings(distill), epochs=args.epochs)
    student_class = ctx.registry["students"].get(args.student)
    print("\n| batches | seed | test accuracy | wall s |\n| --- | ---: | ---: | ---: |")
    for window in args.windows:
        for seed in args.seeds:
            settings = dataclasses.replace(base, seed=seed, bucket=window > 0, bucket_window=max(window, 1))
            seed_everything(seed)
            student = student_class.build(len(names), names, vocab_size=len(ctx.prepared.tokenizer))
            start = time.perf_counter()
            fit(student, train, data["validation"], settings, kd_from_cache(cache, distill.temperature, distill.alpha))
            seconds = time.perf_counter() - start
            accuracy = evaluate(student, data["test"])["accuracy"]
            label = f"bucketed, window of {window} batches" if window else "not bucketed"
            print(f"| {label} | {seed} | {accuracy:.4f} | {seconds:,.0f} |", flush=True)


def print_accuracy(args, record, settings, distill, rows, train_rows: int, test_rows: int,
                   cache_seconds: float) -> None:
    print(f"\nmachine: {machine.summary()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"teacher {record.key[:12]} ({'reused' if record.reused else 'trained'}), test accuracy "
          f"{record.metrics['test']['accuracy']:.4f}; student {args.student}, the first {train_rows:,} training "
          f"headlines, {args.epochs} epochs, batch {settings.batch_size}, lr {settings.learning_rate}, "
          f"T {distill.temperature}, alpha {distill.alpha}; test: {test_rows:,} headlines; "
          f"teacher logits once: {cache_seconds:.0f} s (in every alambic row's wall time)"
          f"{'; student dropout off' if args.no_dropout else ''}")
    print("\n| variant | seed | test accuracy | test macro-F1 | best epoch | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seed, acc, f1, epoch, seconds in rows:
        print(f"| {name} | {seed} | {acc:.4f} | {f1:.4f} | {epoch} | {seconds:,.0f} |")
    by_variant: dict[str, list[tuple[float, float]]] = {}
    for name, _, acc, _, _, seconds in rows:
        by_variant.setdefault(name, []).append((acc, seconds))
    seeds_name = rows[0][0]
    seeds_acc = np.array([a for a, _ in by_variant[seeds_name]])
    seeds_wall = np.mean([s for _, s in by_variant[seeds_name]])
    print(f"\n| variant | mean test accuracy over {len(args.seeds)} seeds | sd | mean difference from the seeds' "
          f"(paired by seed) | largest difference | faster than the seeds' |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in by_variant.items():
        acc = np.array([a for a, _ in values])
        diff = 100 * (acc - seeds_acc)
        print(f"| {name} | {acc.mean():.4f} | {acc.std(ddof=1) if len(acc) > 1 else 0:.4f} | "
              f"{diff.mean():+.2f} points | {diff[np.abs(diff).argmax()]:+.2f} points | "
              f"{seeds_wall / np.mean([s for _, s in values]):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--student", default="roberta-l4")
    parser.add_argument("--max-length", type=int, default=128, help="the width the seeds padded every batch to")
    parser.add_argument("--batch-size", type=int, default=16, help="throughput only; --accuracy uses the config's")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--accuracy", action="store_true", help="the accuracy check instead of the throughput table")
    parser.add_argument("--train-examples", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2, help="distillation epochs of the accuracy check")
    parser.add_argument("--no-dropout", action="store_true",
                        help="--accuracy with the student's dropout off: the variants then differ only in "
                             "padding, logits source and batch order, not in random dropout masks")
    parser.add_argument("--window-sweep", action="store_true",
                        help="alambic's recipe at each --windows x --seeds instead (same subset and epochs)")
    parser.add_argument("--windows", type=lambda s: [int(w) for w in s.split(",")], default=[0, 50, 10],
                        help="bucketing windows in batches; 0 = not bucketed")
    parser.add_argument("--seeds", type=lambda s: [int(w) for w in s.split(",")], default=[42, 43],
                        help="seeds of --accuracy and --window-sweep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("alambic.data").setLevel(logging.ERROR)

    ctx = RunContext.open(args.config, quiet=True)
    fast_cpu_math()  # as alambic's training loop does
    (window_sweep if args.window_sweep else accuracy if args.accuracy else throughput)(ctx, args)


if __name__ == "__main__":
    main()
