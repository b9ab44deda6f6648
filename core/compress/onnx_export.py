"""ONNX: export a classifier, fuse it for ONNX Runtime, run it, and check it against PyTorch.

::

    path = export_onnx(model, "model.onnx")              # opset 17, checked, dynamic batch/sequence
    heads, width = attention_dims(model.config)
    fused = optimize_onnx(path, "model.opt.onnx", heads, width)  # Attention, BiasGelu, EmbedLayerNorm
    fused_operators(fused)                               # {"Attention": 4, "BiasGelu": 4, ...}
    session = ort_session(fused, threads=1)
    ort_logits(session, batch)                           # (B, labels) numpy
    compare_logits(model, fused, test_split, 2000)       # max_abs_diff, argmax_agreement, examples

The graph has inputs ``input_ids``, ``attention_mask`` and (``use_token_type_ids``)
``token_type_ids``, int64 of shape (batch, sequence) with both axes dynamic, and one output
``logits`` (batch, labels). It is traced by PyTorch's TorchScript exporter (``dynamo=False``): the
torch.export-based one needs onnxscript, which alambic does not install.

BERT's default SDPA attention traces into MatMul/Softmax that ONNX Runtime's attention fusion
recognises as it does the eager one (checked on transformers 4.57), so models are exported as built.
MobileBERT (bottleneck attention, no LayerNorm, ReLU) exports and runs, but nothing in it fuses.

onnx and onnxruntime are imported inside the functions, so plugin discovery stays light.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.data.tokenize import MODEL_INPUTS
from alambic.errors import AlambicError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime
    import torch

log = logging.getLogger(__name__)

OUTPUT = "logits"
#: the operators ONNX Runtime's transformer optimizer fuses into (what a fused graph should hold)
#: (LayerNormalization is not one: opset 17 exports it as a single standard op already)
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu", "FastGelu",
             "BiasGelu")
#: ONNX Runtime fusions alambic leaves out, offline (optimize_onnx) and when a session loads a graph:
#: ORT's CPU SkipLayerNormalization kernel is slower than the LayerNormalization + Add it replaces
#: (42 vs 18 us on a 32 x 512 input at 2 threads; without it a fused int8 student is ~15% faster:
#: benchmarks/inference.py, BENCHMARKS.md "Inference")
SLOW_FUSIONS = ("SkipLayerNormFusion",)
# what the legacy exporter says each time it runs; the choice is deliberate (see module doc)
_LEGACY_EXPORTER_WARNINGS = ("You are using the legacy TorchScript-based ONNX export",
                             "The feature will be removed")
# notes, not problems: a Slice with step != 1 is left unfolded (MobileBERT's trigram input)
_EXPORTER_NOTES = ("Constant folding - Only steps=1",)


# --- export ---------------------------------------------------------------------------------


def export_onnx(model: torch.nn.Module, path: str | os.PathLike[str], opset: int = 17,
                use_token_type_ids: bool = True) -> Path:
    """Export a sequence classifier to ONNX at ``path`` and check the graph; returns the path.

    :param opset: ONNX opset, >= 17 (LayerNormalization is a single op from 17 on).
    :param use_token_type_ids: give the graph a ``token_type_ids`` input; without it the model
        uses its all-zero default (single-sentence classification).
    """
    import onnx
    import torch

    if opset < 17:
        raise AlambicError(f"ONNX export needs opset >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = MODEL_INPUTS if use_token_type_ids else MODEL_INPUTS[:2]
    example = _example_inputs(model)
    training = model.training
    model.eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {OUTPUT: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # positional: (input_ids, attention_mask, token_type_ids) is the order of every
        # transformers classifier's forward; its ModelOutput flattens to the logits alone
        torch.onnx.export(model, tuple(example[n] for n in names), str(path), dynamo=False,
                          input_names=list(names), output_names=[OUTPUT], dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True)
    model.train(training)
    _sort_export_warnings(caught)
    onnx.checker.check_model(str(path), full_check=True)
    outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    if outputs != [OUTPUT]:
        raise AlambicError(f"the exported graph has outputs {outputs}, expected only '{OUTPUT}': "
                           f"turn off output_hidden_states / output_attentions in the model's config")
    return path


def _sort_export_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Drop the legacy exporter's notice of itself, log tracer warnings and notes, pass on the rest.

    Tracer warnings flag Python values frozen into the trace; transformers code raises some that
    are harmless (MobileBERT's unused ``torch.tensor(1000)``). The exported graph is checked at
    two batch sizes and two lengths by the tests, which is what would catch a harmful one.
    """
    import torch

    for w in caught:
        text = str(w.message)
        if issubclass(w.category, DeprecationWarning) and text.startswith(_LEGACY_EXPORTER_WARNINGS):
            continue
        if issubclass(w.category, torch.jit.TracerWarning) or text.startswith(_EXPORTER_NOTES):
            log.debug("ONNX export: %s (%s:%s)", text.splitlines()[0], w.filename, w.lineno)
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _example_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A (2, 8) batch whose second row is padded: tracing sees the mask in use."""
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(1, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


# --- fusion ---------------------------------------------------------------------------------


def attention_dims(config: Any) -> tuple[int, int]:
    """(heads, width attention runs at) of a transformers config: MobileBERT's is its bottleneck."""
    heads = config.num_attention_heads
    if getattr(config, "use_bottleneck_attention", False) or getattr(config, "key_query_shared_bottleneck", False):
        return heads, config.true_hidden_size
    return heads, config.hidden_size


