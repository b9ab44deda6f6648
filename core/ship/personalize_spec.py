"""The updatable Core ML model as ``alambic personalize`` reads it: its update rule, its head, its encoder.

::

    model = read_updatable("export/coreml/UpdatableClassifier.mlmodel")
    model.rule        # UpdateRule(loss='categorical cross-entropy', learning_rate=0.01, batch_size=8, ...)
    model.head        # Head(weight (labels, H) fp32, bias (labels,)): the updatable inner product
    rule = model.rule_with(epochs=1)          # what the app may set in MLModelConfiguration, checked
    save_spec(model.with_head(updated), "UpdatableClassifier.personalized.mlmodel")
    tensors = encoder_tensors(model.spec)     # every weight of the frozen encoder, dequantized

Everything here is read from the ``.mlmodel`` (``NetworkUpdateParameters`` of the head's network:
the loss layer, the SGD optimizer's learning rate, mini-batch size and momentum, epochs, shuffle,
seed; the inner product's weights), never from alambic's export options: the file is what the phone
updates. The spec's semantics are those of ``NeuralNetwork.proto`` (coremltools'
``mlmodel/format``): ``Loss_CCE(input, target) = -log(input[target])`` on the softmax output.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from alambic.errors import AlambicError
from alambic.ship.coreml_export import quiet

CROSS_ENTROPY = "categorical cross-entropy"


@dataclass(frozen=True)
class UpdateRule:
    """What one MLUpdateTask does to the head, as the model's spec says (defaults, or the app's picks)."""

    loss: str  # CROSS_ENTROPY: -log(p[target]) on the softmax output, averaged over the mini-batch
    loss_input: str  # the softmax output the loss reads (label_probs)
    learning_rate: float
    batch_size: int
    momentum: float
    epochs: int
    shuffle: bool  # the rows are shuffled before each epoch
    seed: int | None  # the spec's seed for that shuffle, if it sets one

    def describe(self) -> str:
        momentum = f", momentum {self.momentum:g}" if self.momentum else ""
        return (f"{self.loss} on {self.loss_input}; SGD lr {self.learning_rate:g}, mini-batch {self.batch_size}"
                f"{momentum}; {self.epochs} epoch(s){', shuffled' if self.shuffle else ''}")


@dataclass(frozen=True)
class Head:
    """The updatable inner product: logits = weight @ pooled + bias."""

    weight: np.ndarray  # (labels, H) float32
    bias: np.ndarray  # (labels,) float32


@dataclass
class UpdatableModel:
    path: Path
    spec: Any  # the pipeline classifier spec, as read
    rule: UpdateRule
    head: Head
    head_layer: str  # the updatable inner product's layer name
    labels: list[str]
    max_length: int | None  # userDefined["max_length"]: what the app truncates to

    def rule_with(self, *, learning_rate: float | None = None, batch_size: int | None = None,
                  epochs: int | None = None) -> UpdateRule:
        """The rule with the values an app may pass in ``MLModelConfiguration.parameters``, each
        checked against the range or set the spec allows (Core ML refuses others)."""
        sgd, params = _sgd(self.spec), _head_network(self.spec).updateParams
        picked = {"learning_rate": (learning_rate, sgd.learningRate), "batch_size": (batch_size, sgd.miniBatchSize),
                  "epochs": (epochs, params.epochs)}
        changes = {}
        for key, (value, parameter) in picked.items():
            if value is not None:
                _allowed(self.path, key, value, parameter)
                changes[key] = value
        return replace(self.rule, **changes)

    def with_head(self, head: Head) -> Any:
        """A copy of the spec whose updatable inner product holds ``head`` (fp32); the rest unchanged."""
        spec = copy.deepcopy(self.spec)
        layer = _head_layer(_head_network(spec), self.head_layer)
        del layer.innerProduct.weights.floatValue[:]
        layer.innerProduct.weights.floatValue.extend(np.asarray(head.weight, np.float32).ravel().tolist())
        del layer.innerProduct.bias.floatValue[:]
        layer.innerProduct.bias.floatValue.extend(np.asarray(head.bias, np.float32).ravel().tolist())
        return spec


def read_updatable(path: str | os.PathLike[str]) -> UpdatableModel:
    """The updatable pipeline at ``path``: its head, update rule, labels and maximum length.

    Raises AlambicError when the file is not a pipeline classifier whose last model is an updatable
    inner product + softmax trained by categorical cross-entropy with SGD: the update this command
    reproduces (Core ML also allows MSE and Adam; those are refused, not approximated).
    """
    path = Path(path)
    if not path.is_file():
        raise AlambicError(f"{path}: not found (expected the UpdatableClassifier.mlmodel that "
                           f"`alambic export --format coreml` writes into the bundle's coreml/ folder)")
    with quiet() as ct:
        try:
            spec = ct.utils.load_spec(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise AlambicError(f"{path}: not a Core ML model ({type(exc).__name__}: {exc})") from exc
    if spec.WhichOneof("Type") != "pipelineClassifier" or not spec.isUpdatable:
        raise AlambicError(f"{path}: expected an updatable pipeline classifier (encoder, then head), "
                           f"got {spec.WhichOneof('Type')} (isUpdatable={spec.isUpdatable})")
    network = _head_network(spec, path)
    name, loss_input = _check_head(network, path)
    layer = _head_layer(network, name)
    labels = list(network.stringClassLabels.vector)
    width = layer.innerProduct.inputChannels
    head = Head(_values(layer.innerProduct.weights).reshape(len(labels), width),
                _values(layer.innerProduct.bias).reshape(len(labels)))
    user = spec.description.metadata.userDefined
    max_length = int(user["max_length"]) if str(user.get("max_length", "")).isdigit() else None
    return UpdatableModel(path, spec, _rule(network.updateParams, loss_input, path), head, name, labels, max_length)


def _head_network(spec: Any, path: Path | None = None) -> Any:
    last = spec.pipelineClassifier.pipeline.models[-1] if spec.pipelineClassifier.pipeline.models else None
    if last is None or last.WhichOneof("Type") != "neuralNetworkClassifier" or not last.isUpdatable:
        raise AlambicError(f"{path}: the pipeline's last model must be an updatable neural-network classifier")
    return last.neuralNetworkClassifier


def _head_layer(network: Any, name: str) -> Any:
    return next(layer for layer in network.layers if layer.name == name)


def _check_head(network: Any, path: Path) -> tuple[str, str]:
    """(the updatable inner product's name, the softmax output the loss reads), or AlambicError."""
    updatable = [layer for layer in network.layers if layer.isUpdatable]
    if len(updatable) != 1 or updatable[0].WhichOneof("layer") != "innerProduct":
        found = ", ".join(f"{u.name} ({u.WhichOneof('layer')})" for u in updatable) or "none"
        raise AlambicError(f"{path}: personalize reproduces one updatable inner product, found {found}")
    losses = network.updateParams.lossLayers
    kinds = [loss.WhichOneof("LossLayerType") for loss in losses]
    if kinds != ["categoricalCrossEntropyLossLayer"]:
        raise AlambicError(f"{path}: personalize reproduces a categorical cross-entropy loss, found {kinds or 'none'}")
    loss_input = losses[0].categoricalCrossEntropyLossLayer.input
    softmax = [layer for layer in network.layers if loss_input in layer.output]
    if not softmax or softmax[0].WhichOneof("layer") not in ("softmax", "softmaxND") \
            or list(softmax[0].input) != list(updatable[0].output):
        raise AlambicError(f"{path}: the loss must read softmax({updatable[0].name}); it reads '{loss_input}'")
    return updatable[0].name, loss_input


def _sgd(spec: Any) -> Any:
    return _head_network(spec).updateParams.optimizer.sgdOptimizer


def _rule(params: Any, loss_input: str, path: Path) -> UpdateRule:
    optimizer = params.optimizer.WhichOneof("OptimizerType")
    if optimizer != "sgdOptimizer":
        raise AlambicError(f"{path}: personalize reproduces the SGD optimizer, the model uses {optimizer}")
    sgd = params.optimizer.sgdOptimizer
    if sgd.miniBatchSize.defaultValue < 1 or params.epochs.defaultValue < 1:
        raise AlambicError(f"{path}: mini-batch size {sgd.miniBatchSize.defaultValue} and epochs "
                           f"{params.epochs.defaultValue} must be >= 1")
    seed = int(params.seed.defaultValue) if params.HasField("seed") else None
    return UpdateRule(CROSS_ENTROPY, loss_input, float(sgd.learningRate.defaultValue),
                      int(sgd.miniBatchSize.defaultValue), float(sgd.momentum.defaultValue),
                      int(params.epochs.defaultValue), bool(params.shuffle.defaultValue), seed)


def _allowed(path: Path, key: str, value: float, parameter: Any) -> None:
    """``value`` within the parameter's ``range`` or ``set``, as Core ML checks an app's choice."""
    kind = parameter.WhichOneof("AllowedValues")
    if kind == "range" and not parameter.range.minValue <= value <= parameter.range.maxValue:
        raise AlambicError(f"--{key.replace('_', '-')} {value}: {path.name} allows "
                           f"[{parameter.range.minValue:g}, {parameter.range.maxValue:g}]")
    if kind == "set" and value not in parameter.set.values:
        raise AlambicError(f"--{key.replace('_', '-')} {value}: {path.name} allows one of "
                           f"{', '.join(str(v) for v in parameter.set.values)}")


# --- weights --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """A weight of the frozen encoder as Core ML holds it: float32 values and their rounding."""

    name: str  # layer.field, e.g. linear_0.weights, embeddings.position_ids.data
    values: np.ndarray  # flat, float32, in the spec's layout
    step: float  # the largest rounding error its storage allows (fp32 ~0, fp16, int8 scale / 2)
    storage: str  # fp32, fp16, int8 (linear) or lut8


def _values(weights: Any) -> np.ndarray:
    """A WeightParams as float32: fp32, fp16 or linear/LUT 8-bit quantized (as Core ML dequantizes)."""
    if len(weights.floatValue):
        return np.asarray(weights.floatValue, np.float32)
    if len(weights.float16Value):
        return np.frombuffer(weights.float16Value, np.float16).astype(np.float32)
    if not weights.rawValue:
        return np.zeros(0, np.float32)
    quant = weights.quantization
    if quant.numberOfBits != 8:
        raise AlambicError(f"{quant.numberOfBits}-bit Core ML weights are not read (8-bit and fp16/fp32 are)")
    codes = np.frombuffer(weights.rawValue, np.uint8)
    if quant.WhichOneof("QuantizationType") == "lookupTableQuantization":
        return np.asarray(quant.lookupTableQuantization.floatValue, np.float32)[codes]
    scale = np.asarray(quant.linearQuantization.scale, np.float32)  # one per output channel, or one
    bias = np.asarray(quant.linearQuantization.bias, np.float32)
    return (codes.reshape(len(scale), -1) * scale[:, None] + bias[:, None]).ravel()  # channels lead


def _step(weights: Any, values: np.ndarray) -> tuple[float, str]:
    """The largest rounding error of the storage (relative to the original values) and its name."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    if len(weights.floatValue):
        return largest * 1e-7, "fp32"
    if len(weights.float16Value):
        return largest * 2 ** -11 + 2 ** -24, "fp16"  # half an fp16 ulp, and the smallest subnormal
    quant = weights.quantization
    if quant.WhichOneof("QuantizationType") == "lookupTableQuantization":
        table = np.sort(np.asarray(quant.lookupTableQuantization.floatValue, np.float32))
        return (float(np.diff(table).max() / 2) if len(table) > 1 else 0.0), "lut8"
    # coremltools' linear quantizer rounds to the nearest step, but sets a channel whose step is
    # at most 1e-6 wholly to its minimum: an error up to its whole range (255 steps)
    scale = np.abs(np.asarray(quant.linearQuantization.scale, np.float64))
    return float(np.where(scale > 1e-6, scale / 2, scale * 255).max()) * 1.001 + 1e-7, "int8"


def encoder_tensors(spec: Any) -> list[Tensor]:
    """Every weight of the pipeline's frozen (non-updatable) neural networks, dequantized."""
    tensors = []
    for model in spec.pipelineClassifier.pipeline.models[:-1]:
        kind = model.WhichOneof("Type")
        if kind not in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
            continue
        for layer in getattr(model, kind).layers:
            params = getattr(layer, layer.WhichOneof("layer"))
            for field, value in params.ListFields():
                if field.message_type is not None and field.message_type.name == "WeightParams":
                    values = _values(value)
                    if values.size:
                        tensors.append(Tensor(f"{layer.name}.{field.name}", values, *_step(value, values)))
    return tensors


__all__ = ["CROSS_ENTROPY", "Head", "Tensor", "UpdatableModel", "UpdateRule", "encoder_tensors", "read_updatable"]
