"""The ExecuTorch exporter: the candidate as a ``.pte`` program on XNNPACK, for Android and iOS CPUs.

==========  ================================================================  ===========================
id          writes                                                            verified by
==========  ================================================================  ===========================
executorch  ``model.pte``: ExecuTorch program, XNNPACK delegate, input_ids /   ExecuTorch's runtime vs
            attention_mask int64 (1, T <= max_length) -> logits (1, labels);   PyTorch on the test rows:
            int8 (PT2E, per-channel weights) for an int8 candidate, else       argmax agreement, max
            fp32; config.json (labels) + tokenizer beside it                   |diff|; size vs weights
==========  ================================================================  ===========================

The same ``.pte`` runs in ExecuTorch's Android (AAR) and iOS (Swift package) runtimes, with the
XNNPACK backend linked: its kernels are the ones the check runs here, on this machine's CPU. It
adapts :mod:`alambic.compress.executorch`; ``pip install 'alambic[phone]'`` installs ExecuTorch.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import alambic
from alambic.compress import executorch as pte
from alambic.errors import AlambicError
from alambic.ship.exporter import MIN_QUANTIZED_AGREEMENT, RUNTIME, STRUCTURE, Check, Exported, Exporter

if TYPE_CHECKING:
    from alambic.registry import KindRegistry
    from alambic.ship.exporter import ExportSource

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
#: fp32 logits of the program and of PyTorch differ by float rounding only (as ONNX's check)
MAX_FP32_DIFF = 1e-3
#: bytes a program may hold beyond its weights (flatbuffer, delegate headers, the int8 scales)
SIZE_SLACK = 1.15


@dataclass(frozen=True)
class ExecuTorchOptions:
    int8: bool | None = None  # int8 weights and activations; None = when the candidate was quantized to int8
    #: rows int8 activation ranges are calibrated on: the run's train rows (a seeded sample); without a
    #: train split (a bare model folder), test rows held out of the check
    calibration_rows: int = pte.CALIBRATION_ROWS

    def __post_init__(self) -> None:
        if self.calibration_rows < 1:
            raise AlambicError(f"exporter 'executorch': calibration_rows must be >= 1, got {self.calibration_rows!r}")


class ExecuTorch(Exporter):
    """ExecuTorch program (.pte) on the XNNPACK delegate: Android and iOS CPUs; int8 for an int8 candidate."""

    id = "executorch"
    Options = ExecuTorchOptions

    @classmethod
    def export(cls, source: ExportSource, folder: Path, options: ExecuTorchOptions) -> Exported:
        int8 = source.int8 if options.int8 is None else options.int8
        calibration, checked = _split(source, options.calibration_rows) if int8 else (None, source.test)
        info = pte.export_pte(source.model, folder / "model.pte", int8=int8, max_length=source.max_length,
                              calibration=calibration)
        (folder / "config.json").write_text(json.dumps(source.model.config.to_dict(), indent=2), encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (source.model_dir / name).is_file():
                shutil.copy2(source.model_dir / name, folder / name)
        checks = [runtime_check(source, info, checked, calibrated=len(calibration or ())),
                  size_of_weights_check(source.model, info), delegation_check(info)]
        notes = [f"{info.describe()}; lowered in {info.seconds:.0f} s"]
        if int8:
            rows = ("train rows" if source.calibration is not None else "test rows held out of the check (no "
                    "train split given)")
            notes.append(f"int8: PT2E with the XNNPACK quantizer (per-channel weights), calibrated on "
                         f"{len(calibration)} {rows}; the embedding tables stay fp32 (no quantized look-up in "
                         f"XNNPACK)")
        elif source.quantization:
            notes.append(f"fp32: the candidate is {source.quantization.get('quantizer')} for {source.runtime}, "
                         f"not int8 weights; --option executorch.int8=true lowers it to int8")
        notes.append("batch 1, T from 3 to max_length: the app runs one text at a time, unpadded; threads: "
                     "ExecuTorch's thread pool (XNNPACK's), one per logical CPU unless the app sizes it")
        length = {"min": pte.MIN_LENGTH, "max": source.max_length}
        spec = {"inputs": [{"name": n, "dtype": "int64", "shape": [1, "sequence"], "sequence": length}
                           for n in pte.INPUTS],
                "outputs": [{"name": pte.OUTPUT, "dtype": "float32", "shape": [1, len(source.labels)]}],
                "method": "forward", "backend": "XnnpackBackend", "precision": "int8" if int8 else "fp32",
                "runtime": pte.version()}
        return Exported(files=sorted(p for p in folder.iterdir() if p.is_file()), spec=spec, checks=checks,
                        sizes={"model.pte": info.bytes}, notes=notes)

    @classmethod
    def fallback(cls, error: BaseException, op: str | None) -> str:
        cause = f"ExecuTorch could not lower '{op}'; " if op else ""
        return (f"{cause}try --option executorch.int8=false, or --format onnx (ONNX Runtime Mobile runs on Android "
                f"and iOS too); {pte.INSTALL} if it is missing")


def _split(source: ExportSource, rows: int) -> tuple[list[dict[str, Any]], Any]:
    """(calibration rows, the rows the check scores): the first ``rows`` of the train sample the
    source holds (seeded already), the check on every test row; without train rows, a seeded share
    of the test rows calibrates, at most a quarter of them, and the check runs on the others."""
    if source.calibration is not None and len(source.calibration):
        return list(source.calibration.select(range(min(rows, len(source.calibration))))), source.test
    if source.test is None or len(source.test) < 2:
        raise AlambicError("an int8 ExecuTorch export calibrates on the run's train rows, or else on test rows: "
                           "give the run's config (or a test split), or --option executorch.int8=false")
    picked = sorted(random.Random(0).sample(range(len(source.test)), min(rows, len(source.test) // 4) or 1))
    rest = sorted(set(range(len(source.test))) - set(picked))
    return list(source.test.select(picked)), source.test.select(rest)


def runtime_check(source: ExportSource, info: pte.PteInfo, rows: Any, calibrated: int = 0) -> Check:
    """The .pte in ExecuTorch's runtime against the PyTorch model on ``rows``: fp32 agrees on every
    row within float rounding; int8 on labelled rows is held to the guard's budget on accuracy, as
    ONNX's int8 graph is, else to :data:`MIN_QUANTIZED_AGREEMENT`."""
    name = "ExecuTorch (XNNPACK) vs PyTorch (test split)"
    if rows is None:
        return Check(name, None, "no test split given: not run", covers=RUNTIME)
    found = pte.compare_pte(source.model, info.path, rows, max_examples=len(rows))
    held = f" ({calibrated} calibration rows held out)" if calibrated else ""
    shown = (f"max |diff| {found['max_abs_diff']:.2e}, argmax {found['argmax_agreement']:.2%} of "
             f"{found['examples']}{held}")
    if info.int8 and "accuracy" in found:
        budget = float((source.record.get("guard") or {}).get("max_drop") or 1.0)
        drop = 100 * (found["reference_accuracy"] - found["accuracy"])
        accuracy = f"accuracy {found['accuracy']:.4f} vs {found['reference_accuracy']:.4f}"
        return Check(name, drop <= budget, f"{shown}; {accuracy} (drop {drop:+.2f} points, budget {budget:g})",
                     found | {"budget_points": budget}, covers=RUNTIME)
    need = MIN_QUANTIZED_AGREEMENT if info.int8 else 1.0
    close = info.int8 or found["max_abs_diff"] <= MAX_FP32_DIFF
    return Check(name, found["argmax_agreement"] >= need and close, f"{shown} (>= {need:.1%})",
                 found | {"threshold": need}, covers=RUNTIME)


