"""Peak memory of an artifact: the peak RSS of a fresh Python process that loads it and runs one
batch-1 inference (``python -m alambic.compress.memory``), and this process's own peak."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import alambic.train.models  # noqa: F401 - loaded before the baseline: its import is not the model's cost
from alambic.compress.executorch import load_pte, pte_logits, quiet
from alambic.compress.latency import RUNTIMES, fixed_input, load_model, onnx_input
from alambic.compress.onnx_export import ort_logits, ort_session
from alambic.errors import AlambicError

_RSS_MARK = "ALAMBIC_RSS "


def peak_rss(path: str | os.PathLike[str], length: int = 32, threads: int | None = None, *,
             runtime: str = "pytorch", vocab_size: int | None = None,
             weights: str | os.PathLike[str] | None = None, timeout: float = 600) -> dict[str, int]:
    """Peak RSS of a fresh Python process that loads an artifact and runs one batch-1 inference.

    :param path: a save_pretrained folder (``runtime="pytorch"``), an ONNX file (``"onnxruntime"``) or
        an ExecuTorch program (``"executorch"``, ``threads`` its thread pool).
    :param threads: intra-op threads in the child; None = this process's torch threads.
    :param vocab_size: token ids of the ONNX or ExecuTorch input are drawn below it (PyTorch reads the model's).
    :param weights: a state dict (e.g. a torchao int8 one) loaded over the folder's model.
    :return: ``peak_rss_bytes``, and ``baseline_rss_bytes``, the child's peak after its imports.
    """
    if runtime not in RUNTIMES:
        raise AlambicError(f"unknown runtime {runtime!r}; measurable: {', '.join(RUNTIMES)}")
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    cmd = [sys.executable, "-m", "alambic.compress.memory", runtime, os.fspath(path), str(length), str(threads),
           str(vocab_size or 0), os.fspath(weights) if weights else ""]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AlambicError(f"measuring memory of {path}: no answer in {timeout:.0f} s") from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RSS_MARK):
            return json.loads(line[len(_RSS_MARK):])
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise AlambicError(f"measuring memory of {path}: the child process failed (exit {done.returncode}): {tail}")


def _memory_child(runtime: str, path: str, length: int, threads: int, vocab_size: int, weights: str) -> None:
    """In the child that :func:`peak_rss` starts: import, load, infer once, print the peaks."""
    if runtime == "onnxruntime":
        import numpy  # noqa: F401 - the imports count in the baseline, not in the model's cost
        import onnxruntime  # noqa: F401

        baseline = own_peak_rss()
        session = ort_session(path, threads)
        ort_logits(session, onnx_input(vocab_size, length))
    elif runtime == "executorch":
        import torch  # noqa: F401 - the imports count in the baseline, not in the model's cost

        with quiet():
            import executorch.runtime  # noqa: F401
        baseline = own_peak_rss()
        pte_logits(load_pte(path, threads), fixed_input(vocab_size, length))
    else:
        import torch
        import transformers  # noqa: F401 - the imports count in the baseline, not in the model's cost

        if weights:
            import torchao.quantization  # noqa: F401
        torch.set_num_threads(threads)
        baseline = own_peak_rss()
        model = load_model(path, weights or None)
        with torch.inference_mode():
            model(**fixed_input(model.get_input_embeddings().num_embeddings, length))
    print(_RSS_MARK + json.dumps({"peak_rss_bytes": own_peak_rss(), "baseline_rss_bytes": baseline}))


def own_peak_rss() -> int:
    """This process's peak RSS in bytes. On Linux it is VmHWM: ``ru_maxrss`` carries the parent's
    high-water mark across fork + exec, so a child of a big process would report the parent's."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


if __name__ == "__main__":  # the memory child: python -m alambic.compress.memory RUNTIME PATH LENGTH THREADS VOCAB WEIGHTS
    _memory_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                  sys.argv[6] if len(sys.argv) > 6 else "")
