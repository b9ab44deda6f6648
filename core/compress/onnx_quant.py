"""Quantization with ONNX Runtime, each technique as a plain function on files.

They can be called from a notebook::

    fp32 = export_onnx(model, "model.onnx")
    int8_dynamic(fp32, "model.int8.onnx", per_channel=True)
    int8_static(fp32, "model.qdq.onnx", train, method="percentile")
    to_fp16(fp32, "model.fp16.onnx")
    mixed_precision(fp32, "model.mixed.onnx", {"attention": "fp16", "ffn": "int8", "embeddings": "int8"})
    compare_logits(fp32, "model.int8.onnx", test, 2000)["argmax_agreement"]

The quantizer plugins (:mod:`alambic.plugins.quantizers`) wrap them. onnx and onnxruntime are
imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from alambic.errors import AlambicError
from alambic.options import choice

log = logging.getLogger(__name__)

#: where a node of an encoder graph belongs, for per-kind precision policies
MODULE_KINDS = ("embeddings", "attention", "ffn", "other")
PRECISIONS = ("int8", "fp16", "fp32")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: ops dynamic INT8 quantizes: linear layers (MatMul/Gemm, fused Attention) and embedding tables
LINEAR_OPS = ("MatMul", "Gemm", "Attention")
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


def int8_dynamic(source: str | os.PathLike[str], out: str | os.PathLike[str], *, per_channel: bool = False,
                 reduce_range: bool = False, embeddings: bool = True,
                 nodes_to_quantize: list[str] | None = None) -> Path:
    """Dynamic INT8 (ONNX Runtime): int8 weights, activations quantized on the fly per batch.

    :param embeddings: also store the embedding tables (Gather) as int8; in a small model they
        are most of the bytes.
    :param nodes_to_quantize: only these nodes (None = every linear layer, and embeddings).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = list(LINEAR_OPS + (EMBEDDING_OPS if embeddings else ()))
    with _shapes_inferred(source) as source, _quiet_quantizer():
        quantize_dynamic(str(source), str(out), op_types_to_quantize=ops, per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         nodes_to_quantize=nodes_to_quantize)
    return Path(out)


def int8_static(source: str | os.PathLike[str], out: str | os.PathLike[str], calibration: Any, *,
                method: str = "minmax", per_channel: bool = True, reduce_range: bool = False,
                examples: int = 256, seed: int = 0, batch_size: int = 16, percentile: float = 99.999,
                histogram_bins: int = 2048, embeddings: bool = True) -> Path:
    """Static INT8 (ONNX Runtime, QDQ format): activation ranges calibrated on ``calibration``.

    :param calibration: a tokenized Dataset, the train split: not rows the result is then scored
        on. ``examples`` of its rows, drawn at random with ``seed`` (:func:`calibration_sample`),
        run without padding (:func:`calibration_batches`).
    :param per_channel: one weight scale per output channel (default), rather than one per matrix,
        which a single large weight would stretch for every channel.
    :param method: ``minmax`` (observed range), ``entropy`` (KL-optimal clipping), ``percentile``
        (clip at the ``percentile`` of absolute values).
    :param batch_size: at most this many rows (all of one length) per calibration batch.
    :param histogram_bins: histogram resolution of entropy and percentile calibration; entropy's
        threshold search grows with its square (2048: ~20 s for a 2-layer toy, minutes for BERT).

    Give it the unfused export: ONNX Runtime fuses the QDQ pairs into int8 kernels itself when it
    loads the file, whereas in a graph fused by ``optimize_onnx`` the Attention and
    EmbedLayerNormalization ops have no QDQ form and stay fp32 (0.97x the size, not 0.27x).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    choice("static int8", "method", method, CALIBRATION_METHODS)
    out = Path(out)
    sample = calibration_sample(calibration, examples, seed)
    groups = calibration_batches(source, calibration.select(sample), batch_size)
    ops = ["MatMul", "Gemm"] + (["Gather"] if embeddings else [])
    cache = out.with_suffix(".calibration.json")  # the activation ranges: how this file was made
    cache.unlink(missing_ok=True)
    with _shapes_inferred(source) as source, _quiet_quantizer():
        calibrate(source, groups, method, cache, percentile=percentile, bins=histogram_bins, op_types=ops)
        quantize_static(str(source), str(out), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=ops, per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=_method(method), calibration_cache_path=str(cache))
    return out


@contextlib.contextmanager
def _shapes_inferred(source: str | os.PathLike[str]) -> Iterator[Path]:
    """``source``, or a copy annotated by ONNX Runtime's symbolic shape inference if it holds ORT's
    fused operators (a graph from :func:`~alambic.compress.onnx_export.optimize_onnx`).

    The quantizer must know each tensor's type; ONNX's own shape inference stops at the contrib
    ops (Attention, SkipLayerNormalization, ...) and the quantizer then fails ("Unable to find
    data type for weight_name"). An exported, unfused graph needs nothing: ONNX's inference covers
    it (and the symbolic one gives up on its shape arithmetic).
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(source), load_external_data=False).graph
    if not any(node.domain == "com.microsoft" for node in graph.node):
        yield Path(source)
        return
    source = Path(source).resolve()
    with tempfile.TemporaryDirectory(prefix="alambic-shapes-") as tmp:
        annotated = Path(tmp) / "shapes.onnx"
        # on failure the symbolic inference dumps the whole model into the working directory
        with contextlib.chdir(tmp):
            quant_pre_process(str(source), str(annotated), skip_optimization=True)
        yield annotated


