"""Ray Train with 2 CPU workers (gloo) against the same training in one process.

What DDP guarantees here: every rank builds the same global batches from the same seed and takes
an equal slice, and DDP averages the gradients, so with dropout off one step on 2 workers applies
the gradient of exactly the global batch one process sees. The trained weights must agree to float
tolerance (summation order differs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alambic.config import RayConfig
from alambic.distributed import launch, prepare_model, report_epoch, worker_context
from alambic.training import TrainSettings, fit, seed_everything
from tests.core.test_training import token_dataset


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
        on_epoch=lambda epoch, metrics, best: report_epoch(model, metrics, best, context))


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
