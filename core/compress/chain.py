"""Compress a trained classifier: pruning steps, then a quantizer, each under the accuracy guard.

::

    steps = parse_steps("heads:0.25,ffn:0.3,vocab", ctx.registry)
    record = compress(ctx, "artifacts/run/stages/<distill-key>", steps, quant="dynamic-int8")
    record.decisions          # every guard decision: step, strength, accuracy before/after, outcome
    record.before.headline()  # the input model, measured (PyTorch, test split)
    record.after.headline()   # what a phone ships, measured in its runtime
    record.agreement          # quantized ONNX vs its fp32 ONNX source: argmax agreement on test
    record.artifact           # the quantized ONNX graph, or the (pruned) model folder

The steps' parsing, the measuring settings and the records are in :mod:`alambic.compress.records`.

The loop, in two stages of the store::

    prune stage (stages/<prune-key>/: model/, prune.json), keyed by the model, data, steps, guard:
        model, tokenizer = load(model_dir)          # the folder's tokenizer, else the run's
        for step in steps:                          # guarded: kept, retried at half, or reverted
            model = Pruner.apply(model, options, PruneContext(validation, train, tokenizer))
            (after vocabulary pruning: the raw splits are tokenized again by the pruned tokenizer)
            (recover_epochs: then distilled from the run's teacher's cached logits, before the guard)
        save model/                                 # safetensors + the pruned model's tokenizer
    compress stage (stages/<key>/), keyed by the prune stage, quantizer, options, guard, measuring:
        model/       the pruned model, copied in: the stage ships whole
        quantized/   Quantizer.apply(model): guarded too, no half strength: kept or reverted
        record.json  steps, decisions, pruning reports, measurements before/after, agreement

Candidates that share a pruning but not a quantizer prune once; the same call again reuses both
stages. Before is the input folder in PyTorch on the test split; after is what a phone ships, in
its runtime, on the test split tokenized by the pruned model's own tokenizer.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alambic.compress.guard import GuardDecision, describe_options, final_outcome, guarded_step
from alambic.compress.latency import UNTIMED
from alambic.compress.measure import (
    Measurement,
    config_vocab_size,
    measure_onnx,
    measure_pytorch,
    measure_untimed,
    onnx_evaluate,
    vocab_files,
)
from alambic.compress.onnx_export import compare_logits, ort_session
from alambic.compress.quantization import QuantContext, QuantSource
from alambic.compress.records import CompressRecord, MeasureSettings, PruneRecord, step_label
from alambic.config import PruningStep
from alambic.errors import AlambicError
from alambic.fingerprint import model_digest, stable_hash
from alambic.paths import inside
from alambic.train.models import check_vocab, load_pretrained, own_tokenizer

log = logging.getLogger(__name__)

RECORD_FILE = "record.json"
PRUNE_FILE = "prune.json"
MODEL_DIR = "model"
QUANT_DIR = "quantized"
#: a quantized ONNX graph should predict as its fp32 source on at least this share of the test rows
MIN_AGREEMENT = 0.99


def _timing(measure: MeasureSettings) -> Any:
    """What a stage's key holds of the settings: without timing, none of them changes its result."""
    return measure.key() if measure.lengths else "scores only"


# --- inputs ---------------------------------------------------------------------------------


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise AlambicError(f"--model: folder not found: {model_dir} (give a folder written by save_pretrained)")
    if not (model_dir / "config.json").is_file():
        raise AlambicError(f"--model: {model_dir} has no config.json (not a save_pretrained folder)")


