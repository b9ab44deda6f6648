"""Measure a deployable artifact: size, parameters, latency, peak memory and accuracy, and where.

::

    m = measure_pytorch("stages/<key>/model", test, lengths=(16, 32, 64, 128), threads=1)
    m = measure_onnx("stages/<key>/onnx/model.int8-dynamic.onnx", test, (16, 32), threads=1,
                     tokenizer_files=vocab_files("stages/<key>/model"))
    m.size_bytes, m.params, m.latency_ms["32"]["p50"], m.memory["peak_rss_bytes"], m.accuracy
    m.headline()     # the search's objective metrics: accuracy, size_mb, latency_p50_ms, ...
    format_measurements({"before": a, "after": b})   # a rich table, B against A

What each figure means:

* **size**: bytes of the files a phone ships: the weights (safetensors, a quantized state dict or
  the ONNX graph with its external data), ``config.json`` for a PyTorch model (labels, sizes),
  and the tokenizer's vocabulary (``vocab.txt``, else ``tokenizer.json``). Not metrics, manifests
  or records.
* **params**: the PyTorch model's parameters (shared tensors once); for ONNX, the elements of the
  graph's initializers (an int8 weight counts once, its scale and zero point count too).
* **latency**: p50/p90 milliseconds of one forward pass at batch 1, for each sequence length,
  after ``warmup`` untimed passes, in the runtime the artifact targets (PyTorch, or ONNX Runtime
  on the CPU), with ``threads`` intra-op threads, stated in the result.
* **peak RSS**: VmHWM of a fresh Python process that imports the runtime, loads the artifact and
  runs one batch-1 inference at the longest length; ``baseline_rss_bytes`` is its peak after the
  imports, before loading: the difference is what the model costs.
* **accuracy / macro-F1**: on the split given (the test split), through the artifact's runtime.

Every measurement carries the machine (CPU model, cores, memory) and the thread count.
torch, onnx and onnxruntime are imported inside the functions: ``import alambic.compress.measure`` is light.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.errors import AlambicError

if TYPE_CHECKING:
    from rich.table import Table
    from torch import Tensor

RUNTIMES = ("pytorch", "onnxruntime")
DEFAULT_LENGTHS = (16, 32, 64, 128)
#: the length whose latency is the headline (THUCNews headlines are ~20 tokens, [CLS]/[SEP] added)
REFERENCE_LENGTH = 32
#: one thread: the most repeatable batch-1 figure, and the closest to one big phone core
DEFAULT_THREADS = 1
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VOCAB_FILES = ("vocab.txt", "tokenizer.json")  # the first one present is what a phone ships
_RSS_MARK = "ALAMBIC_RSS "


@dataclass
class Measurement:
    """One artifact, measured. ``latency_ms`` is keyed by the sequence length, as a string (JSON)."""

    runtime: str  # "pytorch" | "onnxruntime"
    artifact: str  # the folder or file measured
    files: dict[str, int]  # what a phone ships: file name -> bytes
    size_bytes: int
    params: int
    latency_ms: dict[str, dict[str, float]]  # {"32": {"p50": .., "p90": ..}}
    accuracy: float
    macro_f1: float
    examples: int
    threads: int
    runs: int
    warmup: int
    memory: dict[str, int] = field(default_factory=dict)  # peak_rss_bytes, baseline_rss_bytes
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def reference_length(self) -> int:
        lengths = sorted(int(k) for k in self.latency_ms)
        if not lengths:
            return 0
        return REFERENCE_LENGTH if REFERENCE_LENGTH in lengths else lengths[-1]

    def headline(self) -> dict[str, Any]:
        """The figures a search ranks candidates by (the config's objective metrics)."""
        length = self.reference_length()
        latency = self.latency_ms.get(str(length), {})
        peak = self.memory.get("peak_rss_bytes")
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "size_mb": self.size_bytes / 1e6,
                "params": self.params, "latency_p50_ms": latency.get("p50"), "latency_p90_ms": latency.get("p90"),
                "latency_length": length, "peak_mem_mb": None if peak is None else peak / 1e6,
                "threads": self.threads}


# --- files ----------------------------------------------------------------------------------


