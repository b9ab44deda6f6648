"""Built-in exporters: a Hugging Face folder, an ONNX graph, and Core ML (with an updatable head).

======  ===================================================================  ===========================
id      writes                                                               verified by
======  ===================================================================  ===========================
hf      save_pretrained folder (safetensors), tokenizer, labels, model card  ``transformers.pipeline``
                                                                             labels = the source model's
onnx    ``model.onnx`` (opset >= 17, dynamic batch/sequence, ``logits``);    checker, opset, inputs; ORT
        the stage's int8 graph when the candidate runs on ONNX Runtime;      vs PyTorch logits and
        config.json + tokenizer beside it (Optimum loads the folder)         argmax agreement, size
coreml  ``Classifier.mlpackage`` (ML Program, iOS16, fp16, int8 weights for   specs; the export wrapper
        an int8 candidate) and ``UpdatableClassifier.mlmodel`` (updatable    vs PyTorch; the updatable
        neural-network pipeline); vocab.txt + tokenizer.json                 layer, loss, optimizer
======  ===================================================================  ===========================

Each class adapts functions of :mod:`alambic.compress.onnx_export` and :mod:`alambic.ship.coreml_export`.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import alambic
from alambic.compress.onnx_export import SLOW_FUSIONS, compare_logits, export_onnx, file_bytes
from alambic.errors import AlambicError
from alambic.options import choice
from alambic.ship import coreml_checks as cmc
from alambic.ship import coreml_export as cm
from alambic.ship.app_tokenizer import app_check, swift_check, vectors_check, write_vectors
from alambic.ship.coreml_compression import WeightPlan, plan_for
from alambic.ship.coreml_export import LAYOUTS, TARGETS
from alambic.ship.coreml_scoring import ReadBack, load_read_back, match_check, precision_check, read_back
from alambic.ship.coreml_scoring import scored_check as score_read_back
from alambic.ship.coreml_scoring import size_check as package_size_check
from alambic.ship.exporter import (
    MAX_INT8_RATIO,
    MIN_QUANTIZED_AGREEMENT,
    RUNTIME,
    SOURCE_GRAPH,
    WEIGHTS_SCORED,
    Check,
    Exported,
    Exporter,
    size_check,
)

if TYPE_CHECKING:
    from alambic.registry import KindRegistry
    from alambic.ship.exporter import ExportSource

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _copy_tokenizer(source: ExportSource, folder: Path, names: tuple[str, ...] = TOKENIZER_FILES) -> list[Path]:
    """The stage's tokenizer files, copied as they are: the app tokenizes exactly as training did."""
    copied = []
    for name in names:
        if (source.model_dir / name).is_file():
            copied.append(Path(shutil.copy2(source.model_dir / name, folder / name)))
    return copied


# --- hf -------------------------------------------------------------------------------------


class HuggingFace(Exporter):
    """Hugging Face folder: safetensors, tokenizer, id2label/label2id and a model card (fp32 weights)."""

    id = "hf"

    @classmethod
    def export(cls, source: ExportSource, folder: Path, options: Any) -> Exported:
        source.model.save_pretrained(folder, safe_serialization=True)
        source.tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(model_card(source), encoding="utf-8")
        notes = []
        if source.quantization:
            notes.append(f"fp32 (pruned) weights; the {source.quantization.get('quantizer')} model is in onnx/ "
                         f"and coreml/")
        spec = {"inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
                           for n in ("input_ids", "attention_mask", "token_type_ids")],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(source.labels)]}]}
        return Exported(files=sorted(p for p in folder.rglob("*") if p.is_file()), spec=spec,
                        checks=[pipeline_check(folder, source)],
                        sizes={"model.safetensors": (folder / "model.safetensors").stat().st_size}, notes=notes)

    @classmethod
    def fallback(cls, error: BaseException, op: str | None) -> str:
        return "check that the stage's model/ folder loads with AutoModelForSequenceClassification"


def pipeline_check(folder: Path, source: ExportSource) -> Check:
    """``transformers.pipeline`` on the folder predicts the source model's labels on the test texts."""
    name = "transformers.pipeline labels = source model's"
    if source.texts is None:
        return Check(name, None, "no test texts given: not run", covers=RUNTIME)
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns "Device set to use cpu": asked for, and known
    try:
        classify = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")
    finally:
        hf_logging.set_verbosity(verbosity)
    predicted = classify(source.texts, truncation=True, max_length=source.max_length, batch_size=32)
    got = [p["label"] for p in predicted]
    expected = [source.labels[i] for i in source.reference_logits.argmax(-1)]
    agreement = sum(g == e for g, e in zip(got, expected)) / len(expected)
    return Check(name, agreement == 1.0, f"{agreement:.2%} of {len(expected)} test rows (fp32: 100%)",
                 {"agreement": agreement, "examples": len(expected)}, covers=RUNTIME)