def _load_inputs(ctx: Any, model_dir: Path) -> tuple[Any, Any, Any, str, str]:
    """(model, tokenizer, tokenized splits, tokenized key, where the tokenizer came from)."""
    from transformers import AutoModelForSequenceClassification

    _check_model_dir(model_dir)
    model = load_pretrained(model_dir, AutoModelForSequenceClassification, config_key="--model").eval()
    data = ctx.prepared
    tokenizer = own_tokenizer(model_dir, "--model")  # the folder's own, else the run's
    source = "run" if tokenizer is None else str(model_dir)
    tokenizer = tokenizer if tokenizer is not None else data.tokenizer
    tokenized, key = ctx.tokenize(tokenizer)
    check_vocab(model, tokenizer)
    if model.config.num_labels != len(data.label_names):
        raise AlambicError(f"{model_dir} classifies into {model.config.num_labels} labels but the data has "
                           f"{len(data.label_names)}: {data.label_names}")
    if len(tokenized["validation"]) == 0 or len(tokenized["test"]) == 0:
        raise AlambicError("compress needs validation rows (the guard) and test rows (the measurements)")
    return model, tokenizer, tokenized, key, source


# --- the loop -------------------------------------------------------------------------------


def prune(ctx: Any, model_dir: str | Path, steps: Sequence[PruningStep], *,
          on_decision: Callable[[GuardDecision], None] | None = None) -> PruneRecord:
    """The guarded pruning steps on ``model_dir``, stored as a stage (``model/`` + ``prune.json``)
    keyed by the model's content, the data, the steps and the guard; reused when made before.
    With no steps the input folder is the result and nothing is written."""
    model_dir = Path(model_dir).expanduser()
    if not steps:
        return PruneRecord(key=None, model_dir=model_dir, record={"steps": [], "decisions": [], "pruning": []},
                           reused=True)
    pruners = [ctx.registry["pruners"].get(step.pruner) for step in steps]
    options = [P.options(step.amount, **step.options) for P, step in zip(pruners, steps, strict=True)]
    for P, step in zip(pruners, steps, strict=True):
        if step.recover_epochs and P.recovery_refused:
            raise AlambicError(f"pruning step {step_label(step)}: pruner '{P.id}' cannot be followed by "
                               f"recovery training ({P.recovery_refused}); set recover_epochs: 0")
    _check_model_dir(model_dir)
    inputs = {"stage": "prune", "model": model_digest(model_dir), "data": ctx.prepared.tokenized_key,
              # a step without recovery hashes as before recovery existed: its stage is still valid
              "steps": [s.model_dump(exclude=None if s.recover_epochs else {"recover_epochs"}) for s in steps],
              "guard": ctx.config.guard.model_dump()}
    if any(step.recover_epochs for step in steps):
        inputs["recovery"] = recovery_inputs(ctx)
    key = stable_hash(inputs)[:32]

    def build(folder: Path) -> dict[str, Any]:
        model, tokenizer, tokenized, _, _ = _load_inputs(ctx, model_dir)
        record = _prune(ctx, folder, model, tokenizer, tokenized, steps, pruners, options, on_decision)
        record |= {"key": key, "inputs": inputs}
        (folder / PRUNE_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n",
                                         encoding="utf-8")
        return {"outcomes": {s["step"]: s["outcome"] for s in record["steps"]}}

    _, reused = ctx.store.get_or_build_stage(key, "prune", build)
    path = ctx.store.local_path(ctx.store.stage_path(key))
    record = json.loads((path / PRUNE_FILE).read_text(encoding="utf-8"))
    return PruneRecord(key=key, model_dir=path / MODEL_DIR, record=record, reused=reused)


