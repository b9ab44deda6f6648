"""ExecuTorch: lower a classifier to an XNNPACK program (``.pte``), fp32 or int8, and run and time it.

::

    info = export_pte(model, "model.pte", max_length=128)                       # fp32, XNNPACK
    info = export_pte(model, "model.int8.pte", max_length=128, int8=True, calibration=train_split)
    method = load_pte("model.pte", threads=1)        # ExecuTorch's Python runtime, XNNPACK's kernels
    pte_logits(method, batch)                        # (B, labels) numpy, each row run alone at batch 1
    pte_latency_ms(method, vocab_size, 32)           # p50/p90 at batch 1 (latency.timed)
    pte_evaluate(method, test_split)                 # accuracy, macro-F1, per class
    compare_pte(model, "model.pte", test_split)      # max_abs_diff, argmax_agreement, examples

The program's one method ``forward`` takes ``input_ids`` and ``attention_mask``, int64 of shape
(1, T), T from 3 to ``max_length`` (a dynamic dimension), and returns ``logits`` (1, labels): a
phone classifies one text at a time, so the batch is 1 and a batch given here runs row by row,
each row at its own length, its padding dropped. ``token_type_ids`` are all zero (single texts).
T >= 3: MobileBERT's trigram input does not export at T = 2, so a 2-token row ([CLS] [SEP], an
empty text) is given one masked padding token (for BERT students the same logits).

The graph is ``torch.export`` of the export wrapper Core ML converts too (:func:`wrapper`,
:mod:`alambic.compress.export_wrapper`), which calls the model's embeddings and encoder itself with
an additive (1, 1, 1, T) mask made from ``attention_mask`` (transformers' mask helpers are left out
of the graph), then
``to_edge_transform_and_lower`` with the XNNPACK partitioner: the ops XNNPACK takes run in its
kernels (the ones ExecuTorch runs on Android and iOS CPUs), the rest (the embedding look-up, the
mask, LayerNorm) in ExecuTorch's portable kernels. int8 is PT2E quantization with the XNNPACK
quantizer: int8 weights per output channel, int8 activations with ranges calibrated on a few rows,
symmetric (``get_symmetric_quantization_config``); the embedding tables stay fp32.

Threads: XNNPACK runs on ExecuTorch's one process-wide thread pool, one thread per logical CPU by
default. From Python its size is set only by ``_unsafe_reset_threadpool`` (experimental, private to
the pybindings), which replaces the pool; a method's XNNPACK runtime takes the pool when the method
is loaded, so :func:`load_pte` resets it first, and a method loaded before a reset must not run
after it (load it again). The count read back is what a measurement states. ExecuTorch's Python
runtime has no per-method or per-call thread setting.

executorch and torch are imported inside the functions; ``pip install 'alambic[phone]'`` installs
ExecuTorch (``executorch==1.5.1``, released against torch 2.14; with alambic's torch 2.13 it exports,
lowers and runs what tests/core/compress/test_executorch.py covers).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.compress.export_wrapper import ClassifierWrapper
from alambic.compress.latency import fixed_input, timed
from alambic.compress.onnx_export import compare_outputs, torch_logits
from alambic.errors import AlambicError

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"
MIN_LENGTH = 3  # the shortest input the program takes (MobileBERT's trigram input fixes T = 2 otherwise)
PAD_ID = 0  # the token a shorter row is padded with, masked out
#: rows int8 activation ranges are calibrated on (each at batch 1, at its own length)
CALIBRATION_ROWS = 32
INSTALL = "pip install 'alambic[phone]' (executorch==1.5.1)"
_NOT_OPS = ("getitem", "sym_size")  # graph nodes that are no kernel (a tuple's item, a shape read)
# what importing and lowering say each time, not problems: executorch's own use of APIs that torch
# and Python deprecate (importlib.resources' read_text, torch.jit.script_method, pytree's LeafSpec
# in a deep copy) and its experimental-API notice
_QUIET = (("ignore", r"(read|open)_(text|binary) is deprecated", DeprecationWarning),
          ("ignore", r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
          ("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
          ("ignore", r"This API is experimental", Warning))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """executorch imported and run without the warnings it raises about its own code (:data:`_QUIET`)."""
    with warnings.catch_warnings():
        for action, message, category in _QUIET:
            warnings.filterwarnings(action, message, category)
        yield


def require() -> None:
    """Raise a clear error, with how to install it, when ExecuTorch is not installed."""
    try:
        with quiet():
            import executorch.runtime  # noqa: F401
    except ImportError as error:
        raise AlambicError(f"ExecuTorch is not installed ({error}): {INSTALL}") from None


def is_int8(quantization: Mapping[str, Any] | str | None) -> bool:
    """Whether a candidate's quantization (record.json's ``quantization``, or a quantizer id) is int8
    weights: its quantizer is an int8 one, or an option says int8 (as ``ExportSource.int8``)."""
    if isinstance(quantization, str) or quantization is None:
        return "int8" in str(quantization or "")
    options = quantization.get("options") or {}
    return "int8" in str(quantization.get("quantizer", "")) or "int8" in options.values()


# --- export ---------------------------------------------------------------------------------


def wrapper(model: Any) -> torch.nn.Module:
    """The export wrapper of a BERT or MobileBERT classifier, logits out, in eval mode (the model's own
    modules): :class:`alambic.compress.export_wrapper.ClassifierWrapper`, as Core ML converts it."""
    return ClassifierWrapper(model, "logits")


@dataclass(frozen=True)
class PteInfo:
    """What :func:`export_pte` wrote: the file, its precision and how much of it XNNPACK runs."""

    path: Path
    int8: bool
    max_length: int
    bytes: int
    delegated: int  # ops lowered to XNNPACK
    portable: int  # ops left to ExecuTorch's portable kernels (the embedding look-up, the mask, LayerNorm)
    seconds: float

    def describe(self) -> str:
        share = self.delegated / max(1, self.delegated + self.portable)
        return (f"{'int8' if self.int8 else 'fp32'}, T <= {self.max_length}, {self.bytes / 1e6:.2f} MB; "
                f"XNNPACK runs {self.delegated} of {self.delegated + self.portable} ops ({share:.0%})")


def export_pte(model: torch.nn.Module, path: str | os.PathLike[str], *, int8: bool = False, max_length: int = 128,
               calibration: Any = None, calibration_rows: int = CALIBRATION_ROWS) -> PteInfo:
    """Write ``model`` as an ExecuTorch program lowered to XNNPACK at ``path``.

    :param int8: PT2E int8 (XNNPACK quantizer, per-channel weights, calibrated activations).
    :param max_length: the longest input the program accepts (its dynamic length's upper bound).
    :param calibration: int8 only: tokenized rows (a Dataset or a list of dicts with ``input_ids``),
        of which the first ``calibration_rows`` calibrate activation ranges, each at batch 1.
    """
    import torch

    require()
    if max_length < MIN_LENGTH + 1:
        raise AlambicError(f"the ExecuTorch export needs max_length >= {MIN_LENGTH + 1}, got {max_length}")
    if int8 and calibration is None:
        raise AlambicError("an int8 ExecuTorch export needs calibration rows (a few tokenized train rows)")
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = wrapper(model)
    example = _example(model, min(16, max_length))
    length = torch.export.Dim("sequence", min=MIN_LENGTH, max=max_length)
    shapes = ({1: length}, {1: length})
    with torch.no_grad(), quiet():
        program = torch.export.export(module, example, dynamic_shapes=shapes, strict=False)
        if int8:
            program = torch.export.export(_quantized(program.module(), calibration, calibration_rows, max_length),
                                          example, dynamic_shapes=shapes, strict=False)
        buffer, delegated, portable = _lower(program)
    path.write_bytes(buffer)
    return PteInfo(path, int8, max_length, len(buffer), delegated, portable, round(time.perf_counter() - start, 2))


def _example(model: Any, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(1, max(2, vocab), (1, length), generator=torch.Generator().manual_seed(0))  # (1, T)
    return ids, torch.ones_like(ids)


def _quantized(graph: Any, calibration: Any, rows: int, max_length: int) -> Any:
    """The exported graph, PT2E-quantized for XNNPACK and calibrated on ``rows`` rows at batch 1."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    seen = 0
    for row in _rows(calibration, rows):
        ids = torch.tensor([row["input_ids"][:max_length]], dtype=torch.long)  # (1, T)
        prepared(*_at_least(ids, torch.ones_like(ids)))
        seen += 1
    if not seen:
        raise AlambicError("no calibration rows for the int8 ExecuTorch export")
    return convert_pt2e(prepared)


def seeded_rows(vocab_size: int, rows: int = CALIBRATION_ROWS, max_length: int = 32) -> list[dict[str, list[int]]]:
    """``rows`` rows of seeded token ids below ``vocab_size``, of lengths up to ``max_length``: int8
    calibration for a program that is only timed (latency does not depend on the ranges), never one
    that is scored or shipped (calibrate those on train rows)."""
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(MIN_LENGTH, max(MIN_LENGTH, max_length) + 1, rows)
    return [{"input_ids": rng.integers(1, max(2, vocab_size), int(n)).tolist()} for n in lengths]


def _rows(rows: Any, limit: int) -> Iterator[Mapping[str, Any]]:
    if hasattr(rows, "select"):  # a Dataset: only the rows used are read
        rows = rows.select(range(min(limit, len(rows))))
    for n, row in enumerate(rows):
        if n >= limit:
            return
        yield row


def _lower(program: Any) -> tuple[bytes, int, int]:
    """(the .pte's bytes, ops delegated to XNNPACK, ops left to portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    ops = {name: counts for name, counts in get_delegation_info(edge.exported_program().graph_module)
           .delegation_by_operator.items() if name not in _NOT_OPS}
    delegated = sum(c.delegated for c in ops.values())
    return edge.to_executorch().buffer, delegated, sum(c.non_delegated for c in ops.values())


def _at_least(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, T) row padded to :data:`MIN_LENGTH` with masked padding tokens, if shorter."""
    import torch

    short = MIN_LENGTH - ids.shape[1]
    if short <= 0:
        return ids, mask
    return (torch.cat([ids, torch.full((1, short), PAD_ID, dtype=ids.dtype)], 1),
            torch.cat([mask, torch.zeros((1, short), dtype=mask.dtype)], 1))


# --- runtime --------------------------------------------------------------------------------


def set_threads(threads: int) -> int:
    """Size ExecuTorch's thread pool (XNNPACK's) for the methods loaded after this; the count read back.

    A new size replaces the pool: methods loaded before then hold the old one and must be loaded again.
    """
    from executorch.extension.pybindings import portable_lib

    if threads < 1:
        raise AlambicError(f"threads must be >= 1, got {threads}")
    with quiet():
        if portable_lib._threadpool_get_thread_count() != threads:  # noqa: SLF001 - the only way from Python
            portable_lib._unsafe_reset_threadpool(threads)  # noqa: SLF001
        return int(portable_lib._threadpool_get_thread_count())  # noqa: SLF001


def load_pte(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """The program's ``forward`` in ExecuTorch's Python runtime; ``threads`` sizes the pool first
    (None: as it is, one thread per core by default)."""
    require()
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise AlambicError(f"no ExecuTorch program at {path}")
    if threads is not None:
        set_threads(threads)
    with quiet():
        method = Runtime.get().load_program(path).load_method("forward")
    if method is None:
        raise AlambicError(f"{path}: the program has no method 'forward'")
    return method


def max_length_of(method: Any) -> int:
    """The longest input the program accepts (its input's upper bound)."""
    return int(method.metadata.input_tensor_meta(0).sizes()[1])


def pte_logits(method: Any, batch: Mapping[str, Any]) -> np.ndarray:
    """(B, labels) float32 logits of a batch (tensors or arrays, maybe padded): each row at batch 1,
    its padding (``attention_mask`` 0) dropped, as a phone runs it."""
    import numpy as np
    import torch

    ids = torch.as_tensor(np.asarray(batch["input_ids"]), dtype=torch.long)  # (B, T)
    mask = torch.as_tensor(np.asarray(batch["attention_mask"])).bool() if "attention_mask" in batch \
        else torch.ones_like(ids, dtype=torch.bool)
    longest, out = max_length_of(method), []
    for row, keep in zip(ids, mask, strict=True):
        row = row[keep][None]  # (1, T)
        if not 1 <= row.shape[1] <= longest:
            raise AlambicError(f"a row of {row.shape[1]} tokens: the program takes 1 to {longest} "
                               f"(tokenize with max_length={longest})")
        out.append(method.execute(list(_at_least(row, torch.ones_like(row))))[0].float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def pte_latency_ms(method: Any, vocab_size: int, length: int = 32, runs: int = 50,
                   warmup: int = 10) -> dict[str, float]:
    """p50/p90 milliseconds of one run at batch 1 of the seeded input (:func:`latency.fixed_input`)."""
    batch = fixed_input(vocab_size, length)
    inputs = list(_at_least(batch["input_ids"], batch["attention_mask"]))
    return timed(lambda: method.execute(inputs), runs, warmup)


def pte_evaluate(method: Any, dataset: Any, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report of an ExecuTorch program on a tokenized split."""
    from alambic.train.loop import evaluate_logits

    return evaluate_logits(functools.partial(pte_logits, method), dataset, batch_size)


def compare_pte(model: torch.nn.Module, program: Any, dataset: Any, max_examples: int = 2000,
                batch_size: int = 64) -> dict[str, Any]:
    """An ExecuTorch program's logits against the PyTorch model it came from, on the first
    ``max_examples`` rows (:func:`alambic.compress.onnx_export.compare_outputs`).

    :param program: a .pte path or a method from :func:`load_pte`.
    """
    method = load_pte(program) if isinstance(program, (str, os.PathLike)) else program
    return compare_outputs(torch_logits(model), functools.partial(pte_logits, method), dataset, max_examples,
                           batch_size)


def version() -> str:
    """``executorch <version>`` (what a measurement states as its runtime)."""
    try:
        return f"executorch {installed('executorch')}"
    except PackageNotFoundError:
        return "executorch (not installed)"


__all__ = ["CALIBRATION_ROWS", "INPUTS", "OUTPUT", "PteInfo", "compare_pte", "export_pte", "is_int8", "load_pte",
           "max_length_of", "pte_evaluate", "pte_latency_ms", "pte_logits", "quiet", "require", "seeded_rows",
           "set_threads", "version", "wrapper"]
