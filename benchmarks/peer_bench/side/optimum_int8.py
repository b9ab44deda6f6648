"""Hugging Face Optimum on the student, as its documentation tells a CPU user to do it (optimum venv).

Export the save_pretrained folder (``ORTModelForSequenceClassification.from_pretrained(export=True)``),
optimize the export with ``ORTOptimizer`` at each ``AutoOptimizationConfig`` level asked, then quantize
the export and every optimized graph with ``ORTQuantizer`` dynamic int8, with the
``AutoQuantizationConfig`` preset of this CPU, per tensor and per channel. ORTQuantizer cannot type the
fused (O2/O3) graphs by itself; those are quantized again after ONNX Runtime's quantization
pre-processing (symbolic shape inference), the step ORT's quantizer advises. Each step is timed here.

inputs: {"student": folder, "out": folder, "levels": ["O1", ...], "per_channel": [false, true]}
result: {"graphs": [{"name", "precision", "level", "per_channel", "path", "source", "seconds",
                     "preprocessed"?}],
         "skipped": [{"name", "why"}], "preset": str, "cpu_flags": [...], "export_s": float}
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from exchange import finish, io

#: AutoQuantizationConfig's CPU presets, best first, with the CPU flag each needs
PRESETS = (("avx512_vnni", "avx512_vnni"), ("avx512", "avx512f"), ("avx2", "avx2"))


def cpu_preset() -> tuple[str, list[str]]:
    """The best AutoQuantizationConfig preset this CPU has the instructions for (arm64 off x86)."""
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    preset = next((name for name, flag in PRESETS if flag in flags), "arm64")
    return preset, sorted(f for f in flags if f.startswith(("avx512_vnni", "amx", "avx512f", "avx2")))


def export(student: str, out: Path) -> tuple[Path, float]:
    """The student exported to ONNX by Optimum and saved (model.onnx, config, tokenizer)."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    start = time.perf_counter()
    model = ORTModelForSequenceClassification.from_pretrained(student, export=True)
    model.save_pretrained(out)
    return out / "model.onnx", time.perf_counter() - start


def optimize(export_dir: Path, level: str, out: Path) -> tuple[Path, float]:
    """The export optimized by ORTOptimizer at ``level`` (O1 basic ... O3 with fast GELU)."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    start = time.perf_counter()
    optimizer = ORTOptimizer.from_pretrained(export_dir)
    optimizer.optimize(optimization_config=AutoOptimizationConfig.with_optimization_level(level), save_dir=out)
    return out / "model_optimized.onnx", time.perf_counter() - start


def quantize(graph: Path, preset: str, per_channel: bool, out: Path) -> tuple[Path, float]:
    """``graph`` quantized by ORTQuantizer: dynamic int8 with this CPU's preset (its default ops)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    start = time.perf_counter()
    config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=per_channel)
    quantizer = ORTQuantizer.from_pretrained(graph.parent, file_name=graph.name)
    quantizer.quantize(save_dir=out, quantization_config=config)
    return out / f"{graph.stem}_quantized.onnx", time.perf_counter() - start


def with_shapes(graph: Path) -> tuple[Path, float]:
    """``graph`` annotated by ONNX Runtime's quantization pre-processing (symbolic shape inference,
    no optimization), which its quantizer asks for: ONNX's own shape inference stops at the fused
    contrib ops of an O2/O3 graph, and ORTQuantizer then fails ("Unable to find data type").
    ``auto_merge``: the symbolic inference stops short on Optimum's O2 graph of this student
    ("Incomplete symbolic shape inference") unless it may merge conflicting symbolic dimensions."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    out = graph.with_name(f"{graph.stem}_shapes.onnx")
    quant_pre_process(str(graph), str(out), skip_optimization=True, auto_merge=True)
    return out, time.perf_counter() - start


def quantize_level(level: str, graph: Path, preset: str, per_channel: bool, out: Path
                   ) -> tuple[list[dict], list[dict]]:
    """One int8 graph of ``graph`` (rows, skipped): ORTQuantizer as Optimum runs it, and when that
    fails, again after ORT's pre-processing, the step ORT's quantizer's own warning points to."""
    name = f"{level} int8 {'per-channel' if per_channel else 'per-tensor'}"
    row = {"name": name, "precision": "int8", "level": level, "per_channel": per_channel, "source": str(graph)}
    try:
        path, seconds = quantize(graph, preset, per_channel, out / f"{level}-int8-{int(per_channel)}")
        return [row | {"path": str(path), "seconds": round(seconds, 2)}], []
    except Exception as exc:  # noqa: BLE001 - a graph that fails is a row saying why
        traceback.print_exc()
        skipped = [{"name": name, "why": f"ORTQuantizer failed: {type(exc).__name__}: {first_sentence(exc)}"}]
    try:
        shaped, shape_s = with_shapes(graph)
        path, seconds = quantize(shaped, preset, per_channel, out / f"{level}-shapes-int8-{int(per_channel)}")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return [], skipped + [{"name": f"{name}, pre-processed", "why": f"{type(exc).__name__}: {first_sentence(exc)}"}]
    return [row | {"name": f"{name}, pre-processed", "path": str(path), "seconds": round(shape_s + seconds, 2),
                   "preprocessed": True}], skipped


def first_sentence(exc: Exception) -> str:
    """The error's first sentence: the table's row, the log has the rest."""
    return str(exc).split(". ")[0].strip()


def why_not_o4() -> str:
    """Why O4 is left out, in the words of Optimum's own O4 config."""
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    config = AutoOptimizationConfig.O4()
    return (f"O4 is O3 with fp16={config.fp16}, optimize_for_gpu={config.optimize_for_gpu} (Optimum forces "
            "the GPU for it): half precision for a GPU, not this CPU's int8")


def main() -> None:
    inputs, result_path = io()
    out = Path(inputs["out"])
    preset, flags = cpu_preset()
    export_dir = out / "export"
    fp32, export_s = export(inputs["student"], export_dir)
    graphs = [{"name": "export", "precision": "fp32", "level": "none", "per_channel": None, "path": str(fp32),
               "source": inputs["student"], "seconds": round(export_s, 2)}]
    skipped = [{"name": "O4", "why": why_not_o4()}]
    sources = [("export", fp32)]
    for level in inputs["levels"]:
        try:
            path, seconds = optimize(export_dir, level, out / level)
        except Exception as exc:  # noqa: BLE001 - a level that fails is a row saying why
            traceback.print_exc()
            skipped.append({"name": level, "why": f"ORTOptimizer failed: {type(exc).__name__}: {exc}"})
            continue
        graphs.append({"name": level, "precision": "fp32", "level": level, "per_channel": None, "path": str(path),
                       "source": str(fp32), "seconds": round(seconds, 2)})
        sources.append((level, path))
    for level, graph in sources:
        for per_channel in inputs["per_channel"]:
            made, failed = quantize_level(level, graph, preset, per_channel, out)
            graphs += made
            skipped += failed
    finish({"graphs": graphs, "skipped": skipped, "preset": preset, "cpu_flags": flags,
            "export_s": round(export_s, 2)}, result_path)


if __name__ == "__main__":
    main()