def _prune(ctx: Any, folder: Path, model: Any, tokenizer: Any, tokenized: Any, steps: Sequence[PruningStep],
           pruners: Sequence[type], options: Sequence[Any], on_decision: Any) -> dict[str, Any]:
    """Each step under the guard, in order; the pruned model saved in ``folder/model``."""
    from alambic.compress.pruning import PruneContext
    from alambic.train.distill import recover
    from alambic.train.loop import evaluate, progress_bar

    guard = ctx.config.guard
    splits = {name: tokenized[name] for name in ("train", "validation")}
    accuracy = start_accuracy = evaluate(model, splits["validation"])["accuracy"]
    decisions: list[GuardDecision] = []
    summary, reports = [], []
    logits = functools.cache(lambda: recovery_logits(ctx))  # read once, only if a step recovers

    def apply(Pruner: Any, options: Any, context: Any, step: PruningStep) -> tuple[Any, dict[str, Any]]:
        result = Pruner.apply(model, options, context)
        its = in_vocabulary(ctx, result, splits)
        if step.recover_epochs:
            log.info("%s: %d epoch(s) of recovery distillation", step_label(step), step.recover_epochs)
            with progress_bar(f"recovery {step_label(step)}", enabled=not ctx.quiet) as progress:
                metrics = recover(result.model, its["train"], its["validation"], logits(), ctx.config.distill,
                                  step.recover_epochs, progress)
            result.report["recovery"] = {"epochs": step.recover_epochs, "validation": metrics}
        return result, its

    for step, Pruner, opts in zip(steps, pruners, options, strict=True):
        context = PruneContext(validation=splits["validation"], train=splits["train"], tokenizer=tokenizer)
        found, made = guarded_step(
            apply=lambda o, P=Pruner, c=context, s=step: apply(P, o, c, s),
            evaluate=lambda found: evaluate(found[0].model, found[1]["validation"])["accuracy"],
            options=opts, half=Pruner.half, accuracy_before=accuracy, max_drop=guard.max_drop,
            retries=guard.retries, name=step_label(step), plugin=Pruner.id, on_decision=on_decision,
            start_accuracy=start_accuracy, max_total_drop=guard.total_budget)
        decisions += made
        summary.append({"step": step_label(step), "outcome": final_outcome(made)})
        if found is not None:
            result, splits = found
            model, accuracy = result.model, made[-1].accuracy_after
            if result.token_map is not None:
                tokenizer = result.tokenizer
            reports.append(result.report)
    model.save_pretrained(folder / MODEL_DIR)  # safetensors
    tokenizer.save_pretrained(folder / MODEL_DIR)  # the pruned model's own vocabulary
    return {"steps": summary, "decisions": [d.to_dict() for d in decisions], "pruning": reports,
            "validation_accuracy": {"before": start_accuracy, "after": accuracy}}


def in_vocabulary(ctx: Any, result: Any, splits: Mapping[str, Any]) -> dict[str, Any]:
    """``splits`` as the pruned model reads them. After vocabulary pruning, the raw texts tokenized
    again by the pruned tokenizer, as the shipped tokenizer will: a word it cannot spell becomes one
    [UNK], where remapping the old ids would give one [UNK] per lost piece and judge another input."""
    if result.token_map is None:
        return dict(splits)
    tokenized, _ = ctx.tokenize(result.tokenizer)
    return {name: tokenized[name] for name in splits}


def recovery_inputs(ctx: Any) -> dict[str, Any]:
    """What a recovered step's result depends on besides the step: the teacher and the settings."""
    from alambic.train.distill import train_settings
    from alambic.train.teacher import current_teacher_key

    distill = ctx.config.distill
    return {"teacher": current_teacher_key(ctx),
            "settings": train_settings(distill), "temperature": distill.temperature, "alpha": distill.alpha}


def recovery_logits(ctx: Any) -> Any:
    """The run's teacher's logits on its training rows (the teacher trained first if it never was)."""
    from alambic.train.teacher import teacher_logits, train_teacher

    return teacher_logits(ctx, train_teacher(ctx, local=True))


