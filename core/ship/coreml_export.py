"""Core ML: convert a BERT or MobileBERT classifier, with an on-device-updatable head.

::

    ml = convert_classifier(model, labels, max_length=64, int8=True)     # ML Program, iOS 16+
    ml = convert_classifier(model, labels, 64, layout="ane")             # the Neural Engine layout
    ml.save("Classifier.mlpackage")
    spec = updatable_pipeline(model, labels, max_length=64, learning_rate=0.01, batch_size=8, epochs=10)
    describe(spec, {"author": "me", "license": "MIT", "user": {"labels": labels}})   # or an MLModel
    save_spec(spec, "UpdatableClassifier.mlmodel")

The checks of what this writes are in :mod:`alambic.ship.coreml_checks`.

The stock transformers classifier does not convert (coremltools 9 has no ``new_ones``, which
``get_extended_attention_mask`` uses), so the export wrapper
(:mod:`alambic.compress.export_wrapper`) calls the model's embeddings and
encoder itself with an additive (B, 1, 1, T) mask built from int32 inputs, then its pooler and
classifier. Both products take ``input_ids`` and ``attention_mask`` of shape (1, T), T flexible
from 1 to ``max_length`` (``RangeDim``); ``token_type_ids`` are all zero (single sentences).

* ``Classifier.mlpackage``: the whole classifier as an ML Program (fp16 compute; int8 weights by
  ``coremltools.optimize.coreml.linear_quantize_weights`` when the candidate is int8); outputs
  ``label`` (String) and ``label_probs`` (label -> probability).
* ``UpdatableClassifier.mlmodel``: a pipeline of two neural networks (Core ML can update only the
  neural-network format, never an ML Program): the frozen encoder (pooled vector out; its weights
  fp16, or int8 for an int8 candidate) and the head (inner product + softmax, fp32: updatable
  layers cannot hold fp16 weights), marked updatable with a categorical cross-entropy loss and
  SGD. The neural-network format has no int32 inputs: here ``input_ids`` and ``attention_mask``
  are Float32 arrays. Training inputs: ``input_ids``, ``attention_mask``, ``label``.

Core ML cannot predict on Linux: the products are checked by their specs, and the wrapper
against the original model in PyTorch (the converted graph's source, not the converted program).
``examples/ios/check_coreml.py`` checks predictions on macOS. coremltools and torch are imported
inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.compress.export_wrapper import ClassifierWrapper
from alambic.errors import AlambicError
from alambic.ship.coreml_compression import WeightPlan, compress_weights

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
LABEL, PROBS = "label", "label_probs"  # the classifier's outputs (ClassifierConfig names the second)
POOLED = "pooled"  # the export wrapper's output for the updatable pipeline's encoder
HEAD, LOSS = "head", "loss"
TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18")  # ML Program targets; int8 weights need iOS16+
#: standard: the transformers graph, (B, S, C); ane: Apple's Neural Engine layout, (B, C, 1, S)
#: (alambic.ship.ane_layout), for Classifier.mlpackage
LAYOUTS = ("standard", "ane")


# --- the export wrapper ---------------------------------------------------------------------


def wrapper(model: Any, output: str = "probabilities", layout: str = "standard") -> torch.nn.Module:
    """The export wrapper of a BERT or MobileBERT classifier, in eval mode; with ``layout="ane"``,
    the BERT classifier rewritten in the Neural Engine layout."""
    if layout not in LAYOUTS:
        raise AlambicError(f"Core ML layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "ane":
        from alambic.ship.ane_layout import AneClassifier

        return AneClassifier(model, output).eval()
    return ClassifierWrapper(model, output)


def trace(module: torch.nn.Module, max_length: int) -> torch.jit.ScriptModule:
    """TorchScript of ``module`` on a (1, T) int32 example whose tail is padding."""
    import torch

    length = min(8, max_length)
    ids = torch.arange(1, length + 1, dtype=torch.int32)[None] % 100 + 1
    mask = torch.ones_like(ids)
    mask[0, length // 2 + 1:] = 0
    with torch.no_grad(), warnings.catch_warnings():
        # coremltools 9 converts TorchScript; its torch.export path is still beta
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
        # MobileBERT builds an unused torch.tensor(1000): frozen as a constant, harmlessly
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(module, (ids, mask))


# --- conversion -----------------------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Iterator[Any]:
    """coremltools, imported and run without its noise; yields the module.

    On Linux it logs that its native runtime is missing and that torch 2.13 is untested (both
    known); conversion draws progress bars and prints ("Now adding input ..."). The passes raise
    two warnings that are not problems: numpy overflow while intersecting dtype ranges in the cast
    fusion pass, and an implicit cleanup of the temporary weights folder ct.convert leaves to GC.
    """
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            warnings.filterwarnings("ignore", "Implicitly cleaning up", ResourceWarning)
            import coremltools

            yield coremltools
    finally:
        logger.setLevel(level)
        if printed.getvalue().strip():
            log.debug("coremltools: %s", printed.getvalue().strip()[-2000:])


def _inputs(ct: Any, max_length: int) -> list[Any]:
    import numpy as np

    length = ct.RangeDim(lower_bound=1, upper_bound=max_length, default=min(32, max_length))
    return [ct.TensorType(name, shape=(1, length), dtype=np.int32) for name in INPUTS]


def convert_classifier(model: Any, labels: Sequence[str], max_length: int, *, target: str = "iOS16",
                       int8: bool = False, layout: str = "standard", weights: WeightPlan | None = None) -> Any:
    """The whole classifier as an ML Program (fp16 compute), int8 weights when ``int8``.

    :param target: minimum deployment target (:data:`TARGETS`); int8 weights need iOS16+.
    :param layout: :data:`LAYOUTS`; ``ane`` converts the Neural Engine layout of the same weights.
    :param weights: the candidate's compression in Core ML's terms (per kind int8 or fp16,
        :mod:`alambic.ship.coreml_compression`); ``int8`` alone means every kind int8, per tensor.
    """
    weights = weights or WeightPlan.every("int8" if int8 else "fp16")
    _check_target(target, weights.int8)
    traced = trace(wrapper(model, layout=layout), max_length)
    with quiet() as ct:
        # the probabilities tensor is named: else the converter renames it (with a warning)
        mlmodel = ct.convert(traced, inputs=_inputs(ct, max_length), outputs=[ct.TensorType("probabilities")],
                             convert_to="mlprogram",
                             classifier_config=ct.ClassifierConfig(list(labels), predicted_feature_name=LABEL),
                             minimum_deployment_target=getattr(ct.target, target),
                             compute_precision=ct.precision.FLOAT16)
        return compress_weights(mlmodel, weights)


def _check_target(target: str, int8: bool) -> None:
    if target not in TARGETS:
        raise AlambicError(f"Core ML target must be one of {', '.join(TARGETS)}, got {target!r}")
    if int8 and target == "iOS15":
        raise AlambicError("int8 Core ML weights need target iOS16 or later (constexpr_affine_dequantize)")


def updatable_pipeline(model: Any, labels: Sequence[str], max_length: int, *, learning_rate: float = 0.01,
                       batch_size: int = 8, epochs: int = 10, encoder_bits: int = 16) -> Any:
    """A pipeline spec: frozen encoder (pooled vector) then an updatable softmax head (neural networks).

    :param encoder_bits: weight precision of the frozen encoder, 16 (fp16) or 8 (int8); the
        head stays fp32 whatever this is, as Core ML requires of updatable layers.
    """
    from coremltools.models import datatypes
    from coremltools.models.neural_network import quantization_utils
    from coremltools.models.pipeline import PipelineClassifier

    traced = trace(wrapper(model, POOLED), max_length)
    with quiet() as ct:
        encoder = ct.convert(traced, inputs=_inputs(ct, max_length), outputs=[ct.TensorType(POOLED)],
                             convert_to="neuralnetwork")
        # constants stay as they are: position ids 0..T-1 at 8 bits would round pairs together (0,1 -> 0)
        keep_constants = quantization_utils.AdvancedQuantizedLayerSelector(
            skip_layer_types=["loadConstantND", "loadConstant"], minimum_conv_kernel_channels=0,
            minimum_conv_weight_count=0)
        encoder = quantization_utils.quantize_weights(encoder, nbits=encoder_bits, selector=keep_constants)
        encoder_spec = encoder.get_spec()
        width = model.classifier.in_features  # the pooled vector's width
        del encoder_spec.description.output[0].type.multiArrayType.shape[:]
        encoder_spec.description.output[0].type.multiArrayType.shape.append(width)  # what the head takes
        head = updatable_head(model.classifier, labels, learning_rate=learning_rate, batch_size=batch_size,
                              epochs=epochs)
        pipeline = PipelineClassifier([(name, datatypes.Array(1, max_length)) for name in INPUTS], list(labels),
                                      output_features=[LABEL, PROBS])
        del pipeline.spec.description.input[:]
        pipeline.spec.description.input.extend(encoder_spec.description.input)  # Float32, flexible length
        pipeline.add_model(encoder_spec)
        pipeline.add_model(head)
        pipeline.make_updatable()
        training = pipeline.spec.description.trainingInput
        training.extend(encoder_spec.description.input)
        training.extend(t for t in head.description.trainingInput if t.name == LABEL)
        pipeline.spec.specificationVersion = max(encoder_spec.specificationVersion, head.specificationVersion)
    return pipeline.spec


def updatable_head(classifier: Any, labels: Sequence[str], *, learning_rate: float, batch_size: int,
                   epochs: int) -> Any:
    """The classifier's Linear as an updatable NN classifier: inner product + softmax, fp32."""
    import numpy as np
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder, SgdParams

    weight = classifier.weight.detach().cpu().numpy().astype(np.float32)  # (labels, H)
    bias = classifier.bias.detach().cpu().numpy().astype(np.float32)
    count, width = weight.shape
    builder = NeuralNetworkBuilder([(POOLED, datatypes.Array(width))], [(PROBS, datatypes.Array(count))],
                                   mode="classifier")
    builder.add_inner_product(HEAD, W=weight, b=bias, input_channels=width, output_channels=count,
                              has_bias=True, input_name=POOLED, output_name="head_logits")
    builder.add_softmax("softmax", "head_logits", PROBS)
    builder.set_class_labels(list(labels), predicted_feature_name=LABEL, prediction_blob=PROBS)
    builder.make_updatable([HEAD])
    builder.set_categorical_cross_entropy_loss(LOSS, input=PROBS)  # adds the training input "label"
    sgd = SgdParams(lr=learning_rate, batch=batch_size)
    sgd.set_lr(learning_rate, 0.0, 1.0)
    sgd.set_batch(batch_size, sorted({1, batch_size}))
    builder.set_sgd_optimizer(sgd)
    builder.set_epochs(epochs, sorted({1, epochs}))
    return builder.spec


