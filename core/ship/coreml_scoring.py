"""The Core ML weights, read back out of the saved program and scored, as the app will hold them.

Core ML cannot predict on Linux, but its weights can be read: :func:`read_back` takes every
weight of the saved ``.mlpackage`` (coremltools' reader of the MIL program and its weight file),
int8 ones dequantized as their ``constexpr`` ops define it. :func:`load_read_back` puts them into
the module that was converted (the export wrapper or the Neural Engine layout), by the names the
converter gave them; :func:`scored_check`
scores that module at fp16 compute on the test split against the source model, and fails when
the Core ML weights lose more than the guard's budget. What stays unmeasured is the Core ML
runtime itself (its kernels): that needs a Mac (``examples/ios/check_coreml.py``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from alambic.ship.coreml_checks import wrapper_logits
from alambic.ship.coreml_compression import KINDS, SPARSE, WEIGHT_THRESHOLD, WeightPlan, weight_kind
from alambic.ship.coreml_export import quiet, wrapper
from alambic.ship.exporter import WEIGHTS_SCORED, Check

if TYPE_CHECKING:
    import numpy as np
    import torch

#: what the converter and the compression passes append to a weight's parameter path
_SUFFIXES = re.compile(r"(_to_fp16)?(_quantized|_palettized|_sparsified)*$")


@dataclass(frozen=True)
class ReadBack:
    """A saved program's weights: float32 by the module's flattened parameter path, and the form
    (:data:`alambic.ship.coreml_compression.FORMS`) of each one the program holds compressed."""

    weights: dict[str, np.ndarray]
    forms: dict[str, str]

    @property
    def int8(self) -> frozenset[str]:
        return frozenset(name for name, form in self.forms.items() if form == "int8")

    def held_bytes(self) -> int:
        """Bytes the weights take as the program holds them: 2 per fp16 element, 1 per int8, half
        per int4, N/8 per lutN index; a sparse form a mask bit per element and an index per kept one
        (tables, scales and the spec come on top)."""
        bits = 0.0
        for name, value in self.weights.items():
            form = self.forms.get(name, "fp16")
            width = {"fp16": 16, "int8": 8, "int4": 4}.get(form.removeprefix(SPARSE)) \
                or int(form.rsplit("lut", 1)[1])
            kept = float((value != 0).mean()) if form.startswith(SPARSE) else 1.0
            bits += value.size * ((1 + kept * width) if form.startswith(SPARSE) else width)
        return int(bits / 8)

    def precisions(self) -> dict[str, dict[str, int]]:
        """Per kind, how many weight tensors (of more than WEIGHT_THRESHOLD elements) are in each form."""
        found: dict[str, dict[str, int]] = {kind: {} for kind in (*KINDS, "other")}
        for name, value in self.weights.items():
            if value.size > WEIGHT_THRESHOLD:
                form = self.forms.get(name, "fp16")
                found[weight_kind(name)][form] = found[weight_kind(name)].get(form, 0) + 1
        return found


def read_back(path: str | os.PathLike[str]) -> ReadBack:
    """Every weight tensor of the saved ML Program as float32, compressed ones decompressed by
    coremltools' own reading of the ``constexpr`` ops (what Core ML computes from them at load),
    keyed by the converter's name without its suffixes (the module's parameter path with ``_``
    for ``.``)."""
    import numpy as np
    from coremltools.converters.mil.frontend.milproto.load import load

    with quiet() as ct:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        program = load(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
        weights, forms = {}, {}
        for op in program.functions["main"].operations:
            if op.op_type.startswith("constexpr_"):
                value = op.materialized_val_inference()
            elif op.op_type == "const" and not _feeds_constexpr_only(op):  # a look-up table, a mask: not a weight
                value = op.val.val
            else:
                continue
            if isinstance(value, tuple):  # a step of a chain (lut_to_sparse -> sparse_to_dense): its end is read
                continue
            value, name = np.asarray(value), _SUFFIXES.sub("", op.outputs[0].name)
            if value.ndim and np.issubdtype(value.dtype, np.floating):
                weights[name] = value.astype(np.float32)
                if op.op_type.startswith("constexpr_"):
                    forms[name] = stored_form(op)
    return ReadBack(weights, forms)


def _feeds_constexpr_only(op: Any) -> bool:
    children = op.outputs[0].child_ops
    return bool(children) and all(child.op_type.startswith("constexpr_") for child in children)


def stored_form(op: Any) -> str:
    """The form a ``constexpr`` op stores its weight in: int8, int4, lutN, sparse+lutN."""
    from coremltools.converters.mil.mil import types

    def dtype(name: str) -> str:
        return types.builtin_to_string(op.inputs[name].dtype)

    if op.op_type == "constexpr_affine_dequantize":
        return "int8"
    if op.op_type == "constexpr_blockwise_shift_scale":
        return dtype("data").removeprefix("u")  # int8 / int4 (uint with an offset)
    if op.op_type == "constexpr_lut_to_dense":
        return f"lut{dtype('indices').removeprefix('uint')}"
    if op.op_type == "constexpr_sparse_to_dense":
        feeder = op.inputs["nonzero_data"].op
        return SPARSE + (f"lut{types.builtin_to_string(feeder.inputs['indices_nonzero_data'].dtype).removeprefix('uint')}"
                         if feeder is not None and feeder.op_type == "constexpr_lut_to_sparse" else "fp16")
    return op.op_type


def precision_check(read: ReadBack, plan: WeightPlan) -> Check:
    """The saved program's weights read back: each kind in the form the plan (the candidate's
    compression in Core ML's terms) says, and what Core ML could not express."""
    found = read.precisions()
    wrong = [kind for kind in KINDS if set(found[kind]) - {plan.precision[kind]}
             or plan.precision[kind] != "fp16" and not found[kind].get(plan.precision[kind])]
    shown = ", ".join(f"{kind} " + (" / ".join(f"{n} {form}" for form, n in sorted(found[kind].items())) or "none")
                      for kind in KINDS)
    differs = "; differs from the candidate: " + "; ".join(plan.differences) if plan.differences else ""
    return Check("Core ML weights as the candidate's compression (read back)", not wrong,
                 f"{plan.describe()}: {shown}{differs}" + (f"; not as planned: {', '.join(wrong)}" if wrong else ""),
                 {"plan": plan.precision, "granularity": plan.granularity, "found": found,
                  "differences": plan.differences})


