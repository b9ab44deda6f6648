"""alambic beside the tools users would pick instead, on THUCNews, one run per table.

    cd examples && python ../benchmarks/peers.py [--config thucnews.yaml] [--parts distill prune quantize tune]
        [--epochs 1] [--distill-train-rows 16000] [--threads 2] [--lengths 16,32,64] [--runs 50] [--work peers-work]
        [--venvs ~/.cache/alambic/peers]

Every part starts from the config's teacher and its student ``teacher-layers`` (4 of the teacher's 12
layers), reused from the store (trained first when absent), on the same tokenized splits:

- distill:  TextBrewer's GeneralDistiller against ``alambic distill``, the same student start, loss
            (logits KD: temperature, alpha), epochs, batch size, learning rate and schedule, on the
            same --distill-train-rows train headlines: test accuracy and wall time per epoch;
- prune:    TextPruner's TransformerPruner (heads and FFN to the same sizes) and VocabularyPruner
            against alambic's pruners, without and with recovery: accuracy at equal size;
- quantize: Hugging Face Optimum (ORTOptimizer at each level, ORTQuantizer dynamic int8 with this CPU's
            preset) against alambic's shipped int8 graph: p50 latency per length, size, accuracy;
- tune:     Intel Neural Compressor's accuracy-driven post-training quantization (1 point) against
            alambic's guard (``max_drop`` 1 point): accuracy, size, latency, tuning time.

Each peer runs in a virtual environment of its own (made under --venvs on first use; its versions
are in the table). A peer that fails gives a row saying why; the other rows go on. Every ONNX
graph is measured by the same code in this environment's ONNX Runtime, the graphs a table compares
timed in turns (a drift in the machine's speed then falls on all of them alike). Choices (a peer's best
level, the guard's) are made on validation; test accuracy is measured once and reported.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # peer_bench, beside this script

PARTS = ("distill", "prune", "quantize", "tune")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="thucnews.yaml", help="the run config (its store holds the teacher)")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="which tables (default: all)")
    parser.add_argument("--epochs", type=int, default=1, help="distillation epochs, both tools (default 1)")
    parser.add_argument("--distill-train-rows", type=int, default=16000,
                        help="train headlines both tools distill on (alambic's seeded sample; 0: the whole split): "
                             "TextBrewer runs the teacher on every batch, an epoch of all 45,000 takes it ~30 min")
    parser.add_argument("--threads", type=int, default=2, help="threads for training and timing")
    parser.add_argument("--lengths", type=lambda s: [int(n) for n in s.split(",")], default=[16, 32, 64],
                        help="input lengths (tokens) latency is measured at, comma-separated")
    parser.add_argument("--runs", type=int, default=50,
                        help="timed runs per graph and length, in 5 turns among the graphs compared")
    parser.add_argument("--work", type=Path, default=Path("peers-work"), help="models, graphs, logs, results")
    parser.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "alambic" / "peers",
                        help="where each peer's virtual environment is made")
    return parser.parse_args()


def main() -> None:
    import torch
    from peer_bench.common import open_setup

    from alambic import machine

    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    setup = open_setup(args.config, work, args.venvs.expanduser().resolve(), args.threads, args.lengths,
                       args.runs)
    sections = [f"machine: {machine.summary()}; {args.threads} threads; command: "
                f"python ../benchmarks/peers.py {' '.join(sys.argv[1:])}",
                f"teacher {setup.teacher.key[:12]} (test {setup.teacher.metrics['test']['accuracy']:.4f}); "
                f"student {setup.student.student} {setup.student.key[:12]} "
                f"(test {setup.student.metrics['test']['accuracy']:.4f})"]
    for part in args.parts:
        start = time.perf_counter()
        module = importlib.import_module(f"peer_bench.{part}")
        sections.append(module.run(setup, args))
        print(sections[-1], flush=True)  # each table as soon as it is measured
        print(f"[peers] {part}: {time.perf_counter() - start:.0f} s", flush=True)
    report = "\n\n".join(sections) + "\n"
    (work / "peers.md").write_text(report, encoding="utf-8")
    print(f"\n{report}\n[peers] written to {work / 'peers.md'}")


if __name__ == "__main__":
    main()