def compress(ctx: Any, model_dir: str | Path, steps: Sequence[PruningStep], quant: str | None = None,
             quant_options: Mapping[str, Any] | None = None, *, measure: MeasureSettings | None = None,
             on_decision: Callable[[GuardDecision], None] | None = None) -> CompressRecord:
    """Prune ``model_dir`` step by step and quantize it, under the run's guard; measure before and
    after; store the result as a stage (reused when the same call was made before).

    Pruning is a stage of its own (:func:`prune`), so candidates that differ only in their
    quantizer prune once.

    :param steps: pruning steps (:func:`parse_steps`); run in order.
    :param quant: a quantizer id, or None / "none" for no quantization.
    :param quant_options: the quantizer's options (e.g. ``{"per_channel": True}``).
    :param measure: lengths, threads, runs of the measurements (:class:`MeasureSettings`).
    :param on_decision: called with each guard decision as it is made (not when reused).
    """
    measure = measure or MeasureSettings()
    model_dir = Path(model_dir).expanduser()
    quant = None if quant in (None, "", "none") else quant
    for step in steps:  # every id and option checked before any work
        ctx.registry["pruners"].get(step.pruner).options(step.amount, **step.options)
    Quantizer = ctx.registry["quantizers"].get(quant) if quant else None
    quant_opts = Quantizer.options(quant_options) if Quantizer else None
    if quant_options and not Quantizer:
        raise AlambicError("quantizer options given without a quantizer (--quant)")
    _check_model_dir(model_dir)
    pruned = prune(ctx, model_dir, steps, on_decision=on_decision)
    guard = ctx.config.guard
    inputs = {"stage": "compress", "model": model_digest(model_dir), "data": ctx.prepared.tokenized_key,
              "pruned": pruned.key, "quant": quant, "quant_options": describe_options(quant_opts),
              "guard": guard.model_dump(), "measure": _timing(measure)}
    key = stable_hash(inputs)[:32]

    def build(folder: Path) -> dict[str, Any]:
        start = time.perf_counter()
        record = _quantize_and_measure(ctx, folder, model_dir, pruned, Quantizer, quant_opts, measure, on_decision)
        record |= {"key": key, "model_dir": str(model_dir), "prune_key": pruned.key, "inputs": inputs,
                   "wall_time_s": round(time.perf_counter() - start, 1)}
        (folder / RECORD_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n",
                                          encoding="utf-8")
        return {"artifact": record["artifact"], "runtime": record["runtime"],
                "before": record["before_headline"], "after": record["after_headline"],
                "outcomes": {d["step"]: d["outcome"] for d in record["decisions"]}}

    _, reused = ctx.store.get_or_build_stage(key, "compress", build)
    path = ctx.store.local_path(ctx.store.stage_path(key))
    record = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
    result = CompressRecord(
        key=key, path=path, decisions=[GuardDecision.from_dict(d) for d in record["decisions"]],
        before=Measurement.from_dict(record["before"]), after=Measurement.from_dict(record["after"]),
        artifact=inside(path, record["artifact"], source=f"{path}/{RECORD_FILE}", key="artifact"),
        runtime=record["runtime"], agreement=record.get("agreement"),
        reused=reused, record=record, prune_key=pruned.key, prune_reused=pruned.reused)
    log.info("compress %s %s: %s; test accuracy %.4f -> %.4f", key[:12], "reused" if reused else "built",
             ", ".join(f"{s['step']} {s['outcome']}" for s in record["steps"]) or "nothing",
             result.before.accuracy, result.after.accuracy)
    ctx.pm.hook.alambic_after_candidate_measured(context=ctx, record=result.to_dict())
    return result


