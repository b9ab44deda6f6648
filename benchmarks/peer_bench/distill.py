"""Distillation: TextBrewer's GeneralDistiller against ``alambic distill``, the same student start,
batches, loss, optimizer and schedule: test accuracy and wall time per epoch.

alambic reads the teacher's logits from its cache (one teacher pass over the train split per
teacher and data, shared by every student and epoch); GeneralDistiller runs the teacher on every
batch. The one-time pass is timed here too and reported amortized over the epochs, so the ratio is
shown both ways.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from peer_bench import venvs
from peer_bench.common import STUDENT, Setup, save, split_file
from peer_bench.side.exchange import Split, accuracy

GOAL_SPEEDUP = 3.0  # the goal: alambic at least 3x faster per epoch ...
GOAL_ACCURACY = 0.003  # ... at equal accuracy, within 0.3 point


def settings_for(setup: Setup, epochs: int) -> tuple[dict[str, Any], Any, Any]:
    """The overrides given to ``alambic distill`` and the settings they give (DistillConfig, and
    the TrainSettings fit() runs with: grad clip, eval batch size)."""
    from alambic.train.distill import distill_settings, train_settings

    overrides: dict[str, Any] = {"epochs": epochs}
    if list(setup.ctx.config.distill.losses) != ["kd"]:
        overrides["losses"] = ["kd"]  # logits only, the loss GeneralDistiller is set to match
    settings = distill_settings(setup.ctx.config.distill, overrides)
    return overrides, settings, train_settings(settings)


def initial_student(setup: Setup, seed: int, folder: Path) -> Path:
    """The student alambic's distill starts from, built the same way (student_init, build_student
    after seeding), saved for TextBrewer, and checked equal to the saved folder read back."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from alambic.train.distill import build_student, student_init, student_sizes
    from alambic.train.loop import seed_everything

    ctx = setup.ctx
    student_class = ctx.registry["students"].get(STUDENT)
    sizes = student_sizes(ctx, STUDENT)
    start = student_init(ctx, student_class, None, setup.teacher, sizes)
    spec = {"student_class": student_class, "label_names": ctx.prepared.label_names,
            "vocab_size": len(start.tokenizer), "sizes": sizes, "init": start}
    seed_everything(seed)
    model = build_student(spec)
    model.save_pretrained(folder, safe_serialization=True)
    back = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).state_dict()
    built = model.state_dict()
    if built.keys() != back.keys() or not all(torch.equal(built[k], back[k]) for k in built):
        raise RuntimeError(f"the student saved in {folder} differs from the one alambic's distill builds")
    return folder


def teacher_pass(setup: Setup) -> float:
    """Seconds of the teacher's pass over the train split, as the logits cache makes it once."""
    from transformers import AutoModelForSequenceClassification

    from alambic.train.loop import predict

    model = AutoModelForSequenceClassification.from_pretrained(setup.teacher.path, use_safetensors=True)
    start = time.perf_counter()
    predict(model, setup.tokenized["train"])
    return time.perf_counter() - start


def alambic_row(setup: Setup, record: Any, teacher_s: float) -> dict[str, Any]:
    """alambic's row: the record's wall time (student build, epochs with validation, checkpoints)
    per epoch, and its test predictions scored like the peer's."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from alambic import __version__
    from alambic.train.loop import predict

    epochs = record.metrics["settings"]["epochs"]
    model = AutoModelForSequenceClassification.from_pretrained(record.path, use_safetensors=True)
    rows, logits = predict(model, setup.tokenized["test"])
    predictions = logits[np.argsort(rows)].argmax(-1)
    per_epoch = record.metrics["wall_time_s"] / epochs
    return {"tool": "alambic", "versions": {"alambic": __version__, "torch": torch.__version__}, "epochs": epochs,
            "reused": record.reused, "key": record.key, "wall_s": record.metrics["wall_time_s"],
            "per_epoch_s": per_epoch, "teacher_pass_s": teacher_s, "amortized_s": per_epoch + teacher_s / epochs,
            "validation": record.metrics["validation"], "record_test": record.metrics["test"],
            **test_scores(setup, predictions)}


def textbrewer_row(setup: Setup, init: Path, settings: Any, train: Any, folder: Path) -> dict[str, Any]:
    """TextBrewer's row, from the side script; ``{"error": ...}`` in it when it failed."""
    weight = settings.loss_weights.get("kd", 1.0)
    inputs = {"student": str(init), "teacher": str(setup.teacher.path), "splits": setup.splits,
              "pad_id": setup.pad_id, "num_labels": setup.num_labels, "threads": setup.threads,
              "epochs": settings.epochs, "batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
              "weight_decay": settings.weight_decay, "warmup_ratio": settings.warmup_ratio,
              "max_grad_norm": train.max_grad_norm, "eval_batch_size": train.eval_batch_size, "seed": settings.seed,
              "temperature": settings.temperature,
              "kd_loss_weight": weight * settings.alpha * settings.temperature ** 2,
              "hard_label_weight": weight * (1 - settings.alpha), "output_dir": str(folder / "checkpoints")}
    result = venvs.run_side("textbrewer", "textbrewer_distill.py", inputs, folder, setup.venvs)
    row = {"tool": "TextBrewer", "versions": venvs.versions("textbrewer", setup.venvs), "epochs": settings.epochs,
           "inputs": inputs}
    if "error" in result:
        return {**row, "error": result["error"]}
    per_epoch = result["seconds"] / settings.epochs
    predictions = np.asarray(result.pop("test_predictions"))
    return {**row, **result, "per_epoch_s": per_epoch, "amortized_s": per_epoch, **test_scores(setup, predictions)}


