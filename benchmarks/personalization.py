"""On-device personalisation, off the device: `alambic personalize` on feedback built from THUCNews.

    python benchmarks/personalization.py --bundle /tmp/thuc-personal [--rows 300] [--relabel 股票=财经]
                                         [--golden-rows 1000] [--work /tmp/thuc-feedback] [--threads 1]

The bundle is an export with the updatable Core ML model, e.g. (from examples/, several minutes):
``alambic export thucnews.yaml --format coreml --out /tmp/thuc-personal --max-examples 2000``.

The feedback a user would give: ``--rows`` headlines drawn (seeded) from the THUCNews test split,
each with its true label but one class relabelled as another (``--relabel FROM=TO``: this user
files stock news under finance). The golden set: a seeded slice of ``--golden-rows`` headlines of
the validation split, written in the data's own format (headline<TAB>label id) and read through the
run config (``--config examples/thucnews.yaml --golden FILE``): THUCNews configures no data.golden.
Then the command runs twice, with the encoder weights the ``.mlmodel`` holds (what the phone runs)
and with the compress stage's fp32 weights, and one Markdown row per run is printed: accuracy
before and after on the held-out feedback (the user's labels), on the golden set (everyone
else's), on the golden rows of the relabelled class, and the golden rows of the other classes.
"""

from __future__ import annotations

import argparse
import random
import shlex
import subprocess
import sys
from pathlib import Path

from alambic import machine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "thucnews-title"


def write_feedback(path: Path, rows: int, relabel: tuple[str, str], seed: int = 0) -> dict[str, int]:
    """``rows`` test headlines (seeded) as text<TAB>label name, ``relabel[0]`` named ``relabel[1]``."""
    names = DATA.joinpath("class_zh.txt").read_text(encoding="utf-8").split()
    lines = [line.split("\t") for line in DATA.joinpath("test.txt").read_text(encoding="utf-8").splitlines() if line]
    picked = random.Random(seed).sample(lines, rows)
    counts = {"rows": rows, "relabelled": 0}
    with path.open("w", encoding="utf-8") as out:
        for text, label in picked:
            name = names[int(label)]
            if name == relabel[0]:
                name, counts["relabelled"] = relabel[1], counts["relabelled"] + 1
            out.write(f"{text}\t{name}\n")
    return counts


def write_golden(path: Path, rows: int, seed: int = 1) -> None:
    """A seeded slice of the validation split, in the data's format (headline<TAB>label id)."""
    lines = [line for line in DATA.joinpath("dev.txt").read_text(encoding="utf-8").splitlines() if line]
    path.write_text("\n".join(random.Random(seed).sample(lines, rows)) + "\n", encoding="utf-8")


def run(command: list[str]) -> dict:
    import json

    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def points(found: dict | None) -> str:
    if not found or found.get("before") is None:
        return "-"
    return f"{100 * found['before']:.1f} → {100 * found['after']:.1f}"


def pooled(per_label: dict, keep) -> dict:
    """Before/after accuracy over the labels ``keep`` accepts, weighted by their rows."""
    chosen = [v for k, v in per_label.items() if keep(k)]
    rows = sum(v["rows"] for v in chosen)
    return {"rows": rows, "before": sum(v["before"] * v["rows"] for v in chosen) / rows,
            "after": sum(v["after"] * v["rows"] for v in chosen) / rows} if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="an export folder with coreml/UpdatableClassifier.mlmodel")
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--relabel", default="股票=财经", help="FROM=TO: the class this user files as another")
    parser.add_argument("--golden-rows", type=int, default=1000)
    parser.add_argument("--work", default="/tmp/thuc-feedback", help="where the feedback and golden files go")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    source, target = args.relabel.split("=")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    counts = write_feedback(work / "feedback.tsv", args.rows, (source, target))
    write_golden(work / "golden.txt", args.golden_rows)
    print(f"feedback: {work / 'feedback.tsv'}: {counts['rows']} test headlines, {counts['relabelled']} of "
          f"class {source} labelled {target}; golden: {work / 'golden.txt'}: {args.golden_rows} validation headlines")
    print(f"machine: {machine.summary()}; torch threads: {args.threads}\n")
    print("| encoder weights | held-out feedback | golden set | golden, class relabelled | golden, other classes "
          "| epochs' mean loss |")
    print("| --- | --- | --- | --- | --- | --- |")
    for weights in ("mlmodel", "stage"):
        command = [sys.executable, "-c", f"import torch; torch.set_num_threads({args.threads}); "
                   "from alambic.cli import main; main()", "personalize", args.bundle, str(work / "feedback.tsv"),
                   "--config", args.config, "--golden", str(work / "golden.txt"), "--encoder-weights", weights,
                   "--out", str(work / f"out-{weights}"), "--json"]
        print(f"<!-- alambic {shlex.join(command[3:])} -->")
        found = run(command)
        figures, per_label = found["figures"], found["figures"]["golden"].get("per_label", {})
        losses = ", ".join(f"{loss:.3f}" for loss in found["losses"][:1] + found["losses"][-1:])
        print(f"| {weights} | {points(figures['held_out'])} ({figures['held_out']['rows']}) | "
              f"{points(figures['golden'])} ({figures['golden']['rows']}) | "
              f"{points(per_label.get(source))} ({per_label.get(source, {}).get('rows', 0)}) | "
              f"{points(pooled(per_label, lambda k: k != source))} | first, last: {losses} |")


if __name__ == "__main__":
    main()