def vocab_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The tokenizer vocabulary a phone ships from a tokenizer or model folder ([] if none)."""
    folder = Path(folder)
    return next(([folder / name] for name in VOCAB_FILES if (folder / name).is_file()), [])


def model_files(folder: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None) -> list[Path]:
    """The model a phone ships of a save_pretrained folder: its weights and config.json (the
    vocabulary comes on top: :func:`vocab_files`).

    :param weights: another weights file (a quantized state dict) instead of the folder's own.
    """
    folder = Path(folder)
    if weights is not None:
        found = [Path(weights)]
    else:
        found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()][:1]
        if not found:
            raise AlambicError(f"{folder}: no model weights ({' or '.join(WEIGHT_FILES)})")
    return found + [folder / "config.json"]


def config_vocab_size(folder: str | os.PathLike[str]) -> int | None:
    """``vocab_size`` from a model folder's config.json (None when it cannot be read): latency
    inputs draw token ids below it."""
    try:
        return int(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def file_sizes(files: Iterable[str | os.PathLike[str]]) -> dict[str, int]:
    """Bytes of each file, by name; an ONNX graph counts its external-data files too."""
    sizes = {}
    for path in map(Path, files):
        if not path.is_file():
            raise AlambicError(f"cannot measure {path}: no such file")
        if path.suffix == ".onnx":
            from alambic.ship.onnx_export import file_bytes

            sizes[path.name] = file_bytes(path)
        else:
            sizes[path.name] = path.stat().st_size
    return sizes


def size_on_disk(files: Iterable[str | os.PathLike[str]]) -> int:
    """Total bytes of ``files`` (the files a phone ships: see :func:`model_files`)."""
    return sum(file_sizes(files).values())


def onnx_params(path: str | os.PathLike[str]) -> int:
    """Elements of an ONNX graph's initializers (its weights, however stored)."""
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(math.prod(t.dims) for t in graph.initializer)


# --- latency --------------------------------------------------------------------------------


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
    from alambic.ship.onnx_export import ort_logits

    batch = onnx_input(vocab_size, length)
    return timed(lambda: ort_logits(session, batch), runs, warmup)


def load_model(folder: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None) -> Any:
    """A save_pretrained folder's classifier in eval mode, with a quantized state dict (torchao
    int8) loaded over it when ``weights`` is given."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from alambic.train.models import load_pretrained

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


# --- peak memory ----------------------------------------------------------------------------


def peak_rss(path: str | os.PathLike[str], length: int = 32, threads: int | None = None, *,
             runtime: str = "pytorch", vocab_size: int | None = None,
             weights: str | os.PathLike[str] | None = None, timeout: float = 600) -> dict[str, int]:
    """Peak RSS of a fresh Python process that loads an artifact and runs one batch-1 inference.

    :param path: a save_pretrained folder (``runtime="pytorch"``) or an ONNX file (``"onnxruntime"``).
    :param threads: intra-op threads in the child; None = this process's torch threads.
    :param vocab_size: token ids of the ONNX input are drawn below it (PyTorch reads the model's).
    :param weights: a state dict (e.g. a torchao int8 one) loaded over the folder's model.
    :return: ``peak_rss_bytes``, and ``baseline_rss_bytes``, the child's peak after its imports.
    """
    if runtime not in RUNTIMES:
        raise AlambicError(f"unknown runtime {runtime!r}; measurable: {', '.join(RUNTIMES)}")
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    cmd = [sys.executable, "-m", "alambic.compress.measure", runtime, os.fspath(path), str(length), str(threads),
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

        from alambic.ship.onnx_export import ort_logits, ort_session

        baseline = own_peak_rss()
        session = ort_session(path, threads)
        ort_logits(session, onnx_input(vocab_size, length))
    else:
        import torch
        import transformers  # noqa: F401 - the imports count in the baseline, not in the model's cost

        import alambic.train.models  # noqa: F401

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
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


# --- accuracy -------------------------------------------------------------------------------


def onnx_evaluate(session: Any, dataset: Any, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report of an ONNX Runtime session on a tokenized split."""
    import numpy as np

    from alambic.ship.onnx_export import ort_logits
    from alambic.train.loop import classification_metrics, confusion_matrix, iterate

    names = dataset.features["label"].names
    labels, predictions = [], []
    for _, batch in iterate(dataset, batch_size):
        predictions.append(ort_logits(session, batch).argmax(-1))
        labels.append(batch["labels"].numpy())
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=int)
    p = np.concatenate(predictions) if predictions else np.zeros(0, dtype=int)
    return classification_metrics(confusion_matrix(y, p, len(names)), names)


def _max_token_id(dataset: Any) -> int:
    import pyarrow.compute as pc

    ids = dataset.with_format("arrow")[:].column("input_ids").combine_chunks().flatten()
    top = pc.max(ids).as_py()
    return int(top) if top is not None else 1


def _check(dataset: Any, lengths: Sequence[int]) -> list[int]:
    if dataset is None or len(dataset) == 0:
        raise AlambicError("measuring accuracy needs a tokenized split with rows (the test split)")
    lengths = sorted({int(n) for n in lengths})
    if lengths and lengths[0] < 2:  # none: accuracy and size only (a search times its candidates later)
        raise AlambicError(f"latency lengths must be integers >= 2, got {list(lengths)}")
    return lengths