def _method(name: str) -> Any:
    """ONNX Runtime's CalibrationMethod for one of :data:`CALIBRATION_METHODS`."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def calibrate(source: str | os.PathLike[str], groups: list[list[dict[str, Any]]], method: str,
              cache: str | os.PathLike[str], *, percentile: float = 99.999, bins: int = 2048,
              op_types: list[str] | None = None) -> Path:
    """Run ``source`` over the calibration batches and save each tensor's range to ``cache`` (JSON).

    ``groups`` as :func:`calibration_batches` makes them: one ``collect_data`` per group, as the
    histogram calibrators stack a call's tensors with ``np.asarray``, which needs one shape. Both
    calibrators carry what they saw from call to call: MinMax merges the ranges (exactly), the
    histograms are added up, widened at their first bin width when a later group goes further;
    so a histogram may end with more than ``bins`` bins (finer, and entropy's search slower: up
    to 1.6x the bins on the toy of the tests).

    Done here rather than inside ``quantize_static``, which builds its entropy calibrator with 128
    histogram bins for 128 quantized bins: then the only threshold it can try is the full range
    and "entropy" gives exactly MinMax's ranges (ONNX Runtime 1.32). Here entropy and percentile
    use ``bins`` (default 2048, as TensorRT's KL calibration) for 128 quantized bins.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        create_calibrator,
        save_tensors_data,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, batches: list[dict[str, Any]]) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    if method != "minmax" and bins < 512:
        raise AlambicError(f"{method} calibration needs at least 512 histogram bins, got {bins}")
    extra = {"entropy": {"num_bins": bins, "num_quantized_bins": 128},
             "percentile": {"num_bins": bins, "percentile": percentile}}.get(method, {})
    with tempfile.TemporaryDirectory(prefix="alambic-calib-") as tmp, _quiet_quantizer():
        calibrator = create_calibrator(Path(source), op_types, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=_method(method), extra_options=extra)
        for batches in groups:
            calibrator.collect_data(Reader(batches))
        ranges = calibrator.compute_data()
        del calibrator  # holds a session on the augmented model, in tmp
    save_tensors_data(ranges, str(cache))
    return Path(cache)