def test_scores(setup: Setup, predictions: np.ndarray) -> dict[str, Any]:
    """Test accuracy and macro-F1 of predictions in the test split's row order: one scorer for both."""
    return accuracy(predictions, Split(setup.splits["test"]).labels, setup.num_labels)


def version_text(row: dict[str, Any]) -> str:
    """'Tool version (its torch, transformers ...)': the versions the numbers were measured with."""
    versions = dict(row["versions"])
    main = versions.pop(row["tool"].lower(), "?")
    rest = ", ".join(f"{k} {v}" for k, v in versions.items())
    return f"{row['tool']} {main}" + (f" ({rest})" if rest else "")


def table(ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    """The Markdown table: alambic, then TextBrewer (or why it has no numbers)."""
    lines = ["| tool | epochs | test accuracy | macro-F1 | wall s / epoch (training + validation) | one-time teacher "
             "pass s | s / epoch incl. amortized teacher pass | speed-up (per epoch; amortized) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    reused = " — reused from the store: timed when built, not in this run" if ours["reused"] else ""
    tool = version_text(ours) + reused
    speed = (f"{peer['per_epoch_s'] / ours['per_epoch_s']:.1f}x; {peer['per_epoch_s'] / ours['amortized_s']:.1f}x"
             if "error" not in peer else "—")
    lines.append(f"| {tool} | {ours['epochs']} | {ours['accuracy']:.4f} | {ours['macro_f1']:.4f} | "
                 f"{ours['per_epoch_s']:.1f} | {ours['teacher_pass_s']:.1f} (cached once per teacher and data) | "
                 f"{ours['amortized_s']:.1f} | {speed} |")
    if "error" in peer:
        lines.append(f"| {version_text(peer)} | {peer['epochs']} | failed: {peer['error']} | | | | | |")
        return lines
    teacher = peer["teacher_forward_s"] / peer["epochs"]
    lines.append(f"| {version_text(peer)} | {peer['epochs']} | {peer['accuracy']:.4f} | {peer['macro_f1']:.4f} | "
                 f"{peer['per_epoch_s']:.1f} | — (teacher on every batch: {teacher:.1f} s of each epoch) | "
                 f"{peer['amortized_s']:.1f} | 1.0x |")
    return lines


def verdicts(ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    """The goal, judged on the measured numbers: per epoch, then with the teacher pass amortized."""
    goal = f"alambic ≥{GOAL_SPEEDUP:g}x faster per epoch at equal accuracy (within {GOAL_ACCURACY * 100:g} point)"
    if "error" in peer:
        return [f"- Goal: {goal}: not measured (TextBrewer failed)."]
    accuracies = f"accuracy {ours['accuracy']:.4f} vs {peer['accuracy']:.4f}"
    gap = abs(ours["accuracy"] - peer["accuracy"])
    stale = " (alambic's time reused from the store, not measured in this run)" if ours["reused"] else ""
    amortized = (f"with the one-time teacher pass amortized over this one student's {ours['epochs']} epoch(s); "
                 "the cache serves every student")
    ratios = {"per epoch": peer["per_epoch_s"] / ours["per_epoch_s"],
              amortized: peer["per_epoch_s"] / ours["amortized_s"]}
    lines = [f"- Goal ({label}): {goal}: **{'met' if ratio >= GOAL_SPEEDUP and gap <= GOAL_ACCURACY else 'missed'}** "
             f"({ratio:.1f} times; {accuracies}){stale}." for label, ratio in ratios.items()]
    if gap > GOAL_ACCURACY:
        lines.append(f"- Why: the accuracies differ by {gap * 100:.2f} points.")
    if min(ratios.values()) < GOAL_SPEEDUP:
        teacher = peer["teacher_forward_s"] / peer["epochs"]
        lines.append(f"- Why: the teacher's forward pass is {teacher:.1f} s ({teacher / peer['per_epoch_s']:.0%}) of "
                     f"TextBrewer's {peer['per_epoch_s']:.1f} s epoch; the rest ({peer['per_epoch_s'] - teacher:.1f} "
                     f"s: student, optimizer, validation) compares with alambic's {ours['per_epoch_s']:.1f} s, "
                     f"and the cache's one-time pass costs {ours['teacher_pass_s']:.1f} s.")
    return lines


def validation_line(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """The epoch each tool kept (best validation macro-F1): the same batches should pick alike."""
    kept = ours["validation"]
    line = f"- Validation, epoch kept: alambic {kept['accuracy']:.4f} (epoch {kept.get('epoch', 0) + 1})"
    if peer.get("history"):
        best = max(range(len(peer["history"])), key=lambda i: peer["history"][i]["macro_f1"])
        line += f", TextBrewer {peer['history'][best]['accuracy']:.4f} (epoch {best + 1})"
    return line + "."


def describe(settings: Any, train: Any, peer: dict[str, Any], threads: int, rows: int) -> str:
    """The paragraph: what was compared, with the exact settings."""
    t, a = settings.temperature, settings.alpha
    steps = peer.get("steps_per_epoch", "?")
    return (
        f"Student `{STUDENT}` (embeddings, 4 of the teacher's 12 layers, pooler and head), the same initial "
        f"weights for both (built by alambic as its distill does, saved, checked equal when read back), distilled "
        f"{settings.epochs} epoch(s) on the {rows} training headlines in the same shuffled batches of "
        f"{settings.batch_size} ({steps} per epoch, each padded to its longest row, order a numpy permutation seeded "
        f"by (seed {settings.seed}, epoch)); AdamW lr {settings.learning_rate:g}, weight decay "
        f"{settings.weight_decay:g} except biases and LayerNorm, linear warm-up over {settings.warmup_ratio:.0%} of "
        f"the steps then linear decay, gradients clipped at norm {train.max_grad_norm:g} (TextBrewer's "
        f"`max_grad_norm`), validation after every epoch keeping the best by macro-F1 (TextBrewer: its callback), "
        f"{threads} threads. Loss: alambic's α·T²·KL(teacher‖student at T) + (1−α)·CE with T = {t:g}, α = {a:g}. "
        f"TextBrewer's `kd_loss_type='ce'` is the soft cross-entropy at T without T², so `kd_loss_weight` = α·T² = "
        f"{a * t * t:g} and `hard_label_weight` = 1−α = {1 - a:g} (on the student's label cross-entropy, from its "
        f"adaptor): the same loss up to the teacher's entropy, a constant, hence the same gradients; logits only, no "
        f"intermediate matches. alambic reads the teacher's logits from its cache; GeneralDistiller runs the teacher "
        f"on every batch (its `is_caching_logits` is forced off; only BasicDistiller caches). Left as each tool "
        f"ships: alambic flushes denormals to zero and uses PyTorch's fused AdamW; TextBrewer runs as its docs show "
        f"(torch.optim.AdamW's default implementation, no flush-denormal). Wall time per epoch: alambic's record "
        f"`wall_time_s` (building the student, training, validation and a checkpoint each epoch) / epochs; "
        f"TextBrewer's `distiller.train()` (training, its checkpoint and the validation callback each epoch) / "
        f"epochs. "
        f"Test accuracy: each tool's test predictions, scored by the same code.")


def train_subset(setup: Setup, rows: int | None) -> Setup:
    """The setup with its train split cut to ``rows`` headlines (``data.subsample``, alambic's seeded
    sample): both tools then distill on the same fewer rows, from the same teacher; validation and
    test stay whole. None: the setup as it is."""
    from alambic.run import RunContext

    if not rows:
        return setup
    data = setup.ctx.config.data
    config = setup.ctx.config.model_copy(update={"data": data.model_copy(
        update={"subsample": {**data.subsample, "train": rows}})})
    ctx = RunContext.from_config(config, quiet=True)
    tokenized, key = ctx.tokenize(setup.teacher.tokenizer())
    train = split_file(tokenized["train"], setup.work, "train", key)
    return dataclasses.replace(setup, ctx=ctx, tokenized=tokenized, splits={**setup.splits, "train": train})


def run(setup: Setup, args: Any) -> str:
    """Both distillations, the one-time teacher pass, the table and the verdicts; rows to distill.json."""
    from alambic.train.distill import distill

    setup = train_subset(setup, args.distill_train_rows)
    folder = setup.work / "distill"
    folder.mkdir(parents=True, exist_ok=True)
    overrides, settings, train = settings_for(setup, args.epochs)
    init = initial_student(setup, settings.seed, folder / "student-init")
    record = distill(setup.ctx, STUDENT, overrides=overrides, local=True, teacher=setup.teacher)
    ours = alambic_row(setup, record, teacher_pass(setup))
    peer = textbrewer_row(setup, init, settings, train, folder / "textbrewer")
    save([ours, peer, {"settings": dataclasses.asdict(train), "overrides": overrides}], setup.work / "distill.json")
    text = describe(settings, train, peer, setup.threads, len(setup.tokenized["train"]))
    return "\n".join(["### Distillation: TextBrewer GeneralDistiller vs alambic distill", "", text, "",
                      *table(ours, peer), "", validation_line(ours, peer),
                      *verdicts(ours, peer)])
