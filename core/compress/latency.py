"""Batch-1 latency in PyTorch and ONNX Runtime (ExecuTorch: alambic.compress.executorch): the timing
loop, seeded inputs that are the same in every process, torch's threads pinned, and a measured model
loaded (with quantized weights)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from alambic.compress.onnx_export import ort_logits
from alambic.errors import AlambicError
from alambic.train.models import load_pretrained

if TYPE_CHECKING:
    from torch import Tensor

#: the runtimes an artifact runs in: a quantizer names its own (``Quantizer.runtime``), each is measured here
#: (executorch: a .pte on XNNPACK's CPU kernels, alambic.compress.executorch; needs alambic[phone])
RUNTIMES = ("pytorch", "onnxruntime", "executorch")
#: runtimes a search also times each candidate in, from its model folder (``search.measure.runtimes``)
EXTRA_RUNTIMES = ("executorch",)
#: runtimes that cannot run on this machine, and what is measured of their artifacts instead:
#: size and accuracy, never a latency (and never another runtime's latency in its place)
UNTIMED = {
    "coreml": "not measured on this machine: Core ML runs only on Apple devices (size: the .mlpackage; "
              "accuracy: its weights read back, at fp16 compute)",
}


def timed(run: Callable[[], Any], runs: int = 50, warmup: int = 10) -> dict[str, float]:
    """p50/p90 milliseconds of ``run()`` over ``runs`` calls, after ``warmup`` untimed ones."""
    import numpy as np

    if runs < 1 or warmup < 0:
        raise AlambicError(f"latency needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def fixed_input(vocab_size: int, length: int) -> dict[str, Tensor]:
    """A batch-1 input of ``length`` tokens, the same for every model and process (seeded ids)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, max(2, vocab_size), (1, length), generator=gen)  # (1, T); 0 is padding
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def latency_ms(model: Any, length: int = 32, runs: int = 50, warmup: int = 10) -> dict[str, float]:
    """p50/p90 milliseconds of one PyTorch forward pass at batch 1, current torch threads."""
    import torch

    batch = fixed_input(model.get_input_embeddings().num_embeddings, length)
    model.eval()
    with torch.inference_mode():
        return timed(lambda: model(**batch), runs, warmup)


def onnx_input(vocab_size: int, length: int) -> dict[str, Any]:
    """:func:`fixed_input` for ONNX Runtime: numpy int64, seeded, without importing torch."""
    import numpy as np

    ids = np.random.default_rng(0).integers(1, max(2, vocab_size), (1, length), dtype=np.int64)  # (1, T)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def onnx_latency_ms(session: Any, vocab_size: int, length: int = 32, runs: int = 50,
                    warmup: int = 10) -> dict[str, float]:
    """p50/p90 milliseconds of one ONNX Runtime run at batch 1 (the session's threads)."""
    batch = onnx_input(vocab_size, length)
    return timed(lambda: ort_logits(session, batch), runs, warmup)


def load_model(folder: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None) -> Any:
    """A save_pretrained folder's classifier in eval mode, with a quantized state dict (torchao
    int8) loaded over it when ``weights`` is given."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = load_pretrained(folder, AutoModelForSequenceClassification)
    if weights is not None:
        import torchao.quantization  # noqa: F401 - registers the int8 tensor classes for loading

        model.load_state_dict(torch.load(weights, weights_only=True, mmap=True), assign=True)
    return model.eval()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads pinned to ``threads`` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