def calibration_sample(dataset: Any, examples: int, seed: int = 0) -> list[int]:
    """Which rows of ``dataset`` calibrate: ``examples`` of them drawn at random with ``seed``, in order.

    Not the first rows: a train file is often sorted (by class, by source), and its first rows
    would then be one kind of text. All rows when there are fewer than ``examples``.
    """
    import numpy as np

    if dataset is None or len(dataset) == 0:
        raise AlambicError("static INT8 needs calibration data: give QuantContext(calibration=the train split)")
    drawn = np.random.default_rng(seed).choice(len(dataset), size=min(examples, len(dataset)), replace=False)
    return sorted(drawn.tolist())


def calibration_batches(model: str | os.PathLike[str], dataset: Any, batch_size: int) -> list[list[dict[str, Any]]]:
    """The rows of ``dataset`` as int64 batches for ``model``, without padding: groups of batches,
    one group per row length, most tokens first; at most ``batch_size`` rows in a batch.

    A padded position is still computed by every layer (the attention mask only hides it from the
    other tokens), so padding would put activations of [PAD] into every calibrated range, more of
    them the longer a batch's longest row. Batching rows of one length needs no padding at all and
    keeps the batches whole, where batch size 1 would run every row alone; a dataset tokenized with
    padding is cut back to each row's attention mask first. Most tokens first: the first group
    sets the histograms' bin width (see :func:`calibrate`), and the most activations give the
    range nearest the final one (in a split truncated at max_length, the group of that length).
    """
    import numpy as np
    import onnx

    inputs = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    by_length: dict[int, list[dict[str, list[int]]]] = {}
    for row in dataset.select_columns([name for name in inputs if name in dataset.column_names]):
        row = _unpadded(row, inputs)
        by_length.setdefault(len(row["input_ids"]), []).append(row)
    by_length.pop(0, None)  # a row of padding only: nothing to calibrate on
    order = sorted(by_length, key=lambda length: (length * len(by_length[length]), length), reverse=True)
    return [[{name: np.array([r[name] for r in rows[lo:lo + batch_size]], dtype=np.int64) for name in inputs}
             for lo in range(0, len(rows), batch_size)]
            for rows in (by_length[length] for length in order)]


def _unpadded(row: dict[str, list[int]], inputs: list[str]) -> dict[str, list[int]]:
    """``row`` cut to the positions its attention mask keeps (left or right padding), with every input."""
    kept = [i for i, m in enumerate(row.get("attention_mask") or [1] * len(row["input_ids"])) if m]
    out = {name: [row[name][i] for i in kept] for name in inputs if name in row}
    out["attention_mask"] = [1] * len(kept)
    for name in inputs:  # no token_type_ids column: single sentences, all segment 0
        out.setdefault(name, [0] * len(kept))
    return {name: out[name] for name in inputs}


