"""Built-in quantizers: dynamic and static INT8, FP16, and per-module-kind mixed precision.

============  ==========================================================  ==========================
id            what                                                        runtime of the output
============  ==========================================================  ==========================
dynamic-int8  int8 weights of linear layers (and embeddings), activations  onnxruntime (default), or
              quantized per batch at run time; on ONNX Runtime, of the    pytorch (needs torchao)
              graph fused by its transformer optimizer (``graph: fused``)
static-int8   int8 weights (per channel) and activations, QDQ format,      onnxruntime
              ranges calibrated on a sample of train rows, unpadded
              (minmax/entropy/percentile)
fp16          half-precision weights and arithmetic; for GPU/NPU targets   onnxruntime
mixed         a precision per module kind: attention, ffn, embeddings      onnxruntime
============  ==========================================================  ==========================

Each class only adapts a function of :mod:`alambic.compress.onnx_quant` (or
:mod:`alambic.compress.quantization` for PyTorch), which does the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import alambic
from alambic.compress.measure import weight_bytes
from alambic.compress.onnx_export import attention_dims, file_bytes, fused_operators, optimize_onnx
from alambic.compress.onnx_quant import (
    CALIBRATION_METHODS,
    PRECISIONS,
    calibration_sample,
    int8_dynamic,
    int8_static,
    mixed_precision,
    op_counts,
    to_fp16,
)
from alambic.compress.quantization import QuantContext, Quantized, Quantizer, QuantSource, int8_dynamic_torch
from alambic.errors import AlambicError
from alambic.options import choice

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from alambic.registry import KindRegistry


def _onnx_result(source: Path, out: Path, extra: dict | None = None) -> Quantized:
    """An ONNX Runtime result: the file, and its size against the fp32 graph's."""
    fp32, size = file_bytes(source), file_bytes(out)
    report = {"source": str(source), "fp32_bytes": fp32, "bytes": size, "size_ratio": round(size / fp32, 4),
              "ops": op_counts(out)} | (extra or {})
    return Quantized(runtime="onnxruntime", files=[out], report=report)


# --- dynamic INT8 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DynamicInt8Options:
    runtime: str = "onnxruntime"  # or "pytorch" (torchao: Linear layers, weights always per channel)
    # onnxruntime: quantize the graph ONNX Runtime's transformer optimizer fused (Attention, BiasGelu,
    # EmbedLayerNormalization), or the plain export; fused is the faster (benchmarks/inference.py,
    # BENCHMARKS.md); a graph nothing fuses in stays as it is
    graph: str = "fused"
    per_channel: bool = False  # one weight scale per output channel: more accurate, a bit slower
    reduce_range: bool = False  # 7-bit weights: avoids int16 overflow on CPUs without VNNI
    # int8 embedding tables too (most of a small model's bytes); None = yes for onnxruntime, no for
    # pytorch, where only Linear layers are quantized
    embeddings: bool | None = None

    def __post_init__(self) -> None:
        who = "quantizer 'dynamic-int8'"
        choice(who, "runtime", self.runtime, DynamicInt8.runtimes)
        choice(who, "graph", self.graph, ("fused", "plain"))
        if self.runtime == "pytorch" and (self.reduce_range or self.embeddings):
            raise AlambicError(f"{who}: reduce_range and embeddings apply to runtime onnxruntime only; "
                               f"runtime pytorch quantizes Linear layers only")


class DynamicInt8(Quantizer):
    """Dynamic INT8 of linear layers and embeddings, for ONNX Runtime (default) or PyTorch."""

    id = "dynamic-int8"
    runtime = "onnxruntime"
    runtimes = ("onnxruntime", "pytorch")
    Options = DynamicInt8Options

    @classmethod
    def quantize(cls, source: QuantSource, options: DynamicInt8Options, context: QuantContext) -> Quantized:
        if options.runtime == "pytorch":
            return _torch_dynamic(source, context)

        fp32 = source.onnx_path(context)
        graph, extra = fp32, {"graph": "plain"}
        if options.graph == "fused":
            graph = fused_graph(fp32, source, context)
            extra = {"graph": "fused", "fused_ops": fused_operators(graph)}
        out = int8_dynamic(graph, context.work_dir / "model.int8-dynamic.onnx", per_channel=options.per_channel,
                           reduce_range=options.reduce_range, embeddings=options.embeddings is not False)
        return _onnx_result(fp32, out, extra)


def fused_graph(fp32: Path, source: QuantSource, context: QuantContext) -> Path:
    """The fp32 graph fused by ONNX Runtime's transformer optimizer, heads and width from the model's
    config when there is a model (the optimizer infers them from an ONNX file alone)."""
    heads, width = attention_dims(source.model.config) if source.model is not None else (0, 0)
    return optimize_onnx(fp32, context.work_dir / "fp32.fused.onnx", heads, width)


def _torch_dynamic(source: QuantSource, context: QuantContext) -> Quantized:
    import torch

    if source.model is None:
        raise AlambicError("quantizer 'dynamic-int8' with runtime pytorch needs the PyTorch model, not only ONNX")
    model = int8_dynamic_torch(source.model)
    path = context.work_dir / "model.int8-dynamic.pt"
    torch.save(model.state_dict(), path)  # loading it needs torchao too (its int8 tensor class)
    fp32, size = weight_bytes(source.model)["total_bytes"], path.stat().st_size
    return Quantized(runtime="pytorch", files=[path], model=model,
                     report={"fp32_bytes": fp32, "bytes": size, "size_ratio": round(size / fp32, 4),
                             "weights": "int8, per output channel (torchao); embeddings fp32"})


