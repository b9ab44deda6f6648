"""Ray Train, the driver side: start (or join) Ray, run a per-worker function in a TorchTrainer.

The per-worker functions live beside what they train (``teacher.teacher_worker``,
``distill.distill_worker``); this module only knows how to launch one and collect its result
(STYLE item 8: the per-worker function and the driver function kept apart).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alambic.config import RayConfig
from alambic.errors import AlambicError

log = logging.getLogger(__name__)


def ensure_ray(address: str | None, quiet: bool = False) -> None:
    """Join the cluster at ``address``, or start a local Ray in-process when there is none."""
    import ray

    if ray.is_initialized():
        return
    # Ray's own usage reporting would try to reach the network; alambic runs offline.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    kwargs: dict[str, Any] = {
        "log_to_driver": not quiet, "logging_level": logging.WARNING,
        "runtime_env": {"worker_process_setup_hook": "alambic.train.distributed.quiet_ray_loggers"},
    }
    if address is None:
        kwargs |= {"include_dashboard": False, "num_cpus": os.cpu_count()}
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise AlambicError(f"ray.address: could not connect to the Ray cluster at {address!r}: {exc}") from None


#: Ray loggers whose messages are noise for alambic's users, silenced in every Ray worker process.
NOISY_RAY_LOGGERS = (
    # without the dashboard, its state API is absent and this cleaner warns every few seconds
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    # transformers imports torchao when it is installed: its CUDA-only kernels fail to load on a
    # CPU machine, and its enum registration warns about a torch.compile deprecation; neither matters
    "torchao",
    "torch.utils._pytree",
)


def quiet_ray_loggers() -> None:
    """Ray's `worker_process_setup_hook`: runs at the start of every worker process."""
    for name in NOISY_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def cpus_per_worker(ray_config: RayConfig) -> float:
    """Ray gives a worker's torch as many threads as it has CPUs: on a local Ray, share them all."""
    if ray_config.cpus_per_worker != "auto":
        return ray_config.cpus_per_worker
    if ray_config.address is None:
        return max(1, (os.cpu_count() or 1) // ray_config.workers)
    return 1


@dataclass(frozen=True)
class TrainRun:
    """What came back from a training run: the best epoch's metrics and its checkpoint folder."""

    metrics: dict[str, Any]
    checkpoint: Path | None
    scratch: Path | None = None  # the run's own folder: checkpoints, resume state, Ray's records

    def discard(self) -> None:
        """Delete the run's scratch folder once its result is safe in the store.

        Until then it stays: a retried or re-run training resumes from its last checkpoint.
        """
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def run_trainer(worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, name: str,
                storage_path: Path, ray_config: RayConfig, quiet: bool = False) -> TrainRun:
    """Run ``worker`` on ``ray_config.workers`` Ray Train workers (DDP: NCCL on GPUs, gloo on CPU)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    ensure_ray(ray_config.address, quiet=quiet)
    gpus = ray_config.gpus_per_worker
    use_gpu = cluster_has_gpus() if gpus == "auto" else gpus > 0
    resources = {"CPU": cpus_per_worker(ray_config)}
    if use_gpu:
        resources["GPU"] = 1 if gpus == "auto" else gpus
    trainer = TorchTrainer(
        worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=ray_config.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            # every checkpoint holds the best weights so far and the state to resume from after
            # its epoch (report_epoch): the last one is all a retry or the driver needs
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=ray_config.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:  # raised once FailureConfig's restarts are used up
        raise AlambicError(f"training run '{name}' failed: {exc}") from exc
    if result.error is not None:
        raise AlambicError(f"training run '{name}' failed: {result.error}") from result.error
    checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else None
    best = checkpoint / "metrics.json" if checkpoint is not None else None
    # the best epoch's metrics, as a local run gives them; Ray's own are the last epoch's
    metrics = json.loads(best.read_text()) if best is not None and best.is_file() else dict(result.metrics or {})
    return TrainRun(metrics=metrics, checkpoint=checkpoint, scratch=storage_path / name)


LOCAL_CHECKPOINT_KEY = "_local_checkpoint_dir"


def launch(worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, name: str,
           scratch: Path, ray_config: RayConfig, local: bool = False, quiet: bool = False) -> TrainRun:
    """Run a per-worker function on Ray Train, or (``local``) in this process."""
    if local:
        from alambic.train.loop import progress_bar

        with progress_bar(name, enabled=not quiet) as progress:  # Ray Train reports its own progress
            return run_local(worker, {**loop_config, "progress": progress}, scratch / "local" / name)
    return run_trainer(worker, loop_config, name=name, storage_path=scratch / "ray",
                       ray_config=ray_config, quiet=quiet)


def run_local(worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any],
              checkpoint_dir: Path) -> TrainRun:
    """Run a per-worker function in this process (world size 1): notebooks, tests, debugging."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    worker({**loop_config, LOCAL_CHECKPOINT_KEY: checkpoint_dir})
    metrics_file = checkpoint_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return TrainRun(metrics=metrics, checkpoint=checkpoint_dir if metrics_file.is_file() else None,
                    scratch=checkpoint_dir)


@dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    in_ray: bool
    local_checkpoint_dir: Path | None = None

    @property
    def device(self) -> Any:
        import torch

        if self.in_ray:
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def worker_context(loop_config: dict[str, Any]) -> WorkerContext:
    """Rank and world size inside a Ray Train worker; (0, 1) in a plain process (run_local)."""
    local = loop_config.get(LOCAL_CHECKPOINT_KEY)
    if local is not None:
        return WorkerContext(0, 1, False, Path(local))
    import ray.train

    context = ray.train.get_context()
    return WorkerContext(context.get_world_rank(), context.get_world_size(), True)


def prepare_model(model: Any, context: WorkerContext) -> Any:
    """Move to the worker's device; under Ray with several workers, wrap in DDP."""
    if context.in_ray:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)
    return model.to(context.device)