def to_fp16(source: str | os.PathLike[str], out: str | os.PathLike[str], *, keep_io_types: bool = True,
            nodes: set[str] | None = None) -> Path:
    """FP16 (ONNX Runtime): weights and arithmetic in half precision; inputs/outputs stay as they were.

    For GPU and NPU targets (Core ML, NNAPI, CUDA): ONNX Runtime's CPU provider runs most fp16
    ops by casting, so on a CPU it is smaller but not faster. Ops that lose accuracy in fp16 stay
    fp32 (the converter's default block list).

    :param nodes: convert only these nodes (by name); None = the whole graph. The rest stay fp32
        and so do the tensors between them: the converter alone would turn *every* typed tensor
        to fp16, passing even the nodes it leaves in fp32 through fp16 casts, which overflows
        MatMulInteger's int32 sums and the attention mask's float32 minimum (NaN logits).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    blocked = None
    if nodes is not None:
        model = onnx.shape_inference.infer_shapes(model)
        graph = model.graph
        touching = {t for n in graph.node if n.name in nodes for t in (*n.input, *n.output)}
        typed = [v for v in graph.value_info if v.name in touching]  # only these may become fp16
        del graph.value_info[:]
        graph.value_info.extend(typed)
        blocked = [n.name for n in graph.node if n.name not in nodes]
    with _quiet_quantizer():
        half = convert_float_to_float16(model, keep_io_types=keep_io_types, node_block_list=blocked,
                                        disable_shape_infer=nodes is not None)
    onnx.save(half, str(out))
    return Path(out)


def mixed_precision(source: str | os.PathLike[str], out: str | os.PathLike[str], policy: Mapping[str, str],
                    *, per_channel: bool = False, reduce_range: bool = False) -> Path:
    """Per-module-kind precision (ONNX Runtime): e.g. attention fp16, FFN int8, embeddings int8.

    ``policy`` maps kinds (:data:`MODULE_KINDS`; a kind left out stays fp32) to ``int8``, ``fp16``
    or ``fp32``. Int8 kinds get dynamic INT8 on their linear layers and embedding tables; then
    every original node of an fp16 kind is converted to half precision, with casts at the
    boundaries. Quantization nodes stay fp32 (their ops take float32 scales only). Int8-only
    policies also work on a fused graph; policies with fp16 need the unfused export.
    """
    import onnx

    for kind, precision in policy.items():
        choice("mixed precision", "policy kind", kind, MODULE_KINDS)
        choice("mixed precision", f"precision of {kind}", precision, PRECISIONS)
    graph = onnx.load(str(source), load_external_data=False).graph
    if "fp16" in policy.values() and any(node.domain == "com.microsoft" for node in graph.node):
        raise AlambicError(
            "mixed precision with fp16 kinds needs the unfused export, not a graph fused by "
            "optimize_onnx: fused nodes (SkipLayerNormalization, BiasGelu) lose their module "
            "names, and ONNX shape inference cannot type ORT's fused ops"
        )
    kinds = {node.name: module_kind(node.name, node.op_type) for node in graph.node}
    int8 = [name for name, kind in kinds.items() if policy.get(kind) == "int8"]
    fp16 = {name for name, kind in kinds.items() if policy.get(kind) == "fp16"}
    out = Path(out)
    if int8:
        step = out.with_name(out.stem + ".int8-step.onnx") if fp16 else out
        int8_dynamic(source, step, per_channel=per_channel, reduce_range=reduce_range, nodes_to_quantize=int8)
    else:
        step = Path(source)
    if fp16:
        to_fp16(step, out, nodes=fp16)
        if step != Path(source):
            step.unlink()
    elif not int8:
        onnx.save(onnx.load(str(source)), str(out))
    return out


_SCOPE = re.compile(r"/(embeddings|attention)/")


def module_kind(name: str, op_type: str = "") -> str:
    """Which kind of module an ONNX node of an exported encoder belongs to (:data:`MODULE_KINDS`).

    Read from the node's name, the module path the exporter gave it
    (``/bert/encoder/layer.0/attention/self/query/MatMul``) or, for ORT's fused nodes, its op:
    ``attention`` = self-attention and its output projection (MobileBERT's attention bottleneck
    too); ``ffn`` = the rest of each encoder layer (FFNs, MobileBERT's bottlenecks); ``embeddings``;
    ``other`` = pooler, classifier, mask arithmetic.
    """
    if op_type in ("Attention", "MultiHeadAttention"):
        return "attention"
    if op_type == "EmbedLayerNormalization":
        return "embeddings"
    scope = _SCOPE.search(name)
    if scope:
        return scope.group(1)
    if "/encoder/" in name:
        return "ffn"
    return "other"


def op_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many nodes of each op type a graph holds."""
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantization tools talk: advice on the root logger at every call ("Please
    consider to run pre-processing before quantization": symbolic shape inference, which matters for
    graphs of unknown shapes, not for an exported BERT whose weights are constant initializers),
    and the calibrators' progress on stdout. The advice is dropped, the progress logged at DEBUG."""

    def drop(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")

    root = logging.getLogger()
    root.addFilter(drop)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(drop)
        if printed.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", printed.getvalue().strip())
