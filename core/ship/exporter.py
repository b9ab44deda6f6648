"""The exporter plugin surface: the ``Exporter`` base, what an export returns (``Exported``,
``Check``, ``Failure``), and the ``ExportSource`` it reads (``load_source``: a stage and its test rows).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alambic.compress.chain import MODEL_DIR, RECORD_FILE
from alambic.errors import AlambicError
from alambic.options import NoOptions, validated
from alambic.paths import inside
from alambic.train.models import load_pretrained

if TYPE_CHECKING:
    import numpy as np

#: an int8 file should be about a quarter of the fp32 weights (int8 + scales, norms, graph)
MAX_INT8_RATIO = 0.3
#: a quantized graph predicts as the fp32 model on at least this share of the test rows
MIN_QUANTIZED_AGREEMENT = 0.995
#: train rows tokenized for exporters that calibrate int8 activations (each takes what it needs)
CALIBRATION_EXAMPLES = 256
_OP = re.compile(r"\b(?:op|operator)\s+['\"]([\w.:]+)['\"]")


# --- the plugin surface ---------------------------------------------------------------------


#: what a check covered, said beside it (verification.json, the table, the bundle README)
RUNTIME = "runtime"  # the shipped file run by its own runtime, scored against the source model
SOURCE_GRAPH = "source graph"  # the PyTorch graph given to the converter, not the converted file
STRUCTURE = "structure"  # the saved file read back (spec, inputs, outputs, ops, size): no prediction
NEEDS_A_MAC = "needs a Mac"  # cannot run on Linux; how to run it is in the check's value
WEIGHTS_SCORED = "weights scored"  # the weights read back out of the saved file, scored in PyTorch
COVERS = (RUNTIME, WEIGHTS_SCORED, SOURCE_GRAPH, STRUCTURE, NEEDS_A_MAC)


@dataclass
class Check:
    """One verification: what, whether it passed (None: a figure, or not run), the figure shown,
    and what it covered (:data:`COVERS`)."""

    name: str
    ok: bool | None
    value: str
    data: dict[str, Any] = field(default_factory=dict)
    covers: str = STRUCTURE


@dataclass
class Exported:
    """What an exporter wrote (paths inside its folder) and what it verified."""

    files: list[Path]
    spec: dict[str, Any] = field(default_factory=dict)  # inputs/outputs as the app sees them
    checks: list[Check] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # shipped file or package -> bytes
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [dataclasses.asdict(c) for c in self.checks], "sizes": self.sizes,
                "notes": self.notes, "spec": self.spec}


@dataclass(frozen=True)
class Failure:
    """A format that did not export: the error, the op that failed (if named), what to try."""

    format: str
    error: str
    op: str | None
    fallback: str

    @property
    def message(self) -> str:
        at = f" at op '{self.op}'" if self.op else ""
        return f"{self.format} export failed{at}: {self.error}; {self.fallback}"


class Exporter:
    """Base of exporter plugins: set ``id``, a docstring, ``Options``; define ``export``.

    ``export(source, folder, options)`` writes the format's files into ``folder`` (created, empty)
    and returns an :class:`Exported` with the checks it ran; it raises when the format cannot be
    made, naming the op in the message when one is to blame (``op 'new_ones'``), and ``fallback``
    says what to try instead. The docstring's first line is what ``alambic plugins`` shows.
    """

    id: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    @classmethod
    def options(cls, given: Any = None) -> Any:
        """``given`` (None, a mapping, or an ``Options``) as a validated ``Options``."""
        return validated(f"exporter '{cls.id}'", cls.Options, given)

    @classmethod
    def export(cls, source: ExportSource, folder: Path, options: Any) -> Exported:
        raise NotImplementedError(f"{cls.__qualname__} must define export()")

    @classmethod
    def fallback(cls, error: BaseException, op: str | None) -> str:
        """What to try when ``export`` raised ``error`` (shown with the failure)."""
        return "export the other formats (--format onnx), or see the log (-v) for the cause"

    @classmethod
    def failure(cls, error: BaseException) -> Failure:
        text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        match = _OP.search(str(error))
        op = match.group(1) if match else None
        return Failure(cls.id, text[:500], op, cls.fallback(error, op))


def size_check(name: str, size: int, fp32: int, max_ratio: float = MAX_INT8_RATIO) -> Check:
    """``size`` against the fp32 size: at most ``max_ratio`` of it (int8 is ~1/4)."""
    ratio = size / fp32
    return Check(f"{name} size vs fp32", ratio <= max_ratio,
                 f"{size / 1e6:.2f} MB = {ratio:.2f}x fp32 {fp32 / 1e6:.2f} MB (<= {max_ratio})",
                 {"bytes": size, "fp32_bytes": fp32, "ratio": round(ratio, 4), "max_ratio": max_ratio})


# --- the source -----------------------------------------------------------------------------


@dataclass
class ExportSource:
    """A compress stage (or a save_pretrained folder) and the test rows to verify exports on."""

    stage_dir: Path
    model_dir: Path
    record: dict[str, Any]  # record.json ({} for a plain model folder)
    labels: list[str]
    max_length: int
    metadata: dict[str, Any]  # author, license, description (the run config's export section)
    recipe: dict[str, Any]
    test: Any = None  # tokenized rows (input_ids, attention_mask, token_type_ids, label, length)
    texts: list[str] | None = None  # their text, for the Hugging Face pipeline
    tokenizer: Any = None  # the stage's own (a pruned vocabulary has its own)
    #: tokenized train rows (a seeded sample) for exporters that calibrate int8 activations: rows no
    #: check judges, so the test rows stay whole for verification; None when no train split was given
    calibration: Any = None

    @cached_property
    def model(self) -> Any:
        """The fp32 PyTorch model, eval mode."""
        from transformers import AutoModelForSequenceClassification

        return load_pretrained(self.model_dir, AutoModelForSequenceClassification, config_key="--stage").eval()

    @cached_property
    def reference_logits(self) -> np.ndarray:
        """The PyTorch model's logits on the test rows, in row order."""
        import numpy as np

        from alambic.train.loop import predict

        rows, logits = predict(self.model, self.test, batch_size=64)
        return logits[np.argsort(rows)]

    @property
    def runtime(self) -> str:
        return self.record.get("runtime", "pytorch")

    @property
    def quantization(self) -> dict[str, Any]:
        return self.record.get("quantization") or {}

    @property
    def int8(self) -> bool:
        """Whether the candidate was quantized to int8 (weights), for any runtime."""
        quant = self.quantization
        options = quant.get("options") or {}
        return "int8" in str(quant.get("quantizer", "")) or "int8" in options.values()

    @property
    def artifact(self) -> Path | None:
        """The quantized file the candidate ships (an ONNX graph, a state dict, a Core ML package), if any."""
        return self._stage_file(self.record.get("artifact"), "artifact")

    @property
    def quantization_source(self) -> Path | None:
        """The fp32 graph the candidate was quantized from, if the stage still holds it."""
        return self._stage_file(self.quantization.get("source"), "quantization.source")

    def _stage_file(self, name: Any, key: str) -> Path | None:
        """The file (or package folder) record.json names at ``key``, checked to lie inside the stage,
        if it is there."""
        path = self.stage_path(name, key) if name else None
        return path if path is not None and path.exists() else None

    def stage_path(self, value: Any, key: str) -> Path:
        """A path record.json gives at ``key``, checked to lie inside the stage folder."""
        return inside(self.stage_dir, value, source=f"{self.stage_dir}/{RECORD_FILE}", key=key)


