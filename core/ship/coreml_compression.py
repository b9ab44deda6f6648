"""The candidate's compression in Core ML's terms: the form in which the ML Program holds each weight.

A candidate was quantized for its runtime (ONNX Runtime int8, fp16, ``mixed`` per module kind), or
compressed in Core ML's own forms by a Core ML quantizer (``palettize``, ``int4-block``).
:func:`plan_for` maps its quantization record to a :class:`WeightPlan`: per kind, the form Core ML
holds its weights in, with fp16 compute throughout, and in words what Core ML cannot express.
:func:`compress_weights` applies the plan op by op (``coremltools.optimize.coreml``), by the names
the converter gives the weights (``encoder_layer_0_attention_self_query_weight_to_fp16``);
:mod:`alambic.ship.coreml_scoring` reads the saved program back to check it.

Forms: ``fp16``; ``int8`` (linear, per channel or per tensor, iOS 16); ``int4`` (linear, one scale
per block of ``block_size`` input channels, iOS 18); ``lut4`` / ``lut6`` / ``lut8`` (palettized:
k-means look-up tables of 2^n fp16 values, one table per group of ``group_size`` output channels,
iOS 18); ``sparse+lut4`` etc. (joint: the smallest weights pruned to ``sparsity``, the rest
palettized, stored as a bit mask and the look-up indices of the kept values, iOS 18).

Kinds (as the ``mixed`` quantizer names them): ``attention`` (self-attention and its output
projection), ``ffn`` (the rest of each encoder layer), ``embeddings`` (the lookup tables); the
pooler, the classifier, biases and norms stay fp16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alambic.errors import AlambicError

KINDS = ("attention", "ffn", "embeddings")
#: weights with fewer elements stay fp16 whatever the plan (biases, norms, small tables)
WEIGHT_THRESHOLD = 2048
LUT_BITS = (4, 6, 8)
#: every form a plan may ask for; "sparse+lutN" too
FORMS = ("fp16", "int8", "int4", *(f"lut{n}" for n in LUT_BITS))
SPARSE = "sparse+"
#: forms only iOS 18's ML Program holds (grouped look-up tables, int4 blocks, sparse masks)
IOS18_ONLY = ("int4", "lut", SPARSE)


@dataclass(frozen=True)
class WeightPlan:
    """Per kind, the form its weights are held in; how scales and tables are shared; what differs
    from the candidate."""

    precision: dict[str, str]
    granularity: str = "per_channel"  # int8: or "per_tensor"; a weight with an all-zero row is per tensor
    differences: list[str] = field(default_factory=list)
    group_size: int = 16  # lutN: output channels sharing one table (fewer where they do not divide a weight's)
    block_size: int = 32  # int4: input channels sharing one scale
    sparsity: float = 0.0  # sparse+lutN: the share of each weight's smallest values pruned to 0

    def __post_init__(self) -> None:
        for kind, form in self.precision.items():
            if form.removeprefix(SPARSE) not in FORMS or (form.startswith(SPARSE) and not form[7:].startswith("lut")):
                raise AlambicError(f"Core ML weight form for {kind} must be one of {', '.join(FORMS)} or "
                                   f"{SPARSE}lutN, got {form!r}")

    @classmethod
    def every(cls, precision: str, why: str = "", **shared: Any) -> WeightPlan:
        """Every kind ``precision`` (int8 with one scale per tensor unless ``granularity`` is given)."""
        return cls(dict.fromkeys(KINDS, precision), shared.pop("granularity", "per_tensor"), [why] if why else [],
                   **shared)

    @property
    def int8(self) -> bool:
        return "int8" in self.precision.values()

    @property
    def compressed(self) -> bool:
        """Whether any kind is held in less than fp16."""
        return set(self.precision.values()) != {"fp16"}

    @property
    def ios18(self) -> bool:
        """Whether the plan holds a form that only iOS 18's ML Program can."""
        return any(form.startswith(IOS18_ONLY) for form in self.precision.values())

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {self.precision[kind]}" for kind in KINDS)
        shared = []
        if self.int8:
            shared.append(f"int8 {self.granularity.replace('_', ' ')} scales")
        if "int4" in self.precision.values():
            shared.append(f"int4 scales per {self.block_size} input channels")
        if any("lut" in form for form in self.precision.values()):
            shared.append(f"a look-up table per {self.group_size} output channels")
        if any(form.startswith(SPARSE) for form in self.precision.values()):
            shared.append(f"{self.sparsity:.0%} of each weight pruned")
        shared_text = f" ({'; '.join(shared)})" if shared else ""
        return f"weights: {kinds}{shared_text}; compute fp16"


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
    if "plan" in quantization:  # a Core ML quantizer recorded the plan it compressed with
        return WeightPlan(**quantization["plan"])
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


# --- applying a plan ------------------------------------------------------------------------