#: what Xcode shows for each input and output
DESCRIPTIONS = {
    "input_ids": "token ids from the bundled tokenizer (vocab.txt or tokenizer.json), with its start and end "
                 "tokens, (1, T), T <= max_length",
    "attention_mask": "1 for each real token, 0 for padding, (1, T)",
    LABEL: "the predicted label",
    PROBS: "each label's probability",
}


def describe(model: Any, metadata: Mapping[str, Any]) -> None:
    """Author, license, description, version, feature descriptions and user-defined metadata
    (labels, max length, vocabulary file, ...) on an MLModel or a spec."""
    spec = model if hasattr(model, "description") else None
    if spec is None:  # an MLModel: its properties write through to its spec
        model.author, model.license = str(metadata.get("author") or ""), str(metadata.get("license") or "")
        model.short_description = str(metadata.get("description") or "")
        model.version = str(metadata.get("version") or "")
        user = model.user_defined_metadata
        for name in (*INPUTS, LABEL, PROBS):
            where = model.input_description if name in INPUTS else model.output_description
            where[name] = DESCRIPTIONS[name]
    else:
        described = spec.description.metadata
        described.author, described.license = str(metadata.get("author") or ""), str(metadata.get("license") or "")
        described.shortDescription = str(metadata.get("description") or "")
        described.versionString = str(metadata.get("version") or "")
        user = described.userDefined
        for feature in (*spec.description.input, *spec.description.output):
            feature.shortDescription = DESCRIPTIONS.get(feature.name, "")
    for key, value in (metadata.get("user") or {}).items():
        user[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def save_spec(spec: Any, path: str | os.PathLike[str]) -> Path:
    """Write a neural-network spec as a ``.mlmodel`` file (no weights folder: all in the spec)."""
    with quiet() as ct:
        ct.utils.save_spec(spec, str(path))
    return Path(path)


def package_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a ``.mlmodel`` file or of every file in a ``.mlpackage`` folder."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