# --- measuring ------------------------------------------------------------------------------


def measure_pytorch(model_dir: str | os.PathLike[str], dataset: Any, lengths: Sequence[int] = DEFAULT_LENGTHS,
                    threads: int | None = None, *, weights: str | os.PathLike[str] | None = None,
                    tokenizer_files: Sequence[str | os.PathLike[str]] | None = None, model: Any = None,
                    runs: int = 50, warmup: int = 10, memory: bool = True, batch_size: int = 64) -> Measurement:
    """Measure a save_pretrained folder in PyTorch (CPU, ``threads`` intra-op threads).

    :param dataset: the tokenized split accuracy is measured on (the test split).
    :param weights: a quantized state dict shipped instead of the folder's weights (torchao int8).
    :param tokenizer_files: the vocabulary shipped with it; None = the folder's (:func:`vocab_files`).
    :param model: the model already in memory (as loaded from the folder, ``weights`` applied);
        None = loaded here.
    :param memory: measure peak RSS in a child process (a few seconds: it imports torch).
    """
    import torch

    from alambic.machine import describe
    from alambic.train.models import params
    from alambic.train.loop import evaluate

    lengths = _check(dataset, lengths)
    threads = threads or DEFAULT_THREADS
    folder = Path(model_dir)
    vocab = vocab_files(folder) if tokenizer_files is None else [Path(f) for f in tokenizer_files]
    files = model_files(folder, weights) + vocab
    if model is None:
        model = load_model(folder, weights)
    model = model.to("cpu").eval()
    with torch_threads(threads):
        latency = {str(n): latency_ms(model, n, runs, warmup) for n in lengths}
        scores = evaluate(model, dataset, batch_size)
    rss = peak_rss(folder, lengths[-1], threads, weights=weights) if memory and lengths else {}
    sizes = file_sizes(files)
    return Measurement(runtime="pytorch", artifact=str(weights or folder), files=sizes,
                       size_bytes=sum(sizes.values()), params=params(model), latency_ms=latency,
                       accuracy=scores["accuracy"], macro_f1=scores["macro_f1"], examples=scores["examples"],
                       threads=threads, runs=runs, warmup=warmup, memory=rss,
                       machine=describe() | {"threads": threads, "runtime": f"torch {torch.__version__}"})


def measure_onnx(onnx_path: str | os.PathLike[str], dataset: Any, lengths: Sequence[int] = DEFAULT_LENGTHS,
                 threads: int | None = None, *, tokenizer_files: Sequence[str | os.PathLike[str]] = (),
                 vocab_size: int | None = None, runs: int = 50, warmup: int = 10, memory: bool = True,
                 batch_size: int = 64) -> Measurement:
    """Measure an ONNX graph in ONNX Runtime (CPU provider, ``threads`` intra-op threads).

    :param tokenizer_files: shipped beside the graph (the vocabulary: :func:`vocab_files`).
    :param vocab_size: latency inputs draw token ids below it; None = the largest id in ``dataset``
        plus one (ids the graph certainly accepts).
    """
    import onnxruntime

    from alambic.machine import describe
    from alambic.ship.onnx_export import ort_session

    lengths = _check(dataset, lengths)
    threads = threads or DEFAULT_THREADS
    path = Path(onnx_path)
    sizes = file_sizes([path, *tokenizer_files])
    vocab_size = vocab_size or _max_token_id(dataset) + 1
    session = ort_session(path, threads)
    latency = {str(n): onnx_latency_ms(session, vocab_size, n, runs, warmup) for n in lengths}
    scores = onnx_evaluate(session, dataset, batch_size)
    del session
    rss = (peak_rss(path, lengths[-1], threads, runtime="onnxruntime", vocab_size=vocab_size)
           if memory and lengths else {})
    return Measurement(runtime="onnxruntime", artifact=str(path), files=sizes, size_bytes=sum(sizes.values()),
                       params=onnx_params(path), latency_ms=latency, accuracy=scores["accuracy"],
                       macro_f1=scores["macro_f1"], examples=scores["examples"], threads=threads, runs=runs,
                       warmup=warmup, memory=rss,
                       machine=describe() | {"threads": threads, "runtime": f"onnxruntime {onnxruntime.__version__}"})