def optimize_onnx(path: str | os.PathLike[str], out: str | os.PathLike[str], num_heads: int,
                  hidden_size: int, opt_level: int = 1, skip_layer_norm: bool = False) -> Path:
    """Fuse a BERT-style graph with ONNX Runtime's transformer optimizer (model_type "bert").

    Attention, GELU and embeddings (+ their LayerNorm) are fused into ORT contrib operators when
    their patterns are recognised; :func:`fused_operators` says which were. Residual + LayerNorm
    become SkipLayerNormalization only with ``skip_layer_norm`` (slower: :data:`SLOW_FUSIONS`).
    A graph the optimizer cannot handle (e.g. an unusual MobileBERT block) is copied to ``out``
    unchanged, with a warning in the log: fusion is a speed-up, never a requirement.

    :param num_heads: attention heads; with ``hidden_size``, 0 lets the optimizer infer them.
    :param opt_level: ONNX Runtime graph optimizations applied on top (0 = fusions only;
        1 = basic, portable; 2 and 99 add CPU/GPU-specific nodes).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    path, out = Path(path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fusions = FusionOptions("bert")
    fusions.enable_skip_layer_norm = skip_layer_norm
    try:
        with _quiet_optimizer():
            model = optimizer.optimize_model(str(path), model_type="bert", num_heads=num_heads,
                                             hidden_size=hidden_size, opt_level=opt_level,
                                             optimization_options=fusions)
            stats = model.get_fused_operator_statistics()
            model.save_model_to_file(str(out))
    except Exception as exc:  # noqa: BLE001 - the optimizer raises anything on graphs it does not expect
        log.warning("ONNX Runtime's optimizer failed on %s (%s: %s); keeping the unfused graph",
                    path, type(exc).__name__, exc)
        shutil.copyfile(path, out)
        return out
    log.info("fused %s: %s", path.name, {k: v for k, v in stats.items() if v})
    return out


def fused_operators(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many of each fused operator (:data:`FUSED_OPS`) a graph holds; absent ones are omitted."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """The optimizer logs each pattern it tries ("fused Attention: 0", "shape inference failed")
    on loggers named after its modules, which it imports as top-level ``fusion_*``/``onnx_model*``."""
    prefixes = ("onnxruntime.transformers", "fusion", "onnx_model")
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    saved = [(logger, logger.level) for logger in map(logging.getLogger, [*prefixes, *names])]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


# --- running --------------------------------------------------------------------------------


def ort_session(path: str | os.PathLike[str], threads: int | None = None,
                disabled_optimizers: tuple[str, ...] = SLOW_FUSIONS) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` intra-op threads (None = ORT's default).

    Every graph optimization of ORT runs at load except ``disabled_optimizers`` (by default the
    fusions measured slower, :data:`SLOW_FUSIONS`; ``()`` = ORT's own defaults).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers after folding
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def ort_logits(session: onnxruntime.InferenceSession, batch: Mapping[str, Any]) -> np.ndarray:
    """(B, labels) float32 logits of a padded batch (torch tensors, arrays or lists).

    Feeds exactly the inputs the graph declares; a missing ``token_type_ids`` is all zeros.
    """
    import numpy as np

    feeds = {}
    for name in (i.name for i in session.get_inputs()):
        if name in batch:
            value = batch[name]
            value = value.numpy() if hasattr(value, "numpy") else value
            feeds[name] = np.asarray(value, dtype=np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(feeds.get("input_ids", np.asarray(batch["input_ids"], dtype=np.int64)))
        else:
            raise AlambicError(f"the ONNX graph needs input '{name}', which the batch does not have")
    return np.asarray(session.run([OUTPUT], feeds)[0], dtype=np.float32)


def compare_logits(reference: torch.nn.Module | str | os.PathLike[str], onnx_path: str | os.PathLike[str],
                   dataset: Any, max_examples: int = 2000, batch_size: int = 64,
                   threads: int | None = None) -> dict[str, Any]:
    """Logits of an ONNX graph against its reference on the first ``max_examples`` rows
    (:func:`compare_outputs`).

    :param reference: the PyTorch model it was exported from, or another ONNX graph (the fp32
        source of a quantized one).
    :param dataset: a tokenized Dataset (``input_ids``, ``attention_mask``, maybe
        ``token_type_ids``; ``length`` for bucketing, else computed).
    """
    candidate = ort_session(onnx_path, threads)
    if isinstance(reference, (str, os.PathLike)):
        ref_session = ort_session(reference, threads)
        run_reference = functools.partial(ort_logits, ref_session)
    else:
        run_reference = torch_logits(reference)
    return compare_outputs(run_reference, functools.partial(ort_logits, candidate), dataset, max_examples, batch_size)


def torch_logits(model: torch.nn.Module) -> Callable[[dict[str, Any]], np.ndarray]:
    """``batch -> logits`` (float32 numpy) of a PyTorch classifier, in eval mode, on its device."""
    import torch

    model = model.eval()
    device = next(model.parameters()).device

    def run(batch: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
            return model(**inputs).logits.float().cpu().numpy()

    return run


def compare_outputs(run_reference: Callable[[dict[str, Any]], np.ndarray],
                    run_candidate: Callable[[dict[str, Any]], np.ndarray], dataset: Any, max_examples: int = 2000,
                    batch_size: int = 64) -> dict[str, Any]:
    """Two ``batch -> logits`` functions (another runtime's against its source) on the first
    ``max_examples`` rows of a tokenized dataset.

    :returns: ``max_abs_diff`` and ``mean_abs_diff`` of the logits, ``argmax_agreement`` (share
        of rows whose predicted class is the same) and ``examples``; with labels (>= 0) in the
        dataset, ``accuracy`` of the candidate and ``reference_accuracy`` of its reference too.
    """
    import numpy as np

    from alambic.train.loop import iterate

    rows = dataset.select(range(min(len(dataset), max_examples)))
    if "length" not in rows.column_names:
        rows = rows.add_column("length", [len(ids) for ids in rows["input_ids"]])
    labelled = "label" in rows.column_names and len(rows) > 0 and min(rows["label"]) >= 0
    if "label" not in rows.column_names:  # collate wants one; the comparison does not read it
        rows = rows.add_column("label", [0] * len(rows))
    diffs, agree, seen, right, right_reference = [], 0, 0, 0, 0
    for _, batch in iterate(rows, batch_size):
        expected, got = run_reference(batch), run_candidate(batch)
        diffs.append(np.abs(expected - got).reshape(-1))
        agree += int((expected.argmax(-1) == got.argmax(-1)).sum())
        labels = batch["labels"].numpy()
        right += int((got.argmax(-1) == labels).sum())
        right_reference += int((expected.argmax(-1) == labels).sum())
        seen += len(expected)
    if not seen:
        raise AlambicError("comparing logits: the dataset has no rows")
    diff = np.concatenate(diffs)
    found = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "argmax_agreement": agree / seen, "examples": seen}
    return found | ({"accuracy": right / seen, "reference_accuracy": right_reference / seen} if labelled else {})


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of an ONNX file plus its external-data files in the same folder, if any."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    locations = set()
    for tensor in onnx.load(str(path), load_external_data=False).graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return total + sum((path.parent / loc).stat().st_size for loc in locations)