def model_card(source: ExportSource) -> str:
    """How the model was made: student, teacher, distillation, pruning, quantization, guard, metrics."""
    record, meta = source.record, source.metadata
    distilled = _distill_metrics(record.get("model_dir"))
    lines = ["---", "language: zh", f"license: {meta.get('license') or 'other'}", "library_name: transformers",
             "pipeline_tag: text-classification", "tags: [alambic, distillation, text-classification]", "---", "",
             f"# {meta.get('description') or 'Chinese text classifier'}", "",
             f"Labels: {', '.join(source.labels)}. Inputs up to {source.max_length} tokens."
             + (f" Author: {meta['author']}." if meta.get("author") else ""), "", "## How it was made", ""]
    if distilled:
        settings = distilled.get("settings") or {}
        lines.append(f"- distilled: student `{distilled.get('student')}` {distilled.get('sizes') or ''} from "
                     f"teacher `{distilled.get('teacher')}` (test accuracy "
                     f"{distilled.get('teacher_test_accuracy', float('nan')):.4f}); losses "
                     f"{settings.get('losses')}, temperature {settings.get('temperature')}")
    for step in record.get("steps") or []:
        lines.append(f"- {step['step']}: {step['outcome']}")
    if source.quantization:
        q = source.quantization
        lines.append(f"- quantized: `{q.get('quantizer')}` {q.get('options')} for {q.get('runtime')}; "
                     f"this folder holds the fp32 weights")
    decisions = record.get("decisions") or []
    if decisions:
        lines += ["", "Guard decisions (validation accuracy; a step costing more than the budget is retried at "
                  "half strength, then reverted):", "", "| step | try | before | after | outcome |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {d.get('step')} | {d.get('attempt')} | {d.get('accuracy_before', 0):.4f} | "
                  f"{d.get('accuracy_after', 0):.4f} | {d.get('outcome')} |" for d in decisions]
    before, after = record.get("before_headline"), record.get("after_headline")
    if before and after:
        lines += ["", "| test split | accuracy | macro-F1 | size MB | p50 ms |", "| --- | --- | --- | --- | --- |"]
        for name, m in (("before", before), (f"after ({source.runtime})", after)):
            ms = m.get("latency_p50_ms")  # None: timed after the search, not in the stage
            lines.append(f"| {name} | {m.get('accuracy', 0):.4f} | {m.get('macro_f1', 0):.4f} | "
                         f"{m.get('size_mb', 0):.2f} | {'-' if ms is None else f'{ms:.2f}'} |")
    lines += ["", "## Use", "", "```python", "from transformers import pipeline", "",
              'classify = pipeline("text-classification", model="hf/")',
              f'classify(["..."], truncation=True, max_length={source.max_length})', "```", "",
              "## Recipe", "", "```json", json.dumps(source.recipe, ensure_ascii=False, indent=2, default=str),
              "```", ""]
    return "\n".join(lines)


def _distill_metrics(model_dir: str | None) -> dict[str, Any]:
    """The distilled student's metrics.json (student, teacher, settings), when its folder is here."""
    path = Path(model_dir) / "metrics.json" if model_dir else None
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
    except (OSError, ValueError):
        return {}


# --- onnx -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = 17  # for a graph exported here; a quantized graph is copied from the stage as it is

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise AlambicError(f"exporter 'onnx': opset must be >= 17, got {self.opset}")


