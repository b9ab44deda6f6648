"""alambic's side of the peers benchmark: the run, its teacher and student, the splits both sides
read, and ONNX graphs measured one way for every tool."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peer_bench.side.exchange import write_split

#: the student every comparison starts from: 4 of the teacher's 12 layers (alambic's best on THUCNews)
STUDENT = "teacher-layers"


@dataclass
class Setup:
    """What every part shares: the run, the teacher, the distilled student, files for the peers."""

    ctx: Any
    teacher: Any  # alambic.train.teacher.TeacherRecord
    student: Any  # alambic.train.distill.StudentRecord: the student distilled with the config's settings
    tokenized: dict[str, Any]  # the student's splits, tokenized by its own (the teacher's) tokenizer
    splits: dict[str, str]  # split name -> .npz both sides read (peer_bench.side.exchange)
    pad_id: int
    num_labels: int
    work: Path
    venvs: Path
    threads: int
    lengths: list[int]
    runs: int
    notes: list[str] = field(default_factory=list)


def open_setup(config: str, work: Path, venvs: Path, threads: int, lengths: list[int], runs: int) -> Setup:
    """The config's teacher and ``STUDENT`` (reused from the store, else trained here) and the
    student's splits written for the peers."""
    from alambic.run import RunContext
    from alambic.train.distill import distill
    from alambic.train.teacher import train_teacher

    ctx = RunContext.open(config, quiet=True)
    teacher = train_teacher(ctx, local=True)
    student = distill(ctx, STUDENT, teacher=teacher, local=True)
    tokenizer = teacher.tokenizer()  # teacher-layers reads with the teacher's tokenizer
    tokenized, key = ctx.tokenize(tokenizer)
    splits = {name: split_file(tokenized[name], work, name, key) for name in ("train", "validation", "test")}
    return Setup(ctx=ctx, teacher=teacher, student=student, tokenized=tokenized, splits=splits,
                 pad_id=int(tokenizer.pad_token_id or 0), num_labels=len(ctx.prepared.label_names), work=work,
                 venvs=venvs, threads=threads, lengths=lengths, runs=runs)


def split_file(dataset: Any, work: Path, name: str, key: str) -> str:
    """The split as a file the peers read (``work/data``), written once per tokenized data: the name
    carries the tokenization's key, so another config or tokenizer in the same --work never reuses it."""
    path = work / "data" / f"{name}-{key[:16]}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_split(dataset, path)
    return str(path)


def measure_graph(setup: Setup, path: str | Path, *, alambic_session: bool) -> dict[str, Any]:
    """Test and validation accuracy, size and parameters of an ONNX graph, in this environment's
    ONNX Runtime (the same code for every tool's graph). Latency is not here: the graphs a table
    compares are timed together, in turns (``peer_bench.shipped.time_in_turns``).

    :param alambic_session: load it as alambic's runtime does (ORT's optimizations at load but the
        fusions alambic measured slower, ``SLOW_FUSIONS``); else with ORT's defaults, as Optimum's
        ``ORTModel`` and Neural Compressor load a graph.
    """
    from alambic.compress.measure import onnx_evaluate, onnx_params
    from alambic.compress.onnx_export import SLOW_FUSIONS, file_bytes, ort_session

    session = ort_session(path, setup.threads, SLOW_FUSIONS if alambic_session else ())
    test = onnx_evaluate(session, setup.tokenized["test"])
    validation = onnx_evaluate(session, setup.tokenized["validation"])
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "examples": test["examples"],
            "val_accuracy": validation["accuracy"], "size_mb": file_bytes(path) / 1e6, "params": onnx_params(path),
            "weights_mb": weight_bytes(path) / 1e6}


def weight_bytes(path: str | Path) -> int:
    """Bytes of a graph's initializers as its runtime holds them (dtype size x elements): beside the
    file's size, it tells the weights from how a tool serialized them (e.g. int8 as int32 varints)."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def save(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
