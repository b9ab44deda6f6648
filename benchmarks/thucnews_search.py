"""The THUCNews search with choices on validation and latency timed after it: its front, side by side.

    python benchmarks/thucnews_search.py [--config examples/thucnews.yaml] [--log thucnews-search.log]

Takes the config's data, pretrained teacher, distill section, guard, measure settings, store and
run name, and replaces its search grid by a CPU-sized one: two students (tinybert-4l from random
weights, teacher-layers from the teacher's own layers) x three pruning settings (none; vocab +
ffn:0.3; vocab + heads:0.25 + ffn:0.3) x three quantizers (none, dynamic-int8, static-int8), 18
candidates. (The config's own grid adds roberta-l4 and two pruning settings with recovery epochs:
hours on 2 cores.) The config is written to a temporary folder with every path absolute, so the
stages the config's store already holds (the teacher, the students) are reused.

Then, as a user would, each in its own process: ``alambic search`` (its output to ``--log``: the
one line per candidate a log file gets), ``alambic select`` (the config's select section) and
``alambic report`` (which times the teacher in PyTorch and ONNX Runtime at fp32 for the speed-ups).
Prints the machine, the commands and a Markdown table for BENCHMARKS.md: per candidate validation
and test accuracy, size, latency and model memory from the serial pass, the drop against the
distilled student and the teacher on both splits, and the speed-up against the teacher's fastest
runtime split into runtime x compression.

Ray's workers are niced and the timings are made after the trials: run it on an otherwise idle
machine (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from alambic import machine
from alambic.config import load_config

GRID = {
    "students": ["tinybert-4l", "teacher-layers"],
    "pruning": [[], [{"pruner": "vocab"}, {"pruner": "ffn", "amount": 0.3}],
                [{"pruner": "vocab"}, {"pruner": "heads", "amount": 0.25}, {"pruner": "ffn", "amount": 0.3}]],
    "quantization": ["none", "dynamic-int8", "static-int8"],
}


def cpu_config(path: Path, folder: Path) -> Path:
    """The config with the CPU-sized grid and every path absolute, written in ``folder``."""
    config = load_config(path).model_dump(mode="json", exclude_none=True)
    store = config["store"]
    if "://" not in store and not Path(store).is_absolute():
        config["store"] = str((Path.cwd() / store).resolve())  # as alambic reads it: from the working directory
    config["search"] |= GRID
    out = folder / path.name
    out.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


def alambic(*args: str, log: Path | None = None) -> float:
    """Run ``alambic ARGS`` (output to ``log`` when given); seconds it took; exit on failure."""
    exe = Path(sys.executable).with_name("alambic")
    print(f"$ alambic {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") if log else open(os.devnull, "w") as out:
        done = subprocess.run([str(exe), *args], stdout=out if log else None, stderr=subprocess.STDOUT if log
                              else None, check=False)
    if done.returncode:
        sys.exit(f"alambic {args[0]} failed (exit {done.returncode}){f'; see {log}' if log else ''}")
    return time.perf_counter() - start


def rows_of(config: Path) -> tuple[list[dict[str, Any]], Any, Any]:
    """(results rows, the run context, the report's view of the teacher: metrics and timings)."""
    import pyarrow.parquet as pq

    from alambic.report.teacher import timed_teacher
    from alambic.run import RunContext

    ctx = RunContext.open(config, quiet=True)
    rows = pq.read_table(io.BytesIO(ctx.store.read_bytes("results.parquet"))).to_pylist()
    threads = sorted({int(r["latency_threads"]) for r in rows if r.get("latency_threads")})
    return rows, ctx, timed_teacher(ctx, threads)


def table(rows: list[dict[str, Any]], teacher: Any, selected: str | None) -> str:
    from alambic.report.sections import speed_up

    def pt(a: Any, b: Any) -> str:
        return "-" if a is None or b is None else f"{100 * (a - b):+.2f}"

    head = ("| student | pruning | quant | runtime | val acc | test acc | size MB | p50 ms | p90 ms | model MB "
            "| drop vs student val / test | drop vs teacher val / test | speed-up = runtime x compression | front |")
    lines = [head, "|" + " --- |" * 4 + " ---: |" * 6 + " ---: | ---: | ---: | --- |"]
    teacher_acc = {s: teacher.metrics[s]["accuracy"] for s in ("validation", "test")}
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (r["student"], r["size_mb"]))
    for r in ok:
        timed = teacher.at(int(r["latency_threads"]))
        s = speed_up({rt: m.headline()["latency_p50_ms"] for rt, m in timed.items()}, r["runtime"],
                     r["latency_p50_ms"])
        split = "-" if s is None else f"{s.total:.1f}x = {s.runtime_share:.2f} x {s.compression_share:.1f}"
        mark = ("yes" if r["on_front"] else "") + (" (selected)" if r["candidate_id"] == selected else "")
        lines.append(
            f"| {r['student']} | {r['pruning']} | {r['quantization']} | {r['runtime']} | {r['val_accuracy']:.4f} "
            f"| {r['test_accuracy']:.4f} | {r['size_mb']:.2f} | {r['latency_p50_ms']:.2f} | {r['latency_p90_ms']:.2f} "
            f"| {r['model_mem_mb'] or 0:.1f} | {pt(r['student_val_accuracy'], r['val_accuracy'])} / "
            f"{pt(r['student_test_accuracy'], r['test_accuracy'])} | {pt(teacher_acc['validation'], r['val_accuracy'])}"
            f" / {pt(teacher_acc['test'], r['test_accuracy'])} | {split} | {mark} |")
    failed = [r for r in rows if r["status"] != "ok"]
    lines += [f"| {r['student']} | {r['pruning']} | {r['quantization']} | failed: {r['error']} |" for r in failed]
    return "\n".join(lines)


def teacher_lines(teacher: Any) -> str:
    out = [f"teacher {teacher.key[:12]}: validation {teacher.metrics['validation']['accuracy']:.4f}, "
           f"test {teacher.metrics['test']['accuracy']:.4f}"]
    for (runtime, threads), m in sorted(teacher.timed.items()):
        out.append(f"  {runtime} fp32, {threads} thread(s): p50 {m.headline()['latency_p50_ms']:.2f} ms "
                   f"at {m.headline()['latency_length']} tokens")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("examples/thucnews.yaml"))
    parser.add_argument("--log", type=Path, default=Path("thucnews-search.log"))
    args = parser.parse_args()
    print(f"machine: {machine.summary()}; load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="alambic-thucnews-search-") as tmp:
        config = cpu_config(args.config.resolve(), Path(tmp))
        wall = {"search": alambic("search", str(config), log=args.log.resolve())}
        wall["select"] = alambic("--quiet", "select", str(config))
        wall["report"] = alambic("--quiet", "report", str(config))
        rows, ctx, teacher = rows_of(config)
        selected = json.loads(ctx.store.read_bytes("selected.json")).get("candidate_id")
    print(f"load after: {os.getloadavg()[0]:.2f}; wall s: {json.dumps({k: round(v) for k, v in wall.items()})}")
    print(teacher_lines(teacher))
    print(table(rows, teacher, selected))


if __name__ == "__main__":
    main()
