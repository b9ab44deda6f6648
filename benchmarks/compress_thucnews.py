"""Each pruner and quantizer alone, and combinations, on a student distilled on THUCNews.

    python benchmarks/compress_thucnews.py [--config examples/thucnews.yaml] [--student roberta-l4]
                                           [--threads 1] [--runs 50] [--only NAME ...]

Reuses the config's teacher and the student's distillation from the store (trained first when
absent: see benchmarks/thucnews_students.py), then runs `alambic.compress.chain.compress` once per
setting, under the config's guard, and prints one Markdown row per setting: test accuracy and
macro-F1 of what ships, size on disk, latency p50/p90 at length 32 (batch 1, ``--threads``),
peak RSS of a fresh process (and what the model adds to the runtime's own), and the guard's
decisions. Every row measures the same input model as its "before": the first row's is shown.
Each setting is a stage of the store: a second run reprints without recomputing.
"""

from __future__ import annotations

import argparse
import logging
import time

from alambic import machine
from alambic.compress.chain import compress
from alambic.compress.guard import final_outcome
from alambic.compress.records import MeasureSettings, parse_steps
from alambic.run import RunContext
from alambic.train.distill import distill
from alambic.train.teacher import train_teacher

#: name -> (pruning steps, quantizer, quantizer options); "step+N": N recovery epochs
SETTINGS = {
    "heads:0.25": ("heads:0.25", None, None),
    "layers:0.25": ("layers:0.25", None, None),
    "ffn:0.3": ("ffn:0.3", None, None),
    "magnitude:0.5": ("magnitude:0.5", None, None),
    "vocab": ("vocab", None, None),
    "dynamic-int8 (ONNX Runtime)": ("none", "dynamic-int8", None),
    "dynamic-int8 (PyTorch, torchao)": ("none", "dynamic-int8", {"runtime": "pytorch"}),
    "static-int8 (QDQ, minmax)": ("none", "static-int8", None),
    "fp16": ("none", "fp16", None),
    "mixed (attention fp16, ffn int8, embeddings int8)": ("none", "mixed", None),
    "vocab + heads:0.25 + ffn:0.3 + dynamic-int8": ("vocab,heads:0.25,ffn:0.3", "dynamic-int8", None),
    "vocab + layers:0.25 + ffn:0.5 + dynamic-int8": ("vocab,layers:0.25,ffn:0.5", "dynamic-int8", None),
    # deeper structured pruning, each step distilled again from the teacher before the guard judges it
    "vocab + layers:0.5 + ffn:0.5, 1 recovery epoch each + dynamic-int8": (
        "vocab,layers:0.5+1,ffn:0.5+1", "dynamic-int8", None),
    "vocab + layers:0.5 + heads:0.5 + ffn:0.5, 1 recovery epoch each + dynamic-int8": (
        "vocab,layers:0.5+1,heads:0.5+1,ffn:0.5+1", "dynamic-int8", None),
    "vocab + layers:0.75 + ffn:0.75, 1 recovery epoch each + dynamic-int8": (
        "vocab,layers:0.75+1,ffn:0.75+1", "dynamic-int8", None),
}


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def row(name: str, measured, record) -> str:
    latency = measured.latency_ms.get("32", {})
    memory = measured.memory
    model_rss = (memory["peak_rss_bytes"] - memory["baseline_rss_bytes"]) if memory else None
    decisions = "; ".join(f"{s['step']} {s['outcome']}" for s in record["steps"]) if record else ""
    agreement = record.get("agreement") if record else None
    agree = f"{agreement['argmax_agreement']:.2%}" if agreement else "-"
    return (f"| {name} | {measured.runtime} | {measured.accuracy:.4f} | {measured.macro_f1:.4f} | "
            f"{measured.size_bytes / 1e6:.1f} | {latency.get('p50', float('nan')):.2f} | "
            f"{latency.get('p90', float('nan')):.2f} | {mb(memory.get('peak_rss_bytes'))} | {mb(model_rss)} | "
            f"{measured.params:,} | {agree} | {decisions or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--student", default="roberta-l4")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads while timing")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per length")
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--model", help="a distilled student's folder (default: --student distilled from the "
                                        "config, reused from the store)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    ctx = RunContext.open(args.config, quiet=True)
    if args.model:
        model_dir, label = args.model, f"{args.student} {args.model}"
    else:
        student = distill(ctx, args.student, teacher=train_teacher(ctx))
        model_dir, label = student.path, f"{args.student} {student.key[:12]}"
    measure = MeasureSettings(lengths=(16, 32, 64, 128), threads=args.threads, runs=args.runs, warmup=10)
    rows, before = [], None
    for name, (steps, quant, options) in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        record = compress(ctx, model_dir, parse_steps(steps, ctx.registry), quant, options, measure=measure)
        print(f"{name}: {time.perf_counter() - start:.0f} s "
              f"({', '.join(final_outcome([d]) for d in record.decisions) or 'no step'})", flush=True)
        before = before or record.before
        rows.append(row(name, record.after, record.record))

    print(f"\nmachine: {machine.summary()}; latency threads: {args.threads}; student {label}")
    print("| setting | runtime | test accuracy | macro-F1 | size MB | p50 ms @32 | p90 ms @32 | peak RSS MB | "
          "model RSS MB | params | argmax vs fp32 ONNX | guard |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    if before is not None:
        print(row(f"{args.student} as distilled (fp32, PyTorch)", before, None))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
