"""Ray Train with 2 CPU workers (gloo) against the same training in one process.

What DDP guarantees here: every rank builds the same global batches from the same seed and takes
an equal slice, and DDP averages the gradients, so with dropout off one step on 2 workers applies
the gradient of exactly the global batch one process sees. The trained weights must agree to float
tolerance (summation order differs).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alambic.config import RayConfig
from alambic.train.distributed import RESUME_STATE, launch, prepare_model, report_epoch, worker_context
from alambic.train.loop import TrainSettings, fit, seed_everything
from tests.core.train.test_loop import token_dataset


def tiny_worker(loop_config):
    from transformers import AutoModelForSequenceClassification, BertConfig

    context = worker_context(loop_config)
    seed_everything(0)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        num_labels=2)
    model = prepare_model(AutoModelForSequenceClassification.from_config(config), context)
    fit(model, loop_config["train"], loop_config["validation"], loop_config["settings"],
        rank=context.rank, world_size=context.world_size,
        on_epoch=lambda epoch, metrics, best, state: report_epoch(model, metrics, best, context, state))


def classifier_weights(folder) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))["classifier.weight"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    loop_config = {"train": token_dataset(128), "validation": token_dataset(32, seed=1),
                   "settings": TrainSettings(epochs=2, learning_rate=5e-3, batch_size=16, warmup_ratio=0.0)}
    one = launch(tiny_worker, loop_config, name="one", scratch=scratch, ray_config=RayConfig(), local=True)
    two = launch(tiny_worker, loop_config, name="two", scratch=scratch,
                 ray_config=RayConfig(workers=2, gpus_per_worker=0), quiet=True)
    yield one, two
    import ray

    ray.shutdown()


def test_two_ray_workers_match_one_process(runs):
    one, two = runs
    assert two.checkpoint is not None and one.checkpoint is not None
    np.testing.assert_allclose(classifier_weights(two.checkpoint), classifier_weights(one.checkpoint),
                               rtol=1e-4, atol=1e-5)


def test_metrics_are_reported_per_epoch_and_evaluation_is_shared(runs):
    one, two = runs
    assert two.metrics["epoch"] == one.metrics["epoch"]
    # each worker scores half of the validation split; the confusion counts are summed
    assert two.metrics["examples"] == one.metrics["examples"] == 32
    assert two.metrics["accuracy"] == pytest.approx(one.metrics["accuracy"])


def test_worker_context_outside_ray_is_local(tmp_path):
    context = worker_context({"_local_checkpoint_dir": tmp_path})
    assert (context.rank, context.world_size, context.in_ray) == (0, 1, False)
    assert context.device == torch.device("cpu")


def failing_worker(loop_config):
    raise ValueError("this worker always fails")


def test_a_failing_worker_is_a_clear_error(runs, tmp_path):
    from alambic.errors import AlambicError

    with pytest.raises(AlambicError, match="(?s)training run .broken. failed.*this worker always fails"):
        launch(failing_worker, {}, name="broken", scratch=tmp_path,
               ray_config=RayConfig(workers=1, max_failures=0, gpus_per_worker=0), quiet=True)


# --- a training stopped mid-way resumes from its last checkpoint ---------------------------------


STEPS_PER_EPOCH = 4  # token_dataset(64) in global batches of 16


def interrupting_loss(how: str, calls_log: Path, marker: Path, snapshot: Path | None = None) -> type:
    """A distillation-loss plugin that adds nothing, logs each training step, and interrupts the
    first attempt at the first step of epoch 2: ``how`` is "raise" or "kill" (SIGKILL, under Ray).

    Built inside a function, so that Ray's cloudpickle ships the class by value to its workers.
    """
    from alambic.train.losses import DistillLoss

    class Interrupting(DistillLoss):
        """Adds 0 to the loss; stops its own training once."""

        id = "interrupting"

        def forward(self, student_out, teacher_out, batch):
            first_attempt = not marker.exists()
            with calls_log.open("a") as log:
                log.write("first\n" if first_attempt else "retry\n")
            self.calls = getattr(self, "calls", 0) + 1
            if first_attempt and self.calls == STEPS_PER_EPOCH + 1:
                marker.write_text(how)
                if how == "raise":
                    raise RuntimeError("interrupted at epoch 2")
                deadline = time.monotonic() + 120  # until Ray's controller has epoch 1's checkpoint
                while time.monotonic() < deadline and '"epoch":0' not in (
                        snapshot.read_text().replace(" ", "") if snapshot.exists() else ""):
                    time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGKILL)
            return student_out.logits.sum() * 0.0

    return Interrupting


def distill_loop_config(tmp_path: Path, interrupting: type) -> dict:
    from transformers import BertConfig

    from alambic.config import DistillConfig
    from alambic.plugins.losses import Kd
    from alambic.plugins.students import TinyBert4L

    teacher = tmp_path / "teacher"
    BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, num_labels=2).save_pretrained(teacher)
    return {
        "student": {"student_class": TinyBert4L, "label_names": ["无", "有"], "vocab_size": 40,
                    "sizes": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}},
        "settings": DistillConfig(epochs=3, batch_size=16, learning_rate=3e-3), "loss_classes": [Kd, interrupting],
        "teacher_path": str(teacher), "teacher_logits": np.zeros((64, 2), dtype=np.float32), "donor_path": None,
        "train": token_dataset(64), "validation": token_dataset(32, seed=1),
    }


def test_a_local_distillation_that_failed_mid_way_resumes_after_its_last_epoch(tmp_path: Path) -> None:
    from alambic.train.distill import distill_worker

    calls, marker = tmp_path / "calls.txt", tmp_path / "interrupted"
    loop_config = distill_loop_config(tmp_path, interrupting_loss("raise", calls, marker))
    with pytest.raises(RuntimeError, match="interrupted at epoch 2"):
        launch(distill_worker, loop_config, name="distill", scratch=tmp_path, ray_config=RayConfig(), local=True)
    run = launch(distill_worker, loop_config, name="distill", scratch=tmp_path, ray_config=RayConfig(), local=True)
    lines = calls.read_text().split()
    # the retry trains epochs 2 and 3 only: epoch 1's state came from the checkpoint folder
    assert lines.count("first") == STEPS_PER_EPOCH + 1 and lines.count("retry") == 2 * STEPS_PER_EPOCH
    state = torch.load(run.checkpoint / RESUME_STATE, weights_only=True)
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [0, 1, 2]
    run.discard()
    assert not run.scratch.exists()


@pytest.mark.timeout(900)  # ~1 min on a quiet machine; Ray workers are niced, so minutes under load
def test_a_ray_worker_killed_mid_distillation_is_retried_from_its_last_checkpoint(tmp_path: Path) -> None:
    import json

    import ray

    from alambic.train.distill import distill_worker

    calls, marker = tmp_path / "calls.txt", tmp_path / "killed"
    snapshot = tmp_path / "ray" / "killed-distill" / "checkpoint_manager_snapshot.json"
    loop_config = distill_loop_config(tmp_path, interrupting_loss("kill", calls, marker, snapshot))
    try:
        run = launch(distill_worker, loop_config, name="killed-distill", scratch=tmp_path, quiet=True,
                     ray_config=RayConfig(workers=1, max_failures=1, cpus_per_worker=1, gpus_per_worker=0))
    finally:
        ray.shutdown()
    assert marker.read_text() == "kill"  # the first attempt did die, by SIGKILL
    lines = calls.read_text().split()
    # the restarted worker read epoch 1's checkpoint from Ray and trained epochs 2 and 3 only
    assert lines.count("first") == STEPS_PER_EPOCH + 1 and lines.count("retry") == 2 * STEPS_PER_EPOCH
    assert run.metrics["epoch"] == 2 and run.checkpoint is not None
    best = json.loads((run.checkpoint / "metrics.json").read_text())["epoch"]
    assert torch.load(run.checkpoint / RESUME_STATE, weights_only=True)["best_epoch"] == best
