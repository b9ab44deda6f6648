"""The candidate's compression in Core ML's terms: which weights the ML Program holds as int8.

A candidate was quantized for its runtime (ONNX Runtime int8, fp16, ``mixed`` per module kind).
:func:`plan_for` maps its quantization record to the per-kind weight precision Core ML can hold:
int8 weights (``coremltools.optimize.coreml`` linear quantization, per channel or per tensor as the
candidate had them) or fp16 weights, with fp16 compute throughout, and says in words what Core ML
cannot express. :func:`compress_weights` applies the plan op by op, by the names the converter gives
the weights (``encoder_layer_0_attention_self_query_weight_to_fp16``);
:mod:`alambic.ship.coreml_scoring` reads the saved program back to check it.

Kinds (as the ``mixed`` quantizer names them): ``attention`` (self-attention and its output
projection), ``ffn`` (the rest of each encoder layer), ``embeddings`` (the lookup tables); the
pooler, the classifier, biases and norms stay fp16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("attention", "ffn", "embeddings")
#: weights with fewer elements stay fp16 whatever the plan (biases, norms, small tables)
WEIGHT_THRESHOLD = 2048


@dataclass(frozen=True)
class WeightPlan:
    """Per kind, "int8" or "fp16"; how int8 scales are shared; what differs from the candidate."""

    precision: dict[str, str]
    granularity: str = "per_channel"  # or "per_tensor"; a weight with an all-zero row is per tensor
    differences: list[str] = field(default_factory=list)

    @classmethod
    def every(cls, precision: str, why: str = "") -> WeightPlan:
        """Every kind ``precision``, int8 with one scale per tensor (``coreml.int8=true|false``)."""
        return cls(dict.fromkeys(KINDS, precision), "per_tensor", [why] if why else [])

    @property
    def int8(self) -> bool:
        return "int8" in self.precision.values()

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {self.precision[kind]}" for kind in KINDS)
        scales = f" ({self.granularity.replace('_', ' ')} scales)" if self.int8 else ""
        return f"weights: {kinds}{scales}; compute fp16"


def plan_for(quantization: Mapping[str, Any]) -> WeightPlan:
    """The Core ML weight plan of a candidate's quantization record (``record.json`` ``quantization``)."""
    quantizer = quantization.get("quantizer") or "none"
    options = quantization.get("options") or {}
    granularity = "per_channel" if options.get("per_channel") else "per_tensor"
    if quantizer in ("none", "fp16"):
        differs = [] if quantizer == "fp16" else ["the candidate ran fp32; Core ML computes and stores weights in fp16"]
        return WeightPlan(dict.fromkeys(KINDS, "fp16"), differences=differs)
    if quantizer in ("dynamic-int8", "static-int8"):
        return _int8_plan(quantizer, options, granularity)
    if quantizer == "mixed":
        return _mixed_plan(options, granularity)
    return WeightPlan(dict.fromkeys(KINDS, "fp16"), differences=[
        f"quantizer '{quantizer}' has no Core ML mapping: weights fp16"])


def _int8_plan(quantizer: str, options: Mapping[str, Any], granularity: str) -> WeightPlan:
    pytorch = options.get("runtime") == "pytorch"
    embeddings = options.get("embeddings")
    tables = (not pytorch) if embeddings is None else bool(embeddings)  # as the quantizer decided it
    differs = ["int8 weights with fp16 activations: Core ML dequantizes the weights, where ONNX Runtime "
               "multiplies int8 by int8"]
    if pytorch:
        granularity = "per_channel"  # torchao's int8 Linear weights are per channel
    if quantizer == "static-int8":
        differs.append("the static activation ranges are not carried: Core ML computes activations in fp16")
    precision = {"attention": "int8", "ffn": "int8", "embeddings": "int8" if tables else "fp16"}
    return WeightPlan(precision, granularity, differs)


def _mixed_plan(options: Mapping[str, Any], granularity: str) -> WeightPlan:
    precision, differs = {}, []
    for kind in KINDS:
        wanted = options.get(kind, "fp16")
        precision[kind] = "int8" if wanted == "int8" else "fp16"
        if wanted == "fp32":
            differs.append(f"{kind} ran fp32; Core ML holds it fp16")
    if "int8" in precision.values():
        differs.append("int8 weights with fp16 activations (Core ML dequantizes the weights)")
    return WeightPlan(precision, granularity, differs)


def weight_kind(name: str) -> str:
    """The kind of a weight from its name in the converted program (standard or Neural Engine layout)."""
    if name.startswith("embeddings_") and "embeddings_weight" in name:
        return "embeddings"
    if "attention" in name:
        return "attention"
    if "encoder_layer" in name or "feed_forward" in name:
        return "ffn"
    return "other"


def compress_weights(mlmodel: Any, plan: WeightPlan) -> Any:
    """``mlmodel`` with the plan's int8 weights, op by op; the rest as converted (fp16)."""
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OptimizationConfig,
        get_weights_metadata,
        linear_quantize_weights,
    )

    if not plan.int8:
        return mlmodel
    import numpy as np

    configs = {granularity: OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity=granularity,
                                                    weight_threshold=WEIGHT_THRESHOLD)
               for granularity in ("per_channel", "per_tensor")}
    chosen = {}
    for name, meta in get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD).items():
        if plan.precision.get(weight_kind(name)) != "int8":
            chosen[name] = None
            continue
        # per channel, an all-zero row (the [PAD] embedding) would get a scale of 0: 0/0 while quantizing
        zero_row = meta.val.ndim > 1 and not np.abs(meta.val.reshape(meta.val.shape[0], -1)).max(axis=1).all()
        chosen[name] = configs["per_tensor" if zero_row else plan.granularity]
    return linear_quantize_weights(mlmodel, OptimizationConfig(global_config=None, op_name_configs=chosen))
