"""On paper: the wall time of the seeds' real workload on 1, 4 and 16 GPUs. An estimate, not a run.

    python benchmarks/scale_estimate.py [--config examples/thucnews.yaml] [--candidate-core-s 134]

The workload (the seeds' design documents): a bert-base-chinese teacher fine-tuned 3 epochs on
42,000 headlines with 16 classes; its logits cached once; 3 students (roberta-l4, tinybert-4l,
mobilebert-adapter) distilled 3 epochs each; 8 compression settings per student (24 candidates),
each pruned, quantized, scored on the test split and timed on a CPU core.

What is measured, and what is assumed:

  measured  the FLOPs of each model per sequence (benchmarks/inference.py's formulas, checked
            against PyTorch's FlopCounterMode), at the token lengths of the real THUCNews
            headlines in alambic's length-bucketed batches (the 45,000 training headlines, scaled
            to 42,000); the CPU cost of one candidate's compress stage on this machine
            (--candidate-core-s, BENCHMARKS.md "The search on THUCNews": 13 min 26 s for 12
            candidates on 2 cores); the search's orchestration overhead per candidate
            (--overhead-s, BENCHMARKS.md "Search overhead")
  assumed   the GPU and how much of its peak BERT training reaches, a floor per optimizer step,
            how DDP scales the teacher, and how many CPU cores a GPU node lends to the
            candidates (the constants below, each printed with the table)

Training FLOPs are 3x the forward's (forward + backward); mobilebert-adapter's layer-by-layer
transfer from roberta-l4 is counted as one more epoch of it.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alambic.config import load_config
from alambic.data.dataset import load_data
from alambic.data.tokenize import prepare_tokenizer, tokenize_data
from alambic.manager import build_registry
from alambic.train.loop import global_batches
from alambic.train.models import teacher_config

# the workload
SAMPLES, CLASSES, EPOCHS = 42_000, 16, 3
STUDENTS, SETTINGS_PER_STUDENT = ("roberta-l4", "tinybert-4l", "mobilebert-adapter"), 8
TEACHER_BATCH, STUDENT_BATCH = 32, 64


@dataclass(frozen=True)
class Assumptions:
    """Every number here is an estimate: the table says so."""

    gpu: str = "NVIDIA A100 40GB SXM"
    peak_tflops: float = 312.0  # bf16 dense tensor-core peak, the datasheet's
    mfu: float = 0.30  # share of that peak short-sequence BERT training reaches (estimate)
    teacher_step_floor_s: float = 0.030  # per optimizer step of a 102M-parameter model (launches, AdamW)
    student_step_floor_s: float = 0.010
    ddp_efficiency: float = 0.85  # the teacher on up to 4 GPUs of one node; more GPUs do not help it
    teacher_max_gpus: int = 4
    cores_per_gpu: int = 8  # CPU cores per GPU on a typical GPU node
    cores_per_candidate: int = 1  # candidates are measured at 1 thread


def bucketed_lengths(config_path: str) -> list[int]:
    """Token lengths of the THUCNews training headlines, as alambic tokenizes them."""
    logging.getLogger("alambic.data").setLevel(logging.ERROR)
    registry = build_registry()
    config = load_config(config_path, registry=registry)
    dsd, report = load_data(config.data, registry)
    tokenizer = prepare_tokenizer(config.tokenizer, dsd)
    with tempfile.TemporaryDirectory(prefix="alambic-scale-") as cache:
        tokenized = tokenize_data(dsd, tokenizer, config.tokenizer.max_length, Path(cache), report.fingerprint)
        return list(tokenized["train"]["length"])


def epoch_flops(model_config, lengths: list[int], batch: int, training: bool) -> tuple[float, int]:
    """(FLOPs, steps) of one epoch over ``lengths`` in length-bucketed batches of ``batch``."""
    from inference import flops  # benchmarks/inference.py, beside this script

    total, steps = 0.0, 0
    for rows in global_batches(lengths, batch, seed=0, epoch=0):
        width = max(lengths[i] for i in rows)
        total += len(rows) * flops(model_config, width) * (3 if training else 1)
        steps += 1
    return total, steps


def gpu_seconds(flop: float, steps: int, floor_s: float, gpus: float, a: Assumptions) -> float:
    """Time on ``gpus`` GPUs: the FLOPs at the assumed efficiency, or the per-step floor if longer."""
    compute = flop / (a.peak_tflops * 1e12 * a.mfu * gpus)
    return max(compute, steps * floor_s / gpus)


def estimate(lengths: list[int], gpus: int, a: Assumptions, candidate_core_s: float, overhead_s: float) -> dict:
    from alambic.plugins.students import MobileBertAdapter, RobertaL4, TinyBert4L

    scale = SAMPLES / len(lengths)
    teacher = teacher_config(CLASSES)
    flop, steps = epoch_flops(teacher, lengths, TEACHER_BATCH, training=True)
    teacher_gpus = min(gpus, a.teacher_max_gpus)
    speedup = teacher_gpus * (a.ddp_efficiency if teacher_gpus > 1 else 1.0)
    teacher_s = EPOCHS * gpu_seconds(flop * scale, math.ceil(steps * scale), a.teacher_step_floor_s, speedup, a)
    logits_flop, logits_steps = epoch_flops(teacher, lengths, 128, training=False)
    logits_s = gpu_seconds(logits_flop * scale, math.ceil(logits_steps * scale), 0.005, teacher_gpus, a)

    per_student = {}
    for cls in (RobertaL4, TinyBert4L, MobileBertAdapter):
        flop, steps = epoch_flops(cls.config(CLASSES), lengths, STUDENT_BATCH, training=True)
        epochs = EPOCHS + (1 if cls is MobileBertAdapter else 0)  # its transfer, as one more epoch
        per_student[cls.id] = epochs * gpu_seconds(flop * scale, math.ceil(steps * scale),
                                                   a.student_step_floor_s, 1, a)
    # one student per GPU; mobilebert-adapter starts from the trained roberta-l4 (its donor), so
    # on 2+ GPUs the longest lane is roberta-l4 then mobilebert; on one GPU they all queue
    chain = per_student["roberta-l4"] + per_student["mobilebert-adapter"]
    distill_s = sum(per_student.values()) if gpus == 1 else max(chain, per_student["tinybert-4l"])

    candidates = len(STUDENTS) * SETTINGS_PER_STUDENT
    slots = gpus * a.cores_per_gpu // a.cores_per_candidate
    compress_s = math.ceil(candidates / slots) * candidate_core_s + candidates * overhead_s / slots
    total = teacher_s + logits_s + distill_s + compress_s
    return {"gpus": gpus, "teacher": teacher_s, "logits": logits_s, "distill": distill_s,
            "compress": compress_s, "slots": slots, "total": total}


def print_epochs(lengths: list[int]) -> None:
    """What one training epoch of each model costs, counted (scaled to the workload's samples)."""
    from alambic.plugins.students import MobileBertAdapter, RobertaL4, TinyBert4L

    scale = SAMPLES / len(lengths)
    models = [("teacher (bert-base-chinese)", teacher_config(CLASSES), TEACHER_BATCH)]
    models += [(cls.id, cls.config(CLASSES), STUDENT_BATCH) for cls in (RobertaL4, TinyBert4L, MobileBertAdapter)]
    for name, config, batch in models:
        flop, steps = epoch_flops(config, lengths, batch, training=True)
        print(f"  {name}: {flop * scale / 1e12:,.1f} TFLOP a training epoch, {math.ceil(steps * scale):,} steps "
              f"of {batch} (bucketed)")
    print()


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml", help="where the real headlines are")
    parser.add_argument("--candidate-core-s", type=float, default=134.0,
                        help="measured CPU seconds of one candidate's compress stage (BENCHMARKS.md)")
    parser.add_argument("--overhead-s", type=float, default=0.4,
                        help="measured orchestration seconds per candidate (BENCHMARKS.md)")
    args = parser.parse_args()
    a = Assumptions()
    lengths = bucketed_lengths(args.config)
    print(f"headlines: {len(lengths):,} (scaled to {SAMPLES:,}), mean {np.mean(lengths):.1f} tokens, "
          f"max {max(lengths)}")
    print("assumptions (estimates): " + ", ".join(f"{k} {v}" for k, v in vars(a).items()))
    print(f"measured inputs: candidate compress stage {args.candidate_core_s:.0f} core-s, "
          f"orchestration {args.overhead_s} s per candidate")
    print_epochs(lengths)
    print(f"| GPUs ({a.gpu}) | teacher 3 epochs | logits once | 3 students distilled | "
          "24 candidates compressed + measured | total (estimate) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for gpus in (1, 4, 16):
        e = estimate(lengths, gpus, a, args.candidate_core_s, args.overhead_s)
        print(f"| {gpus} | {minutes(e['teacher'])} | {minutes(e['logits'])} | {minutes(e['distill'])} | "
              f"{minutes(e['compress'])} ({e['slots']} CPU slots) | **{minutes(e['total'])}** |")


if __name__ == "__main__":
    main()