def compress_weights(mlmodel: Any, plan: WeightPlan) -> Any:
    """``mlmodel`` with each weight in the plan's form, op by op; the rest as converted (fp16).

    Three passes of ``coremltools.optimize.coreml``, each on the ops its forms name: linear
    quantization (int8, int4), magnitude pruning (the sparse forms), palettization (lutN; on the
    pruned ops jointly, so the tables index only the kept values).
    """
    import numpy as np
    from coremltools.optimize.coreml import (
        OptimizationConfig,
        get_weights_metadata,
        linear_quantize_weights,
        palettize_weights,
        prune_weights,
    )

    if not plan.compressed:
        return mlmodel
    meta = get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD)
    forms = {name: plan.precision.get(weight_kind(name), "fp16") for name in meta}
    linear = {name: _linear_config(form, meta[name].val, plan) for name, form in forms.items()}
    if any(linear.values()):
        # int4 blocks of an all-zero row (the [PAD] embedding) get a scale of 0 and quantize 0/0; their
        # stored values are then multiplied by that 0: read back as 0 (match_check holds it)
        with np.errstate(divide="ignore", invalid="ignore"):
            mlmodel = linear_quantize_weights(mlmodel, OptimizationConfig(global_config=None, op_name_configs=linear))
    sparse = any(form.startswith(SPARSE) for form in forms.values())
    if sparse:
        mlmodel = prune_weights(mlmodel, _configs(mlmodel, forms, lambda form, value: _prune_config(form, plan)))
    if any("lut" in form for form in forms.values()):
        mlmodel = palettize_weights(mlmodel, _configs(mlmodel, forms, lambda form, value: _lut_config(form, value, plan)),
                                    joint_compression=sparse)
    return mlmodel


def _configs(mlmodel: Any, forms: Mapping[str, str], config: Any) -> Any:
    """An OptimizationConfig of ``config(form, value)`` per weight, matched to its form by its
    converter name (earlier passes append ``_quantized`` or ``_sparsified``). A pruned weight is
    configured by the op that rebuilds it (``constexpr_sparse_to_dense``), as joint compression
    expects, with the dense shape of its mask."""
    from coremltools.optimize.coreml import OptimizationConfig, get_weights_metadata

    chosen = {}
    for name, meta in get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD).items():
        origin = next((n for n in forms if name == n or name.startswith(n + "_")), None)
        rebuilt = next((op.name for op in meta.child_ops if op.op_type == "constexpr_sparse_to_dense"), None)
        if rebuilt is not None and "_nonzero_data" in name:
            continue  # configured by its mask's entry: one config per sparse weight
        chosen[rebuilt or name] = config(forms[origin], meta.val) if origin else None
    return OptimizationConfig(global_config=None, op_name_configs=chosen)


def _linear_config(form: str, value: Any, plan: WeightPlan) -> Any:
    import numpy as np
    from coremltools.optimize.coreml import OpLinearQuantizerConfig

    if form == "int8":
        # per channel, an all-zero row (the [PAD] embedding) would get a scale of 0: 0/0 while quantizing
        zero_row = value.ndim > 1 and not np.abs(value.reshape(value.shape[0], -1)).max(axis=1).all()
        granularity = "per_tensor" if zero_row else plan.granularity
        return OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity=granularity,
                                       weight_threshold=WEIGHT_THRESHOLD)
    if form == "int4":
        # a block must divide the input channels; else one scale per output channel
        blocks = value.ndim > 1 and value.shape[1] % plan.block_size == 0
        return OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
                                       granularity="per_block" if blocks else "per_channel",
                                       block_size=plan.block_size, weight_threshold=WEIGHT_THRESHOLD)
    return None


def _prune_config(form: str, plan: WeightPlan) -> Any:
    from coremltools.optimize.coreml import OpMagnitudePrunerConfig

    if not form.startswith(SPARSE):
        return None
    return OpMagnitudePrunerConfig(target_sparsity=plan.sparsity, weight_threshold=WEIGHT_THRESHOLD)


def _lut_config(form: str, value: Any, plan: WeightPlan) -> Any:
    from coremltools.optimize.coreml import OpPalettizerConfig

    if "lut" not in form:
        return None
    return OpPalettizerConfig(mode="kmeans", nbits=int(form.rsplit("lut", 1)[1]), granularity="per_grouped_channel",
                              group_size=table_group(value.shape[0], plan.group_size),
                              weight_threshold=WEIGHT_THRESHOLD)


def table_group(channels: int, group_size: int) -> int:
    """The output channels per look-up table: ``group_size``, or the largest smaller group that
    divides ``channels`` (coremltools skips a weight whose channels a group does not divide: a
    21,128-row embedding table gets tables of 8 rows where 16 were asked)."""
    return max(g for g in range(1, min(group_size, channels) + 1) if channels % g == 0)
