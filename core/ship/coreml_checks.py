"""Checks of the Core ML products, each saying what it covered (``Check.covers``).

* **structure**: the saved ``.mlpackage`` / ``.mlmodel`` read back as a spec: its inputs, outputs,
  metadata, program ops, int8 constants, the updatable head's loss and optimizer (no prediction);
* **source graph**: the PyTorch module handed to the converter (the export wrapper, or the
  Neural Engine layout) and its trace, against the source model's logits on the test split;
* **needs a Mac**: prediction by the Core ML runtime and an on-device update, which Linux cannot run
  (:func:`mac_checks` says how to run them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from alambic.ship.coreml_export import HEAD, INPUTS, LABEL, POOLED, PROBS, quiet, trace, wrapper
from alambic.ship.exporter import NEEDS_A_MAC, SOURCE_GRAPH, Check

if TYPE_CHECKING:
    import numpy as np


def load_spec(path: str | os.PathLike[str]) -> Any:
    """The spec of a saved model through ``MLModel(path, skip_model_load=True)``: the file is read
    and parsed as Core ML tools do, nothing is compiled or run (no Core ML runtime on Linux)."""
    with quiet() as ct:
        return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def input_description(feature: Any) -> dict[str, Any]:
    """{name, type, dtype, shape ranges} of a feature description."""
    kind = feature.type.WhichOneof("Type")
    found: dict[str, Any] = {"name": feature.name, "type": kind}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        found["dtype"] = array.DESCRIPTOR.fields_by_name["dataType"].enum_type.values_by_number[array.dataType].name
        ranges = array.shapeRange.sizeRanges
        found["shape"] = [[r.lowerBound, r.upperBound] for r in ranges] if ranges else list(array.shape)
    return found


def io_spec(spec: Any) -> dict[str, Any]:
    return {"inputs": [input_description(f) for f in spec.description.input],
            "outputs": [input_description(f) for f in spec.description.output],
            "training_inputs": [input_description(f) for f in spec.description.trainingInput]}


def _interface_checks(spec: Any, dtype: str, max_length: int) -> list[Check]:
    found = io_spec(spec)
    shape = [[1, 1], [1, max_length]]  # batch 1, length 1..max_length
    want_in = [{"name": n, "type": "multiArrayType", "dtype": dtype, "shape": shape} for n in INPUTS]
    outputs = [(o["name"], o["type"]) for o in found["outputs"]]
    return [Check("inputs input_ids, attention_mask", found["inputs"] == want_in,
                  f"{dtype} (1, 1..{max_length})", {"inputs": found["inputs"]}),
            Check("outputs label, label_probs", outputs == [(LABEL, "stringType"), (PROBS, "dictionaryType")],
                  ", ".join(f"{n}: {t}" for n, t in outputs), {"outputs": found["outputs"]})]


def _metadata_check(spec: Any) -> Check:
    user = spec.description.metadata.userDefined
    found = {k: user[k] for k in ("labels", "max_length", "vocabulary") if k in user}
    return Check("metadata: labels, max length, vocabulary", len(found) == 3,
                 ", ".join(f"{k}={v}" for k, v in found.items())[:120], found)


def check_classifier(path: str | os.PathLike[str], max_length: int, int8: bool,
                     layout: str = "standard", form: str | None = None) -> list[Check]:
    """The ML Program loads as a spec, takes int32 (1, 1..max_length) and outputs label + probs; in
    the ``ane`` layout, the encoder's projections are 1x1 convolutions (only pooler and head linear).

    :param form: the compressed weights' form(s) to expect (``lut4``, ``sparse+lut4``), besides int8.
    """
    spec = load_spec(path)
    ops = _program_ops(spec)
    checks = [Check("Classifier.mlpackage spec loads", spec.WhichOneof("Type") == "mlProgram",
                    f"{spec.WhichOneof('Type')}, spec v{spec.specificationVersion}")]
    checks += _interface_checks(spec, "INT32", max_length) + [_metadata_check(spec)]
    # compressed weights are constexpr ops decompressing at load (int8: iOS16/17 affine, iOS18 blockwise)
    quantized = sum(count for op, count in ops.items() if op.startswith("constexpr_"))
    form = form or ("int8" if int8 else None)
    checks.append(Check(f"{form} weights" if form else "fp16 weights", quantized > 0 if form else None,
                        f"{quantized} {form or 'compressed'} weight ops", {"ops": ops}))
    if layout == "ane":
        conv, linear = ops.get("conv", 0), ops.get("linear", 0)
        checks.append(Check("Neural Engine layout: 1x1 convolutions in the program", conv > 0 and linear <= 2,
                            f"{conv} conv, {linear} linear (pooler and classifier)", {"conv": conv, "linear": linear}))
    return checks


def _program_ops(spec: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def updatable_layers(spec: Any) -> list[str]:
    """Names of the updatable layers in every neural network of a (pipeline) spec."""
    return [layer.name for network in _networks(spec) for layer in network.layers if layer.isUpdatable]


def _networks(spec: Any) -> list[Any]:
    kind = spec.WhichOneof("Type")
    if kind in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        pipeline = spec.pipeline if kind == "pipeline" else getattr(spec, kind).pipeline
        return [n for model in pipeline.models for n in _networks(model)]
    if kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        return [getattr(spec, kind)]
    return []


def check_updatable(path: str | os.PathLike[str], max_length: int) -> list[Check]:
    """One updatable layer (the fp32 head), cross-entropy, SGD, epochs, training inputs, interface."""
    spec = load_spec(path)
    models = spec.pipelineClassifier.pipeline.models
    layers = updatable_layers(spec)
    head = models[-1].neuralNetworkClassifier if models else None
    params = head.updateParams if head is not None else None
    losses = [loss.WhichOneof("LossLayerType") for loss in params.lossLayers] if params else []
    optimizer = params.optimizer.WhichOneof("OptimizerType") if params else None
    sgd = params.optimizer.sgdOptimizer if optimizer == "sgdOptimizer" else None
    weights = next((layer.innerProduct.weights for layer in head.layers if layer.name == HEAD), None) if head else None
    training = [f.name for f in spec.description.trainingInput]
    checks = [
        Check("UpdatableClassifier.mlmodel pipeline updatable", spec.isUpdatable and models[-1].isUpdatable
              and not any(m.isUpdatable for m in models[:-1]), f"{len(models)} models, last updatable"),
        Check("exactly one updatable layer (the head)", layers == [HEAD], ", ".join(layers) or "none"),
        Check("head weights fp32", weights is not None and len(weights.floatValue) > 0 and not weights.float16Value,
              "fp32" if weights is not None and len(weights.floatValue) else "not fp32"),
        Check("loss: categorical cross-entropy", losses == ["categoricalCrossEntropyLossLayer"], ", ".join(losses)),
        Check("optimizer: SGD", sgd is not None,
              f"lr {sgd.learningRate.defaultValue:g}, batch {sgd.miniBatchSize.defaultValue}, "
              f"epochs {params.epochs.defaultValue}" if sgd is not None else "none",
              {"learning_rate": sgd.learningRate.defaultValue, "batch_size": sgd.miniBatchSize.defaultValue,
               "epochs": params.epochs.defaultValue} if sgd is not None else {}),
        Check("training inputs", training == [*INPUTS, LABEL], ", ".join(training)),
    ]
    return checks + _interface_checks(spec, "FLOAT32", max_length) + [_metadata_check(spec)]


def wrapper_parity(model: Any, dataset: Any, reference: np.ndarray, max_traced: int = 200,
                   layout: str = "standard") -> list[Check]:
    """The export wrapper against the model's own logits (``reference``, rows in order) in PyTorch.

    Eagerly on padded batches of every row; then the traced graph of the classifier (what is
    converted, in ``layout``) row by row at batch 1, every other row padded to the longest: as an
    app calls it; and the updatable model's encoder (standard layout) with the head.
    """
    import numpy as np
    import torch

    module = wrapper(model, "logits", layout)
    named = "wrapper" if layout == "standard" else f"{layout} layout"
    rows = dataset.select(range(min(len(dataset), len(reference))))
    eager = np.concatenate([wrapper_logits(module, rows[lo:lo + 64]) for lo in range(0, len(rows), 64)])
    checks = [_parity(f"{named} vs PyTorch model (eager, padded batches)", eager, reference)]
    width = max(len(ids) for ids in rows["input_ids"])
    traced = trace(module, width)
    pooled = trace(wrapper(model, POOLED), width)
    got, heads = [], []
    count = min(len(rows), max_traced)
    with torch.no_grad():
        for i, ids in enumerate(rows.select(range(count))["input_ids"]):
            pad = (width - len(ids)) if i % 2 else 0
            batch = torch.tensor([list(ids) + [0] * pad], dtype=torch.int32)
            mask = torch.tensor([[1] * len(ids) + [0] * pad], dtype=torch.int32)
            got.append(traced(batch, mask).numpy()[0])
            heads.append(model.classifier(pooled(batch, mask)[None]).numpy()[0])
    checks.append(_parity(f"traced classifier{'' if layout == 'standard' else f' ({layout} layout)'} vs PyTorch "
                          f"model (batch 1)", np.array(got), reference[:count]))
    checks.append(_parity("traced encoder + head vs PyTorch model", np.array(heads), reference[:count]))
    return checks


def wrapper_logits(module: Any, rows: Mapping[str, list]) -> np.ndarray:
    import torch

    width = max(len(ids) for ids in rows["input_ids"])
    ids = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows["input_ids"]], dtype=torch.int32)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows["input_ids"]], dtype=torch.int32)
    with torch.no_grad():
        return module.logits(ids, mask).numpy()


def _parity(name: str, got: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> Check:
    import numpy as np

    diff = float(np.abs(got - expected).max())
    agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    return Check(name, diff <= tolerance and agreement == 1.0,
                 f"max |diff| {diff:.2e}, argmax {agreement:.2%} of {len(got)}",
                 {"max_abs_diff": diff, "argmax_agreement": agreement, "examples": len(got), "tolerance": tolerance},
                 covers=SOURCE_GRAPH)


def mac_checks(updatable: bool) -> list[Check]:
    """What only a Mac can check, said as not run here, with how to run it."""
    checks = [Check("prediction by the Core ML runtime vs ONNX Runtime / PyTorch", None,
                    "run examples/ios/check_coreml.py on macOS", covers=NEEDS_A_MAC)]
    if updatable:
        checks.append(Check("one MLUpdateTask on UpdatableClassifier.mlmodel", None,
                            "not run here: `alambic personalize BUNDLE FEEDBACK --out DIR`, then on macOS "
                            "examples/ios/UpdateCheck (swift test) replays its update rows in MLUpdateTask and "
                            "compares with the off-device update", covers=NEEDS_A_MAC))
    return checks