#: a package may exceed its weights' bytes by this share (scales, look-up tables) plus a fixed
#: allowance (the spec, the manifest): more means a weight is held larger than planned
SIZE_SLACK, SIZE_ALLOWANCE = 0.15, 64_000


def size_check(path: str | os.PathLike[str], size: int, read: ReadBack) -> Check:
    """The package's bytes against its weights as the program holds them (:meth:`ReadBack.held_bytes`):
    what a plan should weigh, whatever its forms; replaces a fixed ~1/4-of-fp32 ratio, which a small
    model's fp16 pooler and head miss."""
    held = read.held_bytes()
    bound = held * (1 + SIZE_SLACK) + SIZE_ALLOWANCE
    return Check(f"{os.path.basename(path)} size vs its weights as held", size <= bound,
                 f"{size / 1e6:.2f} MB for {held / 1e6:.2f} MB of weights as held (<= +{SIZE_SLACK:.0%} "
                 f"+ {SIZE_ALLOWANCE / 1e3:.0f} KB)", {"bytes": size, "weights_bytes": held, "bound": int(bound)})


def load_read_back(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> int:
    """Load ``weights`` into ``module`` by name; the number of tensors replaced. A parameter the
    program does not hold by its own name kept its value: the converter merged it with an equal one."""
    import torch

    state = module.state_dict()
    by_flat = {key.replace(".", "_"): key for key in state}
    loaded = {by_flat[name]: torch.from_numpy(value).reshape(state[by_flat[name]].shape)
              for name, value in weights.items() if name in by_flat}
    module.load_state_dict(state | loaded)
    return len(loaded)


def as_shipped(model: Any, read: ReadBack) -> torch.nn.Module:
    """A copy of the classifier ``model`` holding the Core ML weights read back, computing in fp16
    as Core ML does, through the module that was converted (the export wrapper): called like a
    transformers classifier (``.logits``, float32), so the guard and the measurements score it as
    they score any model."""
    import torch

    module = wrapper(copy.deepcopy(model), "logits")
    load_read_back(module, read.weights)
    module = module.half().eval()

    class ShippedWeights(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shipped = module

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    **_: Any) -> SimpleNamespace:  # token_type_ids: all zero in the converted graph
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            return SimpleNamespace(logits=self.shipped(input_ids.int(), mask.int()).float())

    return ShippedWeights().eval()


def _step(form: str, largest: float) -> float:
    """One rounding step of ``form`` for a weight whose largest magnitude is ``largest``: a linear
    grid of the form's levels (k-means tables are finer where the weights are dense)."""
    bits = {"int8": 8, "int4": 4}.get(form) or (int(form.rsplit("lut", 1)[1]) if "lut" in form else 0)
    return largest / (2 ** (bits - 1) - 1) if bits else largest * 2 ** -10


def match_check(expected: Mapping[str, torch.Tensor], weights: Mapping[str, np.ndarray], plan: WeightPlan) -> Check:
    """The read-back weights against the converted module's own, each within one rounding step of
    the form the plan holds its kind in (fp16: 2^-10 of its largest magnitude; int8: 1/127; lutN and
    int4: a linear grid of as many levels); the values a sparse form pruned to zero are not compared.
    A weight altered in the file, or a plan not applied as said, shows here."""
    import numpy as np

    compared, wrong, worst = 0, [], 0.0
    for key, tensor in expected.items():
        flat = key.replace(".", "_")
        if flat not in weights or not tensor.is_floating_point():
            continue
        want = tensor.detach().float().numpy()
        got = weights[flat].reshape(want.shape)
        form = plan.precision.get(weight_kind(flat), "fp16") if want.size > WEIGHT_THRESHOLD else "fp16"
        kept = got != 0 if form.startswith(SPARSE) else np.ones(want.shape, dtype=bool)
        largest = float(np.abs(want).max()) if want.size else 0.0
        error = float(np.abs(got - want)[kept].max()) / max(_step(form, largest), 1e-6) if kept.any() else 0.0
        compared, worst = compared + 1, max(worst, error)
        if not error <= 1.0:  # NaN too
            wrong.append(key)
    name = "Core ML weights read back = the converted module's, up to their precision"
    return Check(name, compared > 0 and not wrong,
                 f"{compared - len(wrong)} of {compared} tensors within rounding (worst {worst:.2f} of a step)"
                 + (f"; differ: {', '.join(wrong[:4])}" if wrong else ""),
                 {"compared": compared, "differ": wrong, "worst_steps": worst}, covers=WEIGHTS_SCORED)


def scored_check(module: torch.nn.Module, test: Any, reference: np.ndarray, *, budget_points: float,
                 candidate: dict[str, Any] | None = None) -> Check:
    """``module`` (holding the read-back weights) at fp16 compute on the test rows, against the
    source model's logits (``reference``): it fails when accuracy drops more than ``budget_points``."""
    import numpy as np

    rows = test.select(range(min(len(test), len(reference))))
    half = module.half().eval()
    logits = np.concatenate([wrapper_logits(half, rows[lo:lo + 64]) for lo in range(0, len(rows), 64)])
    labels = np.asarray(rows["label"])
    ours, source = float((logits.argmax(-1) == labels).mean()), float((reference.argmax(-1) == labels).mean())
    drop = 100 * (source - ours)
    measured = (f"; the candidate measured {candidate['accuracy']:.4f} on {candidate['examples']:,} test rows"
                if candidate and candidate.get("accuracy") is not None else "")
    return Check("Core ML weights read back and scored (fp16 compute, test split)", drop <= budget_points,
                 f"accuracy {ours:.4f} vs source {source:.4f} on {len(rows):,} rows (drop {drop:+.2f} points, "
                 f"budget {budget_points:g}){measured}",
                 {"accuracy": ours, "source_accuracy": source, "drop_points": drop, "budget_points": budget_points,
                  "examples": len(rows), "agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean())},
                 covers=WEIGHTS_SCORED)