def _quantize_and_measure(ctx: Any, folder: Path, model_dir: Path, pruned: PruneRecord, Quantizer: Any,
                          quant_opts: Any, measure: MeasureSettings, on_decision: Any) -> dict[str, Any]:
    """The pruned model copied in, quantized under the guard, both ends measured; the record."""
    from alambic.train.loop import evaluate

    guard = ctx.config.guard
    shutil.copytree(pruned.model_dir, folder / MODEL_DIR)  # the stage ships whole: export reads it alone
    model, _, tokenized, _, _ = _load_inputs(ctx, folder / MODEL_DIR)
    scores = evaluate(model, tokenized["validation"])  # in the pruned model's own vocabulary
    student = pruned.record.get("validation_accuracy", {}).get("before", scores["accuracy"])
    decisions = [GuardDecision.from_dict(d) for d in pruned.record["decisions"]]
    summary = list(pruned.record["steps"])
    runtime, artifact, quant_report, agreement, quantized = "pytorch", MODEL_DIR, None, None, None
    if Quantizer is not None:
        source = QuantSource(model=model)
        context = QuantContext(work_dir=folder / QUANT_DIR, calibration=tokenized["train"],  # never judged rows
                               max_length=ctx.config.tokenizer.max_length)
        quantized, made, kept_scores = _quantize(source, Quantizer, quant_opts, context, tokenized["validation"],
                                                 scores["accuracy"], student, guard, measure.threads, on_decision)
        decisions += made
        summary.append({"step": f"quant:{Quantizer.id}", "outcome": final_outcome(made)})
        if quantized is not None:
            scores = kept_scores
            runtime = quantized.runtime
            shipped = _onnx_file(quantized) if runtime == "onnxruntime" else quantized.files[0]
            artifact = relative_path(shipped, folder)
            quant_report = {k: relative_path(v, folder) if k == "source" else v for k, v in quantized.report.items()}
            quant_report["files"] = [relative_path(f, folder) for f in quantized.files]
            if runtime == "onnxruntime" and source.onnx is not None:  # None: the quantizer exported itself
                agreement = _agreement(Path(source.onnx), _onnx_file(quantized), tokenized["test"], measure.threads)

    before, after = _measure(folder, model_dir, lambda: measure_input(ctx, model_dir, measure), tokenized["test"],
                             runtime=runtime, artifact=folder / artifact, quantized=quantized, measure=measure)
    return {
        "steps": summary, "decisions": [d.to_dict() for d in decisions], "pruning": pruned.record["pruning"],
        "quantization": quant_report, "guard": guard.model_dump(),
        # the shipped artifact on validation, in its runtime: what the search's choices are made on
        "validation": {k: scores[k] for k in ("accuracy", "macro_f1", "examples")},
        "validation_accuracy": {"before": student, "after": scores["accuracy"]},
        "runtime": runtime, "artifact": artifact,
        "before": before.to_dict(), "after": after.to_dict(),
        "before_headline": before.headline(), "after_headline": after.headline(),
        "agreement": agreement,
    }


def _quantize(source: Any, Quantizer: Any, opts: Any, context: QuantContext, validation: Any, accuracy: float,
              student: float, guard: Any, threads: int, on_decision: Any,
              ) -> tuple[Any, list[GuardDecision], dict[str, Any]]:
    """The quantization step under the guard: no half strength, so kept or reverted. Calibrated on
    train rows (``context``), judged on validation; returns the result, the decisions and its
    validation scores."""
    scored: dict[str, Any] = {}

    def apply(o: Any) -> Any:
        return Quantizer.apply(source, o, context)  # exports source.onnx into work_dir once

    def score(result: Any) -> float:
        scored.update(artifact_scores(result, validation, threads))
        return scored["accuracy"]

    result, made = guarded_step(apply, score, opts, half=lambda o: None, accuracy_before=accuracy,
                                max_drop=guard.max_drop, retries=guard.retries, name=f"quant:{Quantizer.id}",
                                plugin=Quantizer.id, on_decision=on_decision, start_accuracy=student,
                                max_total_drop=guard.total_budget)
    if result is None:
        shutil.rmtree(context.work_dir, ignore_errors=True)  # a reverted quantization ships nothing
    return result, made, scored


