"""Intel Neural Compressor 2.6's accuracy-driven post-training quantization of an fp32 ONNX graph
(neural-compressor venv), with its ONNX Runtime backend.

``quantization.fit`` with ``PostTrainingQuantConfig(approach, accuracy_criterion=absolute loss,
tuning_criterion=TuningCriterion(max_trials, timeout))``, calibrated on train rows (a seeded random
order, ``calib_batch_size`` rows a batch), judged by ``eval_func``: accuracy on the validation split,
in an ONNX Runtime session with ORT's defaults, as INC's own evaluation runs a graph.

inputs: {"fp32", "train", "validation", "pad_id", "out", "threads", "approach", "tolerable_loss",
         "max_trials", "timeout", "calib_batch_size", "seed"}
result: {"graph" (None when no configuration met the criterion), "seconds", "trials", "evaluations",
         "baseline", "modes": {"op type: mode": count}, "ops", "settings"}
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from exchange import Split, finish, io


class Calibration:
    """INC's calibration loader: ``(inputs, labels)`` of train rows, padded per batch, in a seeded
    random order (a train file sorted by class would otherwise calibrate on one class)."""

    def __init__(self, split: Split, batch_size: int, pad_id: int, seed: int):
        self.split, self.batch_size, self.pad_id, self.seed = split, batch_size, pad_id, seed

    def __iter__(self):
        for batch in self.split.batches(self.batch_size, shuffle=True, seed=self.seed, pad_id=self.pad_id):
            labels = batch.pop("labels")
            yield batch, labels


class Validation:
    """``eval_func``: the validation accuracy of the model INC hands over; every call recorded."""

    def __init__(self, split: Split, pad_id: int, threads: int):
        self.split, self.pad_id, self.threads = split, pad_id, threads
        self.calls: list[dict[str, float]] = []

    def __call__(self, model: Any) -> float:
        import onnxruntime as ort

        start = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        source = model if isinstance(model, str) else model.SerializeToString()
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        right = 0
        for batch in self.split.batches(64, pad_id=self.pad_id):
            logits = session.run(None, {n: batch[n] for n in names})[0]
            right += int((np.argmax(logits, -1) == batch["labels"]).sum())
        accuracy = right / len(self.split)
        self.calls.append({"accuracy": accuracy, "seconds": round(time.perf_counter() - start, 2)})
        print(f"[inc_tune] evaluation {len(self.calls)}: validation accuracy {accuracy:.4f}", flush=True)
        return accuracy


def modes(q_model: Any) -> dict[str, int]:
    """How many ops of each type INC left in each mode (static, dynamic, fp32 fallback)."""
    config = getattr(q_model, "q_config", None) or {}
    counts: Counter[str] = Counter()
    for (_, op_type), op in (config.get("op") or {}).items():
        activation = op.get("activation", {}) if isinstance(op, dict) else {}
        mode = "fp32" if activation.get("dtype") == "fp32" else activation.get("quant_mode", "?")
        counts[f"{op_type}: {mode}"] += 1
    return dict(sorted(counts.items()))


def main() -> None:
    from neural_compressor import quantization
    from neural_compressor.config import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion

    inputs, result_path = io()
    out = Path(inputs["out"])
    out.mkdir(parents=True, exist_ok=True)
    calibration = Calibration(Split(inputs["train"]), inputs["calib_batch_size"], inputs["pad_id"], inputs["seed"])
    validation = Validation(Split(inputs["validation"]), inputs["pad_id"], inputs["threads"])
    conf = PostTrainingQuantConfig(
        approach=inputs["approach"],
        accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=inputs["tolerable_loss"]),
        tuning_criterion=TuningCriterion(max_trials=inputs["max_trials"], timeout=inputs["timeout"]))
    start = time.perf_counter()
    q_model = quantization.fit(model=inputs["fp32"], conf=conf, calib_dataloader=calibration,
                               eval_func=validation)
    seconds = time.perf_counter() - start
    graph = None
    if q_model is not None:
        graph = out / "model.inc.onnx"
        q_model.save(str(graph))
    import onnx

    ops = dict(Counter(n.op_type for n in onnx.load(str(graph)).graph.node)) if graph else {}
    finish({"graph": str(graph) if graph else None, "seconds": round(seconds, 1),
            "trials": max(0, len(validation.calls) - 1), "evaluations": validation.calls,
            "baseline": validation.calls[0]["accuracy"] if validation.calls else None,
            "modes": modes(q_model) if q_model is not None else {}, "ops": ops,
            "settings": {k: inputs[k] for k in ("approach", "tolerable_loss", "max_trials", "timeout",
                                                "calib_batch_size", "seed")}}, result_path)


if __name__ == "__main__":
    main()