def check_record_paths(stage_dir: Path, record: Mapping[str, Any]) -> None:
    """Every path a compress record holds (``artifact``, ``quantization.source``, ``.files``) is
    relative and inside ``stage_dir``; else UnsafePathError naming record.json, the key and the value."""
    quant = record.get("quantization") or {}
    named = [("artifact", record.get("artifact")), ("quantization.source", quant.get("source")),
             *((f"quantization.files[{i}]", f) for i, f in enumerate(quant.get("files") or []))]
    for key, value in named:
        if value is not None:
            inside(stage_dir, value, source=f"{stage_dir}/{RECORD_FILE}", key=key)


def load_source(stage_dir: str | Path, *, test_split: Any = None, recipe: Mapping[str, Any] | None = None,
                metadata: Mapping[str, Any] | None = None, max_length: int | None = None,
                max_examples: int = 2000, calibration_split: Any = None) -> ExportSource:
    """Read a stage folder (``model/``, ``record.json``) and tokenize up to ``max_examples`` test rows
    and up to :data:`CALIBRATION_EXAMPLES` rows of ``calibration_split`` (the run's train split)."""
    stage = Path(stage_dir).expanduser().resolve()
    model_dir = stage / MODEL_DIR if (stage / MODEL_DIR / "config.json").is_file() else stage
    if not (model_dir / "config.json").is_file():
        raise AlambicError(f"{stage} is not a compress stage folder: expected {MODEL_DIR}/config.json and "
                           f"{RECORD_FILE} (as `alambic compress` writes them), or a save_pretrained folder")
    record = json.loads((stage / RECORD_FILE).read_text(encoding="utf-8")) if (stage / RECORD_FILE).is_file() else {}
    check_record_paths(stage, record)  # a tampered record fails here, before any work
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    labels = [str(name) for _, name in sorted((int(i), n) for i, n in (config.get("id2label") or {}).items())]
    tokenizer = _tokenizer(model_dir)
    positions = int(config.get("max_position_embeddings") or 512)
    max_length = max_length or min(int(getattr(tokenizer, "model_max_length", positions) or positions), positions)
    if max_length > positions:
        raise AlambicError(f"max_length {max_length} exceeds the model's {positions} positions")
    inputs = record.get("inputs") or {}
    default_recipe = {"stage": record.get("key"), "model_dir": record.get("model_dir"),
                      "prune_key": record.get("prune_key"), "steps": record.get("steps"),
                      "quant": inputs.get("quant"), "quant_options": inputs.get("quant_options")}
    source = ExportSource(stage, model_dir, record, labels, max_length, dict(metadata or {}),
                          dict(recipe or default_recipe), tokenizer=tokenizer)
    if test_split is not None:
        source.test, source.texts = _tokenized(test_split, tokenizer, max_length, max_examples)
    if calibration_split is not None and len(calibration_split):
        source.calibration, _ = _tokenized(calibration_split, tokenizer, max_length, CALIBRATION_EXAMPLES, "train")
    return source


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
        raise AlambicError(f"{model_dir} has no tokenizer (vocab.txt / tokenizer.json): an app cannot tokenize "
                           f"as training did; save the tokenizer into the model folder")
    return AutoTokenizer.from_pretrained(str(model_dir))