def size_of_weights_check(model: Any, info: pte.PteInfo) -> Check:
    """The program's bytes against its weights' (fp32: 4 bytes a parameter; int8: 1 byte a linear
    weight, 4 for the rest, embeddings included): at most :data:`SIZE_SLACK` times, plus 64 KB."""
    import torch

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    expected = (total - linear) * 4 + linear if info.int8 else total * 4
    limit = expected * SIZE_SLACK + 65536
    return Check("model.pte size vs its weights", info.bytes <= limit,
                 f"{info.bytes / 1e6:.2f} MB for {expected / 1e6:.2f} MB of {'int8' if info.int8 else 'fp32'} "
                 f"weights (<= {SIZE_SLACK}x + 64 KB)",
                 {"bytes": info.bytes, "weight_bytes": expected, "limit": int(limit)}, covers=STRUCTURE)


def delegation_check(info: pte.PteInfo) -> Check:
    """How much of the graph XNNPACK runs: a figure (the rest runs in portable kernels), never a gate."""
    return Check("ops delegated to XNNPACK", None if info.delegated else False,
                 f"{info.delegated} of {info.delegated + info.portable}",
                 {"delegated": info.delegated, "portable": info.portable}, covers=STRUCTURE)


@alambic.hookimpl
def alambic_register_exporters(register: KindRegistry) -> None:
    register.add(ExecuTorch)
