"""Core ML's own compression as quantizers, for iPhones (iOS 18): what only Core ML offers.

==========  ==============================================================  =======
id          what                                                            runtime
==========  ==============================================================  =======
palettize   each weight as indices into k-means look-up tables of 2^nbits   coreml
            fp16 values (4, 6 or 8 bits), one table per group of output
            channels; with ``sparsity`` > 0, jointly pruned: the smallest
            weights set to zero first, the kept ones palettized
int4-block  int4 weights, one fp16 scale per block of input channels         coreml
==========  ==============================================================  =======

Each converts the model to an ML Program (iOS 18, fp16 compute), compresses it with
``coremltools.optimize.coreml`` and saves ``Classifier.mlpackage``: what ships, and what the size is
of. Its weights are then read back out of the saved package and loaded into the module that was
converted (:func:`alambic.ship.coreml_scoring.as_shipped`): that module, at fp16 compute, is what
the guard and the measurements score, so the accuracy is the package's. Core ML cannot run here:
latency is not measured (:data:`alambic.compress.latency.UNTIMED`), and the front says so.

Joint structured pruning and palettization is a search candidate with pruning steps and
``palettize``; ``sparsity`` adds Core ML's own unstructured pruning in the same package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import alambic
from alambic.compress.latency import UNTIMED
from alambic.compress.quantization import QuantContext, Quantized, Quantizer, QuantSource
from alambic.errors import AlambicError
from alambic.options import choice
from alambic.ship.coreml_compression import KINDS, LUT_BITS, SPARSE, WeightPlan
from alambic.ship.coreml_export import convert_classifier, package_bytes
from alambic.ship.coreml_scoring import as_shipped, read_back

if TYPE_CHECKING:
    from alambic.registry import KindRegistry

PACKAGE = "Classifier.mlpackage"
TARGET = "iOS18"  # grouped look-up tables, int4 blocks and sparse weights need iOS 18's ML Program
MAX_POSITIONS = 512  # the input length bound when neither the run nor the model gives one


@dataclass(frozen=True)
class PalettizeOptions:
    nbits: int = 4  # 2^nbits entries per look-up table
    group_size: int = 16  # output channels sharing one table (fewer where they do not divide a weight's)
    sparsity: float = 0.0  # > 0: that share of each weight's smallest values pruned first (joint, sparse+lut)
    embeddings: bool = True  # the embedding tables too (most of a small model's bytes); False: fp16

    def __post_init__(self) -> None:
        who = "quantizer 'palettize'"
        choice(who, "nbits", self.nbits, LUT_BITS)
        if self.group_size < 1:
            raise AlambicError(f"{who}: group_size must be >= 1, got {self.group_size!r}")
        if not 0 <= self.sparsity < 1:
            raise AlambicError(f"{who}: sparsity must be in [0, 1), got {self.sparsity!r}")

    def plan(self) -> WeightPlan:
        form = f"{SPARSE if self.sparsity else ''}lut{self.nbits}"
        return WeightPlan(_kinds(form, self.embeddings), group_size=self.group_size, sparsity=self.sparsity)


@dataclass(frozen=True)
class Int4BlockOptions:
    block_size: int = 32  # input channels sharing one scale (one per output channel where a block does not divide)
    embeddings: bool = True  # the embedding tables too; False: fp16

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise AlambicError(f"quantizer 'int4-block': block_size must be >= 1, got {self.block_size!r}")

    def plan(self) -> WeightPlan:
        return WeightPlan(_kinds("int4", self.embeddings), block_size=self.block_size)


def _kinds(form: str, embeddings: bool) -> dict[str, str]:
    return {kind: form if kind != "embeddings" or embeddings else "fp16" for kind in KINDS}


class CoreMLQuantizer(Quantizer):
    """Base of the Core ML quantizers: convert, compress by the options' plan, save, read back."""

    runtime = "coreml"

    @classmethod
    def quantize(cls, source: QuantSource, options: Any, context: QuantContext) -> Quantized:
        model = source.model
        if model is None:
            raise AlambicError(f"quantizer '{cls.id}' converts the PyTorch model to Core ML: it needs the model, "
                               f"not only an ONNX file")
        plan = options.plan()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        length = context.max_length or min(model.config.max_position_embeddings, MAX_POSITIONS)
        path = context.work_dir / PACKAGE
        convert_classifier(model, labels, length, target=TARGET, weights=plan).save(str(path))
        read = read_back(path)  # what the app will hold: scored, and checked against the plan
        fp32, size = 4 * sum(p.numel() for p in model.parameters()), package_bytes(path)
        report = {"fp32_bytes": fp32, "bytes": size, "size_ratio": round(size / fp32, 4), "target": TARGET,
                  "max_length": length, "plan": dataclasses.asdict(plan), "described": plan.describe(),
                  "forms": read.precisions(), "compute": "fp16", "latency": UNTIMED["coreml"]}
        return Quantized(runtime="coreml", files=[path], model=as_shipped(model, read), report=report)


class Palettize(CoreMLQuantizer):
    """Palettized weights (k-means look-up tables, 4/6/8 bits per grouped channel), optionally jointly pruned; Core ML."""

    id = "palettize"
    Options = PalettizeOptions


class Int4Block(CoreMLQuantizer):
    """int4 weights with one scale per block of input channels (iOS 18); Core ML."""

    id = "int4-block"
    Options = Int4BlockOptions


QUANTIZERS: tuple[type[Quantizer], ...] = (Palettize, Int4Block)


@alambic.hookimpl
def alambic_register_quantizers(register: KindRegistry) -> None:
    for cls in QUANTIZERS:
        register.add(cls)