def measure_speed(runtime: str, artifact: str | os.PathLike[str], lengths: Sequence[int], threads: int, *,
                  model_dir: str | os.PathLike[str] | None = None, vocab_size: int | None = None,
                  runs: int = 50, warmup: int = 10, memory: bool = True) -> dict[str, Any]:
    """Latency at each length and peak memory of a shipped artifact, without scoring it: what the
    search's serial pass measures, after the trials, with nothing else running.

    :param artifact: an ONNX file (``onnxruntime``), a save_pretrained folder, or a quantized state
        dict loaded over ``model_dir`` (``pytorch``).
    :param vocab_size: ONNX inputs draw token ids below it (PyTorch reads the model's).
    """
    from alambic.machine import describe

    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 2:
        raise AlambicError(f"measuring latency needs sequence lengths >= 2, got {list(lengths)}")
    path = Path(artifact)
    if runtime == "onnxruntime":
        import onnxruntime

        from alambic.ship.onnx_export import ort_session

        if not vocab_size:
            raise AlambicError(f"timing {path}: no vocab_size to draw its inputs from (its model folder's config.json)")
        session = ort_session(path, threads)
        latency = {str(n): onnx_latency_ms(session, vocab_size, n, runs, warmup) for n in lengths}
        del session
        rss = peak_rss(path, lengths[-1], threads, runtime=runtime, vocab_size=vocab_size) if memory else {}
        version = f"onnxruntime {onnxruntime.__version__}"
    elif runtime == "pytorch":
        import torch

        folder, weights = (path, None) if path.is_dir() else (Path(model_dir or path.parent), path)
        model = load_model(folder, weights)
        with torch_threads(threads):
            latency = {str(n): latency_ms(model.eval(), n, runs, warmup) for n in lengths}
        del model
        rss = peak_rss(folder, lengths[-1], threads, weights=weights) if memory else {}
        version = f"torch {torch.__version__}"
    else:
        raise AlambicError(f"unknown runtime {runtime!r}; measurable: {', '.join(RUNTIMES)}")
    return {"latency_ms": latency, "memory": rss, "threads": threads, "runs": runs, "warmup": warmup,
            "machine": describe() | {"threads": threads, "runtime": version}}


# --- report ---------------------------------------------------------------------------------


def format_measurements(measured: Mapping[str, Measurement | Mapping[str, Any]], title: str = "measurements") -> Table:
    """A rich table, one column per artifact (the first is the reference, later ones show x ratio)."""
    from rich.markup import escape
    from rich.table import Table

    items = [(name, m if isinstance(m, Measurement) else Measurement.from_dict(m)) for name, m in measured.items()]
    if not items:
        raise AlambicError("nothing measured")
    first = items[0][1]
    machine = first.machine
    table = Table("", *(escape(name) for name, _ in items), title=title,
                  caption=f"{machine.get('cpu', '?')}, {first.threads} thread(s); latency: batch 1, "
                  f"p50/p90 of {first.runs} runs after {first.warmup} warm-up; accuracy on "
                  f"{first.examples:,} test rows; peak RSS: a fresh process importing the runtime, "
                  f"loading the artifact and running it once")

    def row(label: str, value: Callable[[Measurement], Any], fmt: Callable[[Any], str], ratio: bool = False) -> None:
        cells = []
        base = value(first)
        for i, (_, m) in enumerate(items):
            v = value(m)
            text = "-" if v is None else fmt(v)
            if ratio and i and v is not None and base:
                text += f" (x {v / base:.2f})"
            cells.append(text)
        table.add_row(label, *cells)

    row("runtime", lambda m: m.runtime, str)
    row("accuracy", lambda m: m.accuracy, lambda v: f"{v:.2%}")
    row("macro-F1", lambda m: m.macro_f1, lambda v: f"{v:.4f}")
    row("size MB", lambda m: m.size_bytes / 1e6, lambda v: f"{v:,.2f}", ratio=True)
    row("params", lambda m: m.params, lambda v: f"{v:,}", ratio=True)
    lengths = sorted({int(k) for _, m in items for k in m.latency_ms})
    for n in lengths:
        for q in ("p50", "p90"):
            row(f"latency {q} ms @{n}", lambda m, n=n, q=q: m.latency_ms.get(str(n), {}).get(q),
                lambda v: f"{v:.2f}", ratio=True)
    row("peak RSS MB", lambda m: m.memory.get("peak_rss_bytes"), lambda v: f"{v / 1e6:,.1f}", ratio=True)
    row("  of which the model", lambda m: _model_rss(m.memory), lambda v: f"{v / 1e6:,.1f}", ratio=True)
    return table


def _model_rss(memory: Mapping[str, int]) -> int | None:
    """Peak RSS minus the runtime's imports: what loading and running the model added."""
    if "peak_rss_bytes" not in memory or "baseline_rss_bytes" not in memory:
        return None
    return memory["peak_rss_bytes"] - memory["baseline_rss_bytes"]


if __name__ == "__main__":  # the memory child: python -m alambic.compress.measure RUNTIME PATH LENGTH THREADS VOCAB WEIGHTS
    _memory_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                  sys.argv[6] if len(sys.argv) > 6 else "")
