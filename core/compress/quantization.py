"""Quantization: the quantizer plugin base class, its source, context and result; and dynamic
INT8 in PyTorch. The ONNX Runtime techniques are functions of :mod:`alambic.compress.onnx_quant`.

Quantizer plugins (``alambic_register_quantizers``) wrap those functions: a class with an ``id``,
the ``runtime`` its output runs on, a frozen ``Options`` dataclass, and ``quantize``::

    Q = registry["quantizers"].get("static-int8")
    result = Q.apply(QuantSource(model=model), {"method": "entropy"}, QuantContext(work_dir, train))
    result.runtime, result.files, result.report     # files: what a phone ships

``apply`` validates the options, exports the model to ONNX when no ONNX file is given, and writes
``quantization.json`` (quantizer, options, runtime, files, report) into the work directory, so that
every artifact records exactly how it was made.

Nothing heavy is imported at module level: plugin discovery imports this module.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alambic.compress.onnx_export import export_onnx
from alambic.errors import AlambicError
from alambic.options import NoOptions, validated

if TYPE_CHECKING:
    import torch


# --- the plugin surface ---------------------------------------------------------------------


@dataclass
class QuantContext:
    """What a quantizer may use besides its source: a folder to write in, calibration data."""

    work_dir: Path
    #: rows to calibrate on: the tokenized train split (input_ids, attention_mask, maybe
    #: token_type_ids), never the validation rows the accuracy guard then scores the quantized model
    #: on; calibrated on those, the model would be graded on the rows its ranges were fitted to
    calibration: Any = None
    calibration_split: str = "train"  # which split ``calibration`` is, for the quantizer's report
    device: str = "cpu"  # for PyTorch work; ONNX Runtime quantization and calibration run on the CPU
    #: whether an ONNX graph exported here takes token_type_ids
    use_token_type_ids: bool = True
    #: the longest input (tokens) the result must take, for formats with a fixed upper bound (Core ML);
    #: None = the model's max_position_embeddings
    max_length: int | None = None

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)


@dataclass
class QuantSource:
    """An fp32 classifier: the PyTorch model, its exported ONNX graph, or both."""

    model: Any = None
    onnx: Path | None = None

    def onnx_path(self, context: QuantContext) -> Path:
        """The fp32 ONNX graph, exported into the work directory on first use if none was given."""
        if self.onnx is None:
            if self.model is None:
                raise AlambicError("quantization needs a source: a PyTorch model or an ONNX file")

            self.onnx = export_onnx(self.model, context.work_dir / "fp32.onnx",
                                    use_token_type_ids=context.use_token_type_ids)
        return Path(self.onnx)


@dataclass
class Quantized:
    """A quantizer's result: where it runs, the files a phone ships, the model, a report."""

    runtime: str  # "pytorch" | "onnxruntime" | "coreml"
    files: list[Path]
    #: the quantized PyTorch module when runtime is "pytorch"; for "coreml", a module holding the
    #: shipped weights as Core ML will (read back from the package) that scores it here
    model: Any = None
    report: dict[str, Any] = field(default_factory=dict)


class Quantizer:
    """Base of quantizer plugins: set ``id``, ``runtime``, a docstring, ``Options``; define ``quantize``.

    The docstring's first line says what the quantizer does and which runtime its output runs on.
    A quantizer whose options choose the runtime has an option ``runtime`` and lists the runtimes
    in ``runtimes``; ``runtime`` is then its default.
    """

    id: ClassVar[str] = ""
    runtime: ClassVar[str] = "onnxruntime"
    runtimes: ClassVar[tuple[str, ...]] = ()  # () = only ``runtime``
    Options: ClassVar[type] = NoOptions
    #: options a former version had: name -> why it went, so that an old config fails with the
    #: reason rather than "unknown option" (or, worse, silently gets what the option used to undo)
    removed_options: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def options(cls, given: Any = None) -> Any:
        """``given`` (None, a mapping of option names, or an ``Options``) as a validated ``Options``."""
        return validated(f"quantizer '{cls.id}'", cls.Options, given, cls.removed_options)

    @classmethod
    def runtime_of(cls, options: Any) -> str:
        """The runtime the output of these options runs on."""
        return getattr(options, "runtime", cls.runtime)

    @classmethod
    def apply(cls, source: QuantSource | Any, options: Any = None,
              context: QuantContext | None = None) -> Quantized:
        """Quantize ``source`` (a :class:`QuantSource`, a PyTorch model or an ONNX path)."""
        options = cls.options(options)
        if context is None:
            raise AlambicError(f"quantizer '{cls.id}' needs a QuantContext with a work_dir")
        context.work_dir.mkdir(parents=True, exist_ok=True)
        result = cls.quantize(as_source(source), options, context)
        if result.runtime != cls.runtime_of(options):
            raise AlambicError(f"quantizer '{cls.id}' produced a {result.runtime} model, "
                               f"but says it targets {cls.runtime_of(options)}")
        result.report = {"quantizer": cls.id, "options": dataclasses.asdict(options),
                         "runtime": result.runtime} | result.report
        record = {**result.report, "files": [str(f) for f in result.files]}
        (context.work_dir / "quantization.json").write_text(json.dumps(record, indent=2, default=str) + "\n",
                                                            encoding="utf-8")
        return result

    @classmethod
    def quantize(cls, source: QuantSource, options: Any, context: QuantContext) -> Quantized:
        raise NotImplementedError(f"{cls.__qualname__} must define quantize()")


def as_source(source: QuantSource | Any) -> QuantSource:
    if isinstance(source, QuantSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        return QuantSource(onnx=Path(source))
    return QuantSource(model=source)


# --- PyTorch technique ----------------------------------------------------------------------


def int8_dynamic_torch(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic INT8 (PyTorch): a copy of ``model`` whose nn.Linear layers hold int8 weights.

    Through torchao's ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``, the supported
    path: ``torch.ao.quantization.quantize_dynamic`` is deprecated in torch 2.13 (it warns that
    it is to be removed). torchao is optional; without it this raises with the install command.
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise AlambicError(
            "dynamic INT8 for PyTorch needs torchao (`pip install torchao`): torch.ao.quantization "
            "is deprecated in torch 2.13; or use runtime=onnxruntime"
        ) from None
    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return quantized