# --- static INT8 ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticInt8Options:
    method: str = "minmax"  # minmax | entropy | percentile: how activation ranges are chosen
    percentile: float = 99.999  # with method percentile: the clipping percentile of |activation|
    histogram_bins: int = 2048  # entropy/percentile histogram resolution (>= 512); entropy's cost ~ its square
    # one weight scale per output channel: one per matrix is set by its largest weight, and the
    # channels of small weights then keep only a few of the 256 levels
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI
    embeddings: bool = True  # int8 embedding tables too
    # train rows drawn at random to calibrate on (QuantContext.calibration); not the first rows,
    # which in a file sorted by class are all one class
    examples: int = 256
    seed: int = 0  # of that draw
    batch_size: int = 16  # at most this many rows, all of one length, per batch: no padding

    def __post_init__(self) -> None:
        who = "quantizer 'static-int8'"
        choice(who, "method", self.method, CALIBRATION_METHODS)
        if not 0 < self.percentile <= 100:
            raise AlambicError(f"{who}: percentile must be in (0, 100], got {self.percentile!r}")
        if self.histogram_bins < 512:
            raise AlambicError(f"{who}: histogram_bins must be >= 512, got {self.histogram_bins!r}")
        for name in ("examples", "batch_size"):
            if getattr(self, name) < 1:
                raise AlambicError(f"{who}: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.seed < 0:  # numpy's generator refuses it, less clearly
            raise AlambicError(f"{who}: seed must be >= 0, got {self.seed!r}")


class StaticInt8(Quantizer):
    """Static INT8 in QDQ format, ranges calibrated on a sample of train rows, for ONNX Runtime."""

    id = "static-int8"
    runtime = "onnxruntime"
    Options = StaticInt8Options
    removed_options: ClassVar[Mapping[str, str]] = {
        "sequence_length": "calibration batches are no longer padded (each holds rows of one length), "
                           "so that [PAD] activations stay out of the activation ranges",
    }

    @classmethod
    def quantize(cls, source: QuantSource, options: StaticInt8Options, context: QuantContext) -> Quantized:
        rows = calibration_sample(context.calibration, options.examples, options.seed)  # the rows int8_static draws
        fp32 = source.onnx_path(context)
        out = int8_static(fp32, context.work_dir / "model.int8-static.onnx", context.calibration,
                          method=options.method, per_channel=options.per_channel,
                          reduce_range=options.reduce_range, examples=options.examples, seed=options.seed,
                          batch_size=options.batch_size, percentile=options.percentile,
                          histogram_bins=options.histogram_bins, embeddings=options.embeddings)
        calibration = {"split": context.calibration_split, "rows": len(rows), "of": len(context.calibration),
                       "seed": options.seed, "indices": rows}
        return _onnx_result(fp32, out, {"calibration": calibration})


# --- FP16 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fp16Options:
    keep_io_types: bool = True  # int64 ids in, float32 logits out, as the fp32 graph


class Fp16(Quantizer):
    """FP16 weights and arithmetic, for ONNX Runtime on GPU/NPU (Core ML, NNAPI); slow on CPU."""

    id = "fp16"
    runtime = "onnxruntime"
    Options = Fp16Options

    @classmethod
    def quantize(cls, source: QuantSource, options: Fp16Options, context: QuantContext) -> Quantized:
        fp32 = source.onnx_path(context)
        out = to_fp16(fp32, context.work_dir / "model.fp16.onnx", keep_io_types=options.keep_io_types)
        note = "ONNX Runtime's CPU provider runs fp16 mostly through casts: measure it on a GPU/NPU provider"
        return _onnx_result(fp32, out, {"note": note})


# --- mixed ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixedOptions:
    attention: str = "fp16"  # self-attention and its output projection
    ffn: str = "int8"  # the rest of each encoder layer
    embeddings: str = "int8"  # embedding tables
    per_channel: bool = False  # for the int8 kinds
    reduce_range: bool = False

    def __post_init__(self) -> None:
        for kind in ("attention", "ffn", "embeddings"):
            choice("quantizer 'mixed'", kind, getattr(self, kind), PRECISIONS)


class Mixed(Quantizer):
    """A precision per module kind (attention, FFN, embeddings: int8/fp16/fp32), for ONNX Runtime."""

    id = "mixed"
    runtime = "onnxruntime"
    Options = MixedOptions

    @classmethod
    def quantize(cls, source: QuantSource, options: MixedOptions, context: QuantContext) -> Quantized:
        fp32 = source.onnx_path(context)
        policy = {"attention": options.attention, "ffn": options.ffn, "embeddings": options.embeddings}
        out = mixed_precision(fp32, context.work_dir / "model.mixed.onnx", policy,
                              per_channel=options.per_channel, reduce_range=options.reduce_range)
        return _onnx_result(fp32, out, {"policy": policy})


QUANTIZERS: tuple[type[Quantizer], ...] = (DynamicInt8, StaticInt8, Fp16, Mixed)


@alambic.hookimpl
def alambic_register_quantizers(register: KindRegistry) -> None:
    for cls in QUANTIZERS:
        register.add(cls)
