"""Teacher and the three students on THUCNews: accuracy, macro-F1, params, fp32 size, wall time.

    python benchmarks/thucnews_students.py [--config examples/thucnews.yaml] [--local]

Trains (or reuses from the store) the config's teacher, then distills each student of
`search.students` with the config's `distill` settings, on Ray Train unless --local.
"""

from __future__ import annotations

import argparse
import logging
import time

from alambic import machine
from alambic.distill import distill
from alambic.run import RunContext
from alambic.teacher import train_teacher


def row(name, record, teacher_accuracy, seconds):
    metrics = record.metrics
    size_mb = (record.path / "model.safetensors").stat().st_size / 2**20
    test = metrics["test"]
    return (f"| {name} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} | "
            f"{test['accuracy'] / teacher_accuracy:.1%} | {metrics['params']:,} | {size_mb:.1f} | "
            f"{metrics['wall_time_s']:.0f} | {seconds:.0f} | {'yes' if record.reused else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--local", action="store_true", help="train in this process, not on Ray Train")
    parser.add_argument("--students", nargs="*", help="student ids (default: the config's search.students)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    ctx = RunContext.open(args.config)
    start = time.perf_counter()
    teacher = train_teacher(ctx, local=args.local)
    rows = [row("teacher", teacher, teacher.metrics["test"]["accuracy"], time.perf_counter() - start)]
    for student in args.students or ctx.config.search.students:
        start = time.perf_counter()
        record = distill(ctx, student, local=args.local, teacher=teacher)
        rows.append(row(student, record, teacher.metrics["test"]["accuracy"], time.perf_counter() - start))

    print(f"machine: {machine.summary()}")
    print("| model | test accuracy | test macro-F1 | of teacher | params | fp32 MB | train s | stage s | reused |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