def artifact_scores(quantized: Any, split: Any, threads: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and row count of a quantizer's result on ``split``, in its runtime (for a
    runtime that cannot run here, its module holding the shipped weights: ``Quantized.model``)."""
    if quantized.runtime == "onnxruntime":
        return onnx_evaluate(ort_session(_onnx_file(quantized), threads), split)
    from alambic.train.loop import evaluate

    return evaluate(quantized.model, split)


def _onnx_file(quantized: Any) -> Path:
    found = [f for f in quantized.files if Path(f).suffix == ".onnx"]
    if not found:
        raise AlambicError(f"quantizer '{quantized.report.get('quantizer')}' says onnxruntime but wrote no .onnx file")
    return Path(found[0])


def relative_path(path: Any, folder: Path) -> Any:
    """A path inside the stage folder, relative to it (the stage is renamed, maybe downloaded)."""
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except (TypeError, ValueError):
        return path


def _agreement(source: Path, quantized: Path, test: Any, threads: int) -> dict[str, Any]:
    """Argmax agreement of the quantized graph with its fp32 ONNX source on the whole test split."""
    found = compare_logits(source, quantized, test, max_examples=len(test), threads=threads)
    found |= {"reference": source.name, "split": "test", "threshold": MIN_AGREEMENT,
              "ok": found["argmax_agreement"] >= MIN_AGREEMENT}
    if not found["ok"]:
        log.warning("the quantized graph agrees with its fp32 source on %.2f%% of the test rows (< %.0f%%)",
                    100 * found["argmax_agreement"], 100 * MIN_AGREEMENT)
    return found


def measure_input(ctx: Any, model_dir: Path, measure: MeasureSettings) -> Measurement:
    """The input folder measured in PyTorch on the test split, as a stage of its own (keyed by the
    folder's content, the data and the settings): candidates sharing a student measure it once."""
    key = stable_hash({"stage": "measure", "model": model_digest(model_dir), "data": ctx.prepared.tokenized_key,
                       "measure": _timing(measure)})[:32]

    def build(folder: Path) -> dict[str, Any]:
        _, _, tokenized, _, _ = _load_inputs(ctx, model_dir)
        common = {"runs": measure.runs, "warmup": measure.warmup, "memory": measure.memory}
        with tempfile.TemporaryDirectory(prefix="alambic-vocab-") as tmp:
            vocab = vocab_files(model_dir)
            if not vocab:  # the run's tokenizer: its vocabulary ships with the model too
                ctx.prepared.tokenizer.save_pretrained(tmp)
                vocab = vocab_files(tmp)
            found = measure_pytorch(model_dir, tokenized["test"], measure.lengths, measure.threads,
                                    tokenizer_files=vocab, **common)
        found.artifact = str(model_dir)
        (folder / "measurement.json").write_text(json.dumps(found.to_dict(), indent=2) + "\n", encoding="utf-8")
        return {"headline": found.headline()}

    ctx.store.get_or_build_stage(key, "measure", build)
    path = ctx.store.local_path(ctx.store.stage_path(key))
    return Measurement.from_dict(json.loads((path / "measurement.json").read_text(encoding="utf-8")))


def _measure(folder: Path, model_dir: Path, test_before: Any, test_after: Any, *, runtime: str, artifact: Path,
             quantized: Any, measure: MeasureSettings) -> tuple[Measurement, Measurement]:
    """Before (``test_before()``): the input folder in PyTorch. After: the artifact in its runtime.
    Both on the test split."""
    common = {"runs": measure.runs, "warmup": measure.warmup, "memory": measure.memory}
    before = test_before()  # memoized: every candidate of one student shares its "before"
    model_path = folder / MODEL_DIR
    if runtime in UNTIMED:  # size and accuracy only: never a latency measured in another runtime
        after = measure_untimed(runtime, [artifact, *vocab_files(model_path)], quantized.model, test_after)
    elif runtime == "onnxruntime":
        after = measure_onnx(artifact, test_after, measure.lengths, measure.threads,
                             tokenizer_files=vocab_files(model_path), vocab_size=config_vocab_size(model_path), **common)
    elif quantized is not None:
        after = measure_pytorch(model_path, test_after, measure.lengths, measure.threads, weights=artifact,
                                model=quantized.model, **common)
    else:
        after = measure_pytorch(model_path, test_after, measure.lengths, measure.threads, **common)
    after.artifact = relative_path(artifact, folder)
    return before, after


__all__ = ["MIN_AGREEMENT", "compress", "prune", "relative_path"]