#: where a checkpoint keeps the state a retried worker resumes from (beside the best weights)
RESUME_STATE = "resume/training_state.pt"


def report_epoch(model: Any, metrics: dict[str, Any], is_best: bool, context: WorkerContext,
                 training_state: Callable[[], dict[str, Any]] | None = None) -> None:
    """Report an epoch's metrics to Ray, with a checkpoint from rank 0 (every rank must report).

    A checkpoint is a Hugging Face folder of the best weights so far with their ``metrics.json``,
    and, given ``training_state`` (a thunk from ``training.fit``), the state to resume from after
    this epoch; then every epoch is checkpointed. Without it, only a best epoch is.
    """
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    writes = context.rank == 0 and (is_best or training_state is not None)
    state = training_state() if writes and training_state is not None else None
    if not context.in_ray:
        if writes and context.local_checkpoint_dir is not None:
            write_checkpoint(context.local_checkpoint_dir, model, metrics, is_best, state)
        return
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        if writes:
            write_checkpoint(Path(folder), model, metrics, is_best, state)
        ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(folder) if writes else None)


def write_checkpoint(folder: Path, model: Any, metrics: dict[str, Any], is_best: bool,
                     state: dict[str, Any] | None) -> None:
    """The best weights (safetensors) and metrics into ``folder``; then the resume state, atomically."""
    import torch

    from alambic.train.loop import unwrap

    if is_best or state is None:
        unwrap(model).save_pretrained(folder, safe_serialization=True)
        (folder / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2))
    elif not (folder / "metrics.json").is_file():  # a fresh Ray folder: write the best epoch again
        unwrap(model).save_pretrained(folder, state_dict=state["best_state"], safe_serialization=True)
        (folder / "metrics.json").write_text(json.dumps(state["best_metrics"], ensure_ascii=False, indent=2))
    if state is not None:
        target = folder / RESUME_STATE
        target.parent.mkdir(exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        torch.save(state, partial)
        os.replace(partial, target)  # a worker killed mid-save leaves the previous state whole


def resume_state(context: WorkerContext) -> dict[str, Any] | None:
    """The training state of the last checkpoint this run reported, when it is a retry (else None).

    Under Ray that is the checkpoint Ray hands a restarted worker; in a plain process, what an
    earlier attempt of the same run left in its checkpoint folder. Read with
    ``torch.load(weights_only=True)``: tensors and plain values only, never pickled objects.
    """
    if not context.in_ray:
        folder = context.local_checkpoint_dir
        return _read_state(folder / RESUME_STATE) if folder is not None else None
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return _read_state(Path(folder) / RESUME_STATE)


def _read_state(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError("not a training state")
    except Exception as exc:  # noqa: BLE001 - any unreadable state means: start over, and say so
        log.warning("cannot read the training state %s (%s: %s): training starts from epoch 1",
                    path, type(exc).__name__, exc)
        return None
    log.warning("resuming from %s: epoch %d of this training was done before it stopped", path, state["epoch"] + 1)
    return state
