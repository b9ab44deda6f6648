"""What the compress chain takes and gives: its measuring settings, its records (compress and
prune stages), the pruning steps parsed from the command line, and a record's tables."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from alambic.compress.guard import GuardDecision, format_decisions
from alambic.compress.latency import EXTRA_RUNTIMES
from alambic.compress.measure import DEFAULT_LENGTHS, Measurement, format_measurements
from alambic.config import PruningStep
from alambic.errors import AlambicError


@dataclass(frozen=True)
class MeasureSettings:
    """How before and after are measured (part of the stage key: other settings, other figures)."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    threads: int = 1
    runs: int = 50
    warmup: int = 10
    memory: bool = True  # peak RSS in a child process
    #: runtimes a search also times each candidate in, from its model folder, besides the artifact's
    #: own (``search.measure.runtimes``: executorch); the compress chain reads none of them
    runtimes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtimes", tuple(dict.fromkeys(self.runtimes)))  # a list from the config
        unknown = [r for r in self.runtimes if r not in EXTRA_RUNTIMES]
        if unknown:
            raise AlambicError(f"measure runtimes {unknown}: a search can also time candidates in "
                               f"{', '.join(EXTRA_RUNTIMES)}")

    def key(self) -> dict[str, Any]:
        """What a stage key holds of these settings: without extra runtimes, what it held before
        ``runtimes`` existed (the stages made then stay valid)."""
        found = dataclasses.asdict(self)
        return found if self.runtimes else {k: v for k, v in found.items() if k != "runtimes"}


#: how a search's trials measure: accuracy and size only; latency and memory come from the serial
#: pass after the search (alambic.search.tune), not from a trial timed beside other trials
SCORES_ONLY = MeasureSettings(lengths=(), memory=False)


@dataclass
class CompressRecord:
    key: str  # the compress stage's hash
    path: Path  # the stage folder (model/, quantized/, record.json)
    decisions: list[GuardDecision]
    before: Measurement
    after: Measurement
    artifact: Path  # what a phone ships: the quantized graph or state dict, or the model folder
    runtime: str  # "pytorch" | "onnxruntime"
    agreement: dict[str, Any] | None  # quantized ONNX vs fp32 ONNX on the test split
    reused: bool
    record: dict[str, Any] = field(default_factory=dict)  # record.json
    prune_key: str | None = None  # the pruning stage (None: no steps)
    prune_reused: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**self.record, "key": self.key, "path": str(self.path), "artifact": str(self.artifact),
                "runtime": self.runtime, "reused": self.reused}


@dataclass(frozen=True)
class PruneRecord:
    """The pruning stage's result: the pruned model folder (with its tokenizer) and its decisions."""

    key: str | None  # None: no steps, the input folder itself
    model_dir: Path
    record: dict[str, Any]  # steps, decisions, pruning reports, validation accuracy before/after
    reused: bool


# --- steps ----------------------------------------------------------------------------------


def parse_steps(text: str | None, registry: Any = None) -> list[PruningStep]:
    """``"heads:0.25,ffn:0.3,vocab"`` -> pruning steps (pruner id, optional amount in [0, 1]);
    ``layers:0.5+1``: followed by 1 epoch of recovery distillation (``recover_epochs``).

    With a ``registry`` the pruner ids and amounts are checked against the pruners (an unknown
    id gets a did-you-mean; a strength given to a pruner without one is refused).
    """
    if text is None or not text.strip() or text.strip().lower() == "none":
        return []
    steps = []
    for number, raw in enumerate(text.split(","), start=1):
        part = raw.strip()
        if not part:
            raise AlambicError(f"--steps {text!r}: step {number} is empty; steps are comma-separated "
                               f"pruner[:amount], e.g. heads:0.25,ffn:0.3,vocab")
        part, plus, epochs_text = (s.strip() for s in part.partition("+"))
        recover_epochs = 0
        if plus:
            if not epochs_text.isdigit() or not 0 < int(epochs_text) <= 100:
                raise AlambicError(f"--steps: step {raw.strip()!r}: '+{epochs_text}' should be a number of recovery "
                                   f"epochs from 1 to 100, e.g. layers:0.5+1")
            recover_epochs = int(epochs_text)
        name, sep, amount_text = (s.strip() for s in part.partition(":"))
        if not name:
            raise AlambicError(f"--steps: step {part!r} has no pruner id before ':' (e.g. heads:0.25)")
        amount = None
        if sep:
            try:
                amount = float(amount_text)
            except ValueError:
                raise AlambicError(f"--steps: step {part!r}: amount {amount_text!r} is not a number; "
                                   f"give a fraction in [0, 1], e.g. {name}:0.25") from None
            if not (math.isfinite(amount) and 0 <= amount <= 1):
                raise AlambicError(f"--steps: step {part!r}: amount must be a fraction in [0, 1], got {amount_text}")
        if registry is not None:
            try:
                registry["pruners"].get(name).options(amount)
            except AlambicError as exc:
                raise AlambicError(f"--steps: step {part!r}: {exc}") from None
        steps.append(PruningStep(pruner=name, amount=amount, recover_epochs=recover_epochs))
    return steps


def parse_lengths(text: str) -> tuple[int, ...]:
    """``"16,32,64,128"`` -> the sequence lengths latency is measured at (sorted, each >= 2)."""
    try:
        lengths = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise AlambicError(f"--lengths {text!r}: expected whole numbers separated by commas, "
                           f"e.g. 16,32,64,128") from None
    if not lengths or lengths[0] < 2:
        raise AlambicError(f"--lengths {text!r}: give at least one sequence length, each >= 2")
    return lengths


def step_label(step: PruningStep) -> str:
    """How a step is written on the command line: ``heads:0.25``, ``vocab``, ``layers:0.5+1``."""
    label = step.pruner if step.amount is None else f"{step.pruner}:{step.amount:g}"
    if step.options:
        label += "(" + ", ".join(f"{k}={v}" for k, v in sorted(step.options.items())) + ")"
    return label + (f"+{step.recover_epochs}" if step.recover_epochs else "")


# --- report ---------------------------------------------------------------------------------


def format_record(record: CompressRecord) -> list[Table]:
    """Two rich tables: before/after measurements, then the guard's decisions."""
    title = f"compress {record.key[:12]}{' (reused)' if record.reused else ''}: {record.runtime}"
    tables = [format_measurements({"before": record.before, "after": record.after}, title=title),
              format_decisions(record.decisions)]
    if record.agreement:
        a = record.agreement
        table = Table("quantized vs fp32 ONNX", "test rows", "argmax agreement", "max |logit diff|",
                      title="quantization check")
        mark = "[green]ok[/green]" if a["ok"] else f"[red]below {a['threshold']:.0%}[/red]"
        table.add_row(a.get("reference", ""), f"{a['examples']:,}", f"{a['argmax_agreement']:.2%} {mark}",
                      f"{a['max_abs_diff']:.4f}")
        tables.append(table)
    return tables


__all__ = ["CompressRecord", "MeasureSettings", "PruneRecord", "SCORES_ONLY", "format_record", "parse_lengths",
           "parse_steps", "step_label"]