def _tokenized(split: Any, tokenizer: Any, max_length: int, max_examples: int,
               name: str = "test") -> tuple[Any, list[str] | None]:
    from datasets import Dataset

    picked = range(len(split))
    if len(split) > max_examples:  # a seeded sample, not the first rows: a test file is often grouped by class
        picked = sorted(random.Random(0).sample(picked, max_examples))
    rows = split.select(picked)
    if len(rows) == 0:
        raise AlambicError(f"the {name} split given to export has no rows")
    texts = [str(t) for t in rows["text"]] if "text" in rows.column_names else None
    if "input_ids" in rows.column_names:  # tokenized already: give it what batching reads
        if "length" not in rows.column_names:
            rows = rows.add_column("length", [len(ids) for ids in rows["input_ids"]])
        if "label" not in rows.column_names:
            rows = rows.add_column("label", [-1] * len(rows))
        return rows, texts
    if texts is None:
        raise AlambicError(f"the {name} split needs a 'text' column (raw rows) or 'input_ids' (tokenized rows)")
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    columns = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
    columns["length"] = [len(ids) for ids in encoded["input_ids"]]
    columns["label"] = list(rows["label"]) if "label" in rows.column_names else [-1] * len(rows)  # -1: unknown
    return Dataset.from_dict(columns), texts


__all__ = ["MAX_INT8_RATIO", "MIN_QUANTIZED_AGREEMENT", "Check", "ExportSource", "Exported", "Exporter", "Failure",
           "check_record_paths", "load_source", "size_check"]
