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

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alambic.ship.coreml_checks import wrapper_logits
from alambic.ship.coreml_compression import KINDS, WEIGHT_THRESHOLD, WeightPlan, weight_kind
from alambic.ship.coreml_export import quiet
from alambic.ship.exporter import WEIGHTS_SCORED, Check

if TYPE_CHECKING:
    import numpy as np
    import torch

#: what the converter appends to a weight's parameter path (fp16 cast, then int8 quantization)
_SUFFIXES = re.compile(r"(_to_fp16)?(_quantized)?$")


@dataclass(frozen=True)
class ReadBack:
    """A saved program's weights: float32 by the module's flattened parameter path, and which of
    them the program holds as int8."""

    weights: dict[str, np.ndarray]
    int8: frozenset[str]

    def precisions(self) -> dict[str, dict[str, int]]:
        """Per kind, how many weight tensors (of more than WEIGHT_THRESHOLD elements) are int8 and fp16."""
        found = {kind: {"int8": 0, "fp16": 0} for kind in (*KINDS, "other")}
        for name, value in self.weights.items():
            if value.size > WEIGHT_THRESHOLD:
                found[weight_kind(name)]["int8" if name in self.int8 else "fp16"] += 1
        return found


def read_back(path: str | os.PathLike[str]) -> ReadBack:
    """Every weight tensor of the saved ML Program as float32, int8 ones dequantized by coremltools'
    own reading of the ``constexpr`` ops, keyed by the converter's name without its suffixes (the
    module's parameter path with ``_`` for ``.``)."""
    import numpy as np
    from coremltools.converters.mil.frontend.milproto.load import load

    with quiet() as ct:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        program = load(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
        weights, int8 = {}, set()
        for op in program.functions["main"].operations:
            if op.op_type.startswith("constexpr_"):
                value = op.materialized_val_inference()  # what Core ML computes from it at load
            elif op.op_type == "const":
                value = op.val.val
            else:
                continue
            value, name = np.asarray(value), _SUFFIXES.sub("", op.outputs[0].name)
            if value.ndim and np.issubdtype(value.dtype, np.floating):
                weights[name] = value.astype(np.float32)
                if op.op_type.startswith("constexpr_"):
                    int8.add(name)
    return ReadBack(weights, frozenset(int8))


def precision_check(read: ReadBack, plan: WeightPlan) -> Check:
    """The saved program's weights read back: each kind int8 or fp16 as the plan (the candidate's
    compression in Core ML's terms) says, and what Core ML could not express."""
    found = read.precisions()
    wrong = [kind for kind in KINDS if found[kind]["int8" if plan.precision[kind] == "fp16" else "fp16"]
             or plan.precision[kind] == "int8" and not found[kind]["int8"]]
    shown = ", ".join(f"{kind} {found[kind]['int8']} int8 / {found[kind]['fp16']} fp16" for kind in KINDS)
    differs = "; differs from the candidate: " + "; ".join(plan.differences) if plan.differences else ""
    return Check("Core ML weights as the candidate's compression (read back)", not wrong,
                 f"{plan.describe()}: {shown}{differs}" + (f"; not as planned: {', '.join(wrong)}" if wrong else ""),
                 {"plan": plan.precision, "granularity": plan.granularity, "found": found,
                  "differences": plan.differences})


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


def match_check(expected: Mapping[str, torch.Tensor], weights: Mapping[str, np.ndarray], plan: WeightPlan) -> Check:
    """The read-back weights against the converted module's own, each within its precision's
    rounding: one int8 step (its largest magnitude / 127) for a kind the plan holds int8, else fp16's
    (2^-10 of it). A weight altered in the file, or a plan not applied as said, shows here."""
    import numpy as np

    compared, wrong, worst = 0, [], 0.0
    for key, tensor in expected.items():
        flat = key.replace(".", "_")
        if flat not in weights or not tensor.is_floating_point():
            continue
        want = tensor.detach().float().numpy()
        got = weights[flat].reshape(want.shape)
        largest = float(np.abs(want).max()) if want.size else 0.0
        step = max(largest / 127 if plan.precision.get(weight_kind(flat)) == "int8" else largest * 2 ** -10, 1e-6)
        error = float(np.abs(got - want).max()) / step if want.size else 0.0
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
