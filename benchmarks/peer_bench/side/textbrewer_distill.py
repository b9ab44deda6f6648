"""TextBrewer's GeneralDistiller on the split files, set up to optimize exactly alambic's loss
(runs in the textbrewer environment: torch, transformers, textbrewer, numpy; no alambic).

As TextBrewer's README shows a user doing it: the teacher and the student as Hugging Face models,
adaptors that hand over the logits (and the student's cross-entropy on the labels), a
``TrainingConfig``/``DistillationConfig``, ``distiller.train`` with a linear warm-up schedule and a
callback that evaluates on validation after each epoch. The teacher runs on every batch
(GeneralDistiller has no logits cache). Inputs (JSON, from ``peer_bench.distill``): the folders, the
split files and the settings; the result: the timings, validation per epoch, test predictions.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch
from exchange import Split, accuracy, finish, io
from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup


class Batches:
    """The training batches of one epoch per pass, each padded to its own longest row; shuffled
    like alambic's unbucketed batches (a numpy permutation seeded by (seed, epoch)), so both tools
    see the same batches in the same order. TextBrewer needs ``len`` (steps per epoch)."""

    def __init__(self, split: Split, batch_size: int, seed: int, pad_id: int):
        self.split, self.batch_size, self.seed, self.pad_id, self.epoch = split, batch_size, seed, pad_id, 0

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.split))
        self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            yield tensors(self.split.batch(order[start:start + self.batch_size], self.pad_id))


def tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def adaptor_teacher(batch, outputs):
    """The teacher's logits: the only thing distilled (no intermediate matches)."""
    return {"logits": outputs.logits}


def adaptor_student(batch, outputs):
    """The student's logits and its cross-entropy on the labels (weighted by hard_label_weight)."""
    return {"logits": outputs.logits, "losses": outputs.loss}


@torch.inference_mode()
def predict(model: torch.nn.Module, split: Split, batch_size: int, pad_id: int) -> np.ndarray:
    """Class predictions of ``split``, in its row order."""
    model.eval()
    out = []
    for batch in split.batches(batch_size, pad_id=pad_id):
        inputs = {k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}
        out.append(model(**inputs).logits.argmax(-1).numpy())
    return np.concatenate(out)


def optimizer_for(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW with alambic's groups: no weight decay on biases and LayerNorm weights."""
    def no_decay(name: str) -> bool:
        return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
    params = list(model.named_parameters())
    groups = [{"params": [p for n, p in params if not no_decay(n)], "weight_decay": cfg["weight_decay"]},
              {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"])


def teacher_clock(teacher: torch.nn.Module) -> dict[str, float]:
    """Seconds spent in the teacher's forward passes (hooks): the part of TextBrewer's epoch that
    alambic's logits cache does once for every student and epoch."""
    clock = {"seconds": 0.0, "calls": 0}

    def before(module, args):
        clock["start"] = time.perf_counter()

    def after(module, args, output):
        clock["seconds"] += time.perf_counter() - clock["start"]
        clock["calls"] += 1
    teacher.register_forward_pre_hook(before)
    teacher.register_forward_hook(after)
    return clock


def distill(cfg: dict, student: torch.nn.Module, teacher: torch.nn.Module) -> dict:
    """GeneralDistiller, logits KD only, timed from ``train()`` to its end (epochs, callbacks)."""
    train, validation = Split(cfg["splits"]["train"]), Split(cfg["splits"]["validation"])
    batches = Batches(train, cfg["batch_size"], cfg["seed"], cfg["pad_id"])
    updates = len(batches) * cfg["epochs"]
    train_config = TrainingConfig(device="cpu", output_dir=cfg["output_dir"], ckpt_frequency=1,
                                  ckpt_epoch_frequency=1, log_dir=None)
    distill_config = DistillationConfig(temperature=cfg["temperature"], kd_loss_type="ce",
                                        kd_loss_weight=cfg["kd_loss_weight"],
                                        hard_label_weight=cfg["hard_label_weight"], intermediate_matches=[])
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                                 model_S=student, adaptor_T=adaptor_teacher, adaptor_S=adaptor_student)
    clock, history, best = teacher_clock(teacher), [], {"macro_f1": -1.0, "state": None}
    start = time.perf_counter()

    def callback(model, step):
        """Validation after each epoch, keeping the best weights by macro-F1 (as alambic does)."""
        predictions = predict(model, validation, cfg["eval_batch_size"], cfg["pad_id"])
        scores = macro_scores(predictions, validation.labels, cfg["num_labels"])
        if scores["macro_f1"] > best["macro_f1"]:
            best.update(macro_f1=scores["macro_f1"], state=copy.deepcopy(model.state_dict()))
        history.append({"step": step, "end_s": time.perf_counter() - start, "teacher_s": clock["seconds"], **scores})

    torch.manual_seed(cfg["seed"])
    with distiller:
        distiller.train(optimizer_for(student, cfg), batches, num_epochs=cfg["epochs"],
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": int(cfg["warmup_ratio"] * updates),
                                        "num_training_steps": updates},
                        max_grad_norm=cfg["max_grad_norm"], callback=callback)
    seconds = time.perf_counter() - start
    student.load_state_dict(best["state"])
    return {"seconds": seconds, "history": history, "steps_per_epoch": len(batches), "warmup_steps":
            int(cfg["warmup_ratio"] * updates), "teacher_forward_s": clock["seconds"], "teacher_calls": clock["calls"]}


def macro_scores(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Validation accuracy and macro-F1 for choosing the best epoch (the same formula as alambic's)."""
    return {k: v for k, v in accuracy(predictions, labels, num_labels).items() if k != "examples"}


def main() -> None:
    cfg, result_path = io()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(cfg["threads"])
    teacher = AutoModelForSequenceClassification.from_pretrained(cfg["teacher"])
    student = AutoModelForSequenceClassification.from_pretrained(cfg["student"])
    result = distill(cfg, student, teacher)
    test = Split(cfg["splits"]["test"])
    result["test_predictions"] = predict(student, test, cfg["eval_batch_size"], cfg["pad_id"]).tolist()
    result["threads"] = torch.get_num_threads()
    finish(result, result_path)


if __name__ == "__main__":
    main()