class Onnx(Exporter):
    """ONNX graph (opset >= 17, dynamic batch/sequence, logits); the int8 graph of an ONNX Runtime candidate."""

    id = "onnx"
    Options = OnnxOptions

    @classmethod
    def export(cls, source: ExportSource, folder: Path, options: OnnxOptions) -> Exported:
        path, notes = folder / "model.onnx", []
        quantized = source.runtime == "onnxruntime" and source.artifact is not None \
            and source.artifact.suffix == ".onnx"
        if quantized:
            shutil.copyfile(source.artifact, path)
            notes.append(f"the candidate's {source.quantization.get('quantizer')} graph, as measured")
        else:
            export_onnx(source.model, path, opset=options.opset)
            if source.quantization:
                notes.append(f"fp32: the candidate was quantized for {source.runtime}, which ONNX cannot carry; "
                             f"compress with runtime onnxruntime for an int8 graph")
        (folder / "config.json").write_text(json.dumps(source.model.config.to_dict(), indent=2), encoding="utf-8")
        _copy_tokenizer(source, folder)
        checks = graph_checks(path) + ort_checks(source, path, quantized)
        size = file_bytes(path)
        fp32 = source.quantization_source  # checked inside the stage, as the artifact is
        if quantized and source.int8 and fp32 is not None:
            checks.append(size_check("model.onnx (int8)", size, file_bytes(fp32), MAX_INT8_RATIO))
        spec = {"inputs": _graph_inputs(path),
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(source.labels)]}],
                # how alambic ran it: ORT's SkipLayerNormalization kernel is the slower (BENCHMARKS.md)
                "onnxruntime_session": {"disabled_optimizers": list(SLOW_FUSIONS)}}
        return Exported(files=sorted(p for p in folder.iterdir() if p.is_file()), spec=spec, checks=checks,
                        sizes={"model.onnx": size}, notes=notes)

    @classmethod
    def fallback(cls, error: BaseException, op: str | None) -> str:
        return "try a newer opset (--option onnx.opset=18), or export hf and convert it with Optimum"


def _graph_inputs(path: Path) -> list[dict[str, Any]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [{"name": i.name, "dtype": onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower(),
             "shape": [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]} for i in graph.input]


def graph_checks(path: Path) -> list[Check]:
    """The ONNX checker, the opset, named dynamic inputs and the single ``logits`` output."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)  # raises: the format fails with its message
    model = onnx.load(str(path), load_external_data=False)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inputs = _graph_inputs(path)
    dynamic = all(isinstance(d, str) and d for i in inputs for d in i["shape"])
    outputs = [o.name for o in model.graph.output]
    names = [i["name"] for i in inputs]
    return [Check("onnx.checker (full)", True, "passed"),
            Check("opset >= 17", opset >= 17, str(opset)),
            Check("inputs, dynamic batch and sequence", names[:2] == ["input_ids", "attention_mask"] and dynamic,
                  ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in inputs)),
            Check("output logits", outputs == ["logits"], ", ".join(outputs))]


def ort_checks(source: ExportSource, path: Path, quantized: bool) -> list[Check]:
    """ONNX Runtime against the PyTorch model on the test rows: max |logit diff|, argmax agreement;
    a quantized graph with labelled rows is held to the guard's budget on accuracy instead, as the
    search held it (an int8 graph may disagree with fp32 on a few rows and score the same)."""
    name = "ONNX Runtime vs PyTorch (test split)"
    if source.test is None:
        return [Check(name, None, "no test split given: not run", covers=RUNTIME)]

    found = compare_logits(source.model, path, source.test, max_examples=len(source.test))
    shown = f"max |diff| {found['max_abs_diff']:.2e}, argmax {found['argmax_agreement']:.2%} of {found['examples']}"
    if quantized and "accuracy" in found:
        budget = float((source.record.get("guard") or {}).get("max_drop") or 1.0)
        drop = 100 * (found["reference_accuracy"] - found["accuracy"])
        accuracy = f"accuracy {found['accuracy']:.4f} vs {found['reference_accuracy']:.4f}"
        return [Check(name, drop <= budget, f"{shown}; {accuracy} (drop {drop:+.2f} points, budget {budget:g})",
                      found | {"budget_points": budget}, covers=RUNTIME)]
    need = MIN_QUANTIZED_AGREEMENT if quantized else 1.0
    close = quantized or found["max_abs_diff"] <= 1e-3  # int8 logits differ by design; fp32 must not
    return [Check(name, found["argmax_agreement"] >= need and close, f"{shown} (>= {need:.1%})",
                  found | {"threshold": need}, covers=RUNTIME)]


# --- coreml ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreMLOptions:
    target: str = "iOS16"  # Classifier.mlpackage's minimum deployment target (ML Program: iOS15+)
    int8: bool | None = None  # int8 weights; None = when the candidate was quantized to int8
    updatable: bool = True  # also UpdatableClassifier.mlmodel
    #: Classifier.mlpackage's layout: "standard", or "ane", Apple's Neural Engine layout of the same
    #: weights (B, C, 1, S) for BERT students (alambic.ship.ane_layout); its speed is Apple's claim
    layout: str = "standard"
    # the updatable model's SGD defaults (the app may override them in MLModelConfiguration)
    learning_rate: float = 0.01
    batch_size: int = 8
    epochs: int = 10

    def __post_init__(self) -> None:
        who = "exporter 'coreml'"
        if self.target not in TARGETS:
            raise AlambicError(f"{who}: target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.int8 and self.target == "iOS15":
            raise AlambicError(f"{who}: int8 weights need target iOS16 or later")
        choice(who, "layout", self.layout, LAYOUTS)
        if not 0 < self.learning_rate <= 1:
            raise AlambicError(f"{who}: learning_rate must be in (0, 1], got {self.learning_rate!r}")
        for key in ("batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise AlambicError(f"{who}: {key} must be >= 1, got {getattr(self, key)!r}")


class CoreML(Exporter):
    """Core ML: Classifier.mlpackage (ML Program, iOS16+) and an updatable UpdatableClassifier.mlmodel."""

    id = "coreml"
    Options = CoreMLOptions

    @classmethod
    def export(cls, source: ExportSource, folder: Path, options: CoreMLOptions) -> Exported:
        model, labels, length = source.model, source.labels, source.max_length
        plan = _weight_plan(source, options)
        int8 = plan.int8
        meta = source.metadata | {"user": _user_metadata(source)}
        checks = cmc.wrapper_parity(model, source.test, source.reference_logits, layout=options.layout) \
            if source.test is not None else [Check("export wrapper vs PyTorch", None, "no test split given: not run",
                                                   covers=SOURCE_GRAPH)]
        package = folder / "Classifier.mlpackage"
        if source.runtime == "coreml":  # compressed in Core ML's own forms: ship the package that was measured
            checks += _ship_measured(source, package, options, plan, meta)
            read = read_back(package)
        else:
            classifier = cm.convert_classifier(model, labels, length, target=options.target, weights=plan,
                                               layout=options.layout)
            cm.describe(classifier, meta)
            classifier.save(str(package))
            checks += cmc.check_classifier(package, length, int8, options.layout)
            read = read_back(package)
            checks += _read_back(source, read, options.layout, plan)
        sizes = {package.name: cm.package_bytes(package)}
        spec = {package.name: cmc.io_spec(cmc.load_spec(package))}
        checks.append(package_size_check(package, sizes[package.name], read))
        if options.updatable:
            pipeline = cm.updatable_pipeline(model, labels, length, learning_rate=options.learning_rate,
                                             batch_size=options.batch_size, epochs=options.epochs,
                                             encoder_bits=8 if int8 else 16)
            cm.describe(pipeline, meta)
            path = cm.save_spec(pipeline, folder / "UpdatableClassifier.mlmodel")
            checks += cmc.check_updatable(path, length)
            sizes[path.name] = cm.package_bytes(path)
            spec[path.name] = cmc.io_spec(cmc.load_spec(path))
        _copy_tokenizer(source, folder)  # tokenizer.json + tokenizer_config.json: what swift-transformers loads
        write_vectors(source.tokenizer, folder, length)
        checks += [swift_check(folder), vectors_check(folder)]
        checks += [*cmc.mac_checks(options.updatable), app_check()]
        notes = [f"{plan.describe()}; target {_target(source, options)}; Classifier.mlpackage in the "
                 f"{options.layout} layout"]
        if source.runtime == "coreml" and options.updatable:
            notes.append("UpdatableClassifier.mlmodel's encoder holds fp16 weights: the neural-network format "
                         "(the only one Core ML updates) has no grouped look-up tables or int4 blocks")
        if options.layout == "ane":
            notes.append("the Neural Engine layout is Apple's (ml-ane-transformers); its speed-up is Apple's claim, "
                         "not measured here; UpdatableClassifier.mlmodel keeps the standard layout")
        if options.updatable:
            notes.append("UpdatableClassifier.mlmodel takes Float32 input_ids/attention_mask (the neural-network "
                         "format, the only one Core ML can update, has no int32 inputs)")
        return Exported(files=sorted(p for p in folder.rglob("*") if p.is_file()), spec=spec, checks=checks,
                        sizes=sizes, notes=notes)

    @classmethod
    def fallback(cls, error: BaseException, op: str | None) -> str:
        cause = f"the converter has no '{op}'; " if op else ""
        return (f"{cause}try --format onnx (ONNX Runtime runs on iOS too: onnxruntime-objc), or a lower Core ML "
                f"target (--option coreml.target=iOS15, no int8), or --option coreml.updatable=false")


def _read_back(source: ExportSource, read: ReadBack, layout: str, plan: WeightPlan, match: bool = True) -> list[Check]:
    """The Core ML weights read back: their precision against the plan, their values against the
    converted module's (``match``), then loaded into a copy of it and scored; an error (the format
    fails) when they lose more than the guard's budget."""
    module = cm.wrapper(copy.deepcopy(source.model), "logits", layout)  # a copy: loading and .half() change it
    matched = [precision_check(read, plan)] + ([match_check(module.state_dict(), read.weights, plan)] if match else [])
    if source.test is None:
        return [*matched, Check("Core ML weights read back and scored", None, "no test split given: not run",
                               covers=WEIGHTS_SCORED)]
    load_read_back(module, read.weights)
    budget = float((source.record.get("guard") or {}).get("max_drop") or 1.0)
    scored = score_read_back(module, source.test, source.reference_logits, budget_points=budget,
                             candidate=source.record.get("after"))
    if scored.ok is False:
        raise AlambicError(f"the Core ML weights lose more than the guard allows: {scored.value}")
    return [*matched, scored]


def _ship_measured(source: ExportSource, path: Path, options: CoreMLOptions, plan: WeightPlan,
                   meta: dict[str, Any]) -> list[Check]:
    """The candidate's own Classifier.mlpackage, its metadata added: its weights read back are checked
    equal to the measured package's, in the plan's forms, and scored (as :func:`_read_back`)."""
    if source.artifact is None or source.artifact.suffix != ".mlpackage":
        raise AlambicError(f"{source.stage_dir}: the candidate ran in Core ML but its stage holds no .mlpackage "
                           f"(record.json artifact: {source.record.get('artifact')!r})")
    if options.layout != "standard" or options.int8 is not None:
        raise AlambicError("exporter 'coreml': a candidate compressed in Core ML's own forms ships the package it "
                           "was measured as (standard layout, its own weights): drop coreml.layout and coreml.int8")
    import numpy as np

    with cm.quiet() as ct:
        package = ct.models.MLModel(str(source.artifact), skip_model_load=True)
        cm.describe(package, meta)
        package.save(str(path))
    measured, shipped = read_back(source.artifact), read_back(path)
    same = measured.weights.keys() == shipped.weights.keys() and all(
        np.array_equal(measured.weights[name], shipped.weights[name]) for name in measured.weights)
    checks = cmc.check_classifier(path, source.max_length, plan.int8, form="/".join(sorted(set(shipped.forms.values()))))
    checks.append(Check("Core ML package = the one the candidate was measured as", same,
                        f"{len(shipped.weights)} weight tensors read back from both, "
                        + ("bit-equal" if same else "not equal"), covers=WEIGHTS_SCORED))
    return checks + _read_back(source, shipped, "standard", plan, match=False)


def _target(source: ExportSource, options: CoreMLOptions) -> str:
    return str(source.quantization.get("target", options.target)) if source.runtime == "coreml" else options.target


def _weight_plan(source: ExportSource, options: CoreMLOptions) -> WeightPlan:
    """The candidate's compression in Core ML's terms; ``int8`` true/false overrides it for every kind."""
    if source.runtime == "coreml":  # its own package's plan (_ship_measured refuses an override)
        return plan_for(source.quantization)
    if options.int8 is None and options.target == "iOS15":  # no int8 weights before iOS 16
        return WeightPlan.every("fp16", "target iOS15 holds no int8 weights")
    if options.int8 is None:
        return plan_for(source.quantization)
    forced = "int8" if options.int8 else "fp16"
    return WeightPlan.every(forced, f"coreml.int8={str(options.int8).lower()}: every kind {forced}, whatever the "
                                    f"candidate had")


def _user_metadata(source: ExportSource) -> dict[str, Any]:
    """What the Core ML files record besides author and license: labels, max length, vocabulary."""
    vocabulary = "vocab.txt" if (source.model_dir / "vocab.txt").is_file() else "tokenizer.json"
    return {"labels": source.labels, "max_length": source.max_length, "vocabulary": vocabulary,
            "tokenizer": "tokenizer.json", "stage": source.record.get("key", str(source.stage_dir)),
            "alambic": alambic.__version__}


EXPORTERS: tuple[type[Exporter], ...] = (HuggingFace, Onnx, CoreML)


@alambic.hookimpl
def alambic_register_exporters(register: KindRegistry) -> None:
    for cls in EXPORTERS:
        register.add(cls)
