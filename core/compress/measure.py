"""Measure a deployable artifact: size, parameters, latency, peak memory and accuracy, and where.

::

    m = measure_pytorch("stages/<key>/model", test, lengths=(16, 32, 64, 128), threads=1)
    m = measure_onnx("stages/<key>/onnx/model.int8-dynamic.onnx", test, (16, 32), threads=1,
                     tokenizer_files=vocab_files("stages/<key>/model"))
    m = measure_executorch("model.pte", test, (16, 32), threads=1, vocab_size=21128)   # XNNPACK
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
  after ``warmup`` untimed passes, in the runtime the artifact targets (PyTorch, ONNX Runtime on
  the CPU, or ExecuTorch's Python runtime on XNNPACK's kernels), with ``threads`` intra-op threads
  (ExecuTorch: its thread pool, set before loading), stated in the result.
* **peak RSS**: VmHWM of a fresh Python process that imports the runtime, loads the artifact and
  runs one batch-1 inference at the longest length; ``baseline_rss_bytes`` is its peak after the
  imports, before loading: the difference is what the model costs.
* **accuracy / macro-F1**: on the split given (the test split), through the artifact's runtime.

Every measurement carries the machine (CPU model, cores, memory) and the thread count. Latency
is timed by :mod:`alambic.compress.latency`, peak RSS taken by :mod:`alambic.compress.memory`.
torch, onnx, onnxruntime and executorch are imported inside the functions: ``import alambic.compress.measure``
is light.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from alambic.compress.executorch import load_pte, pte_evaluate, pte_latency_ms
from alambic.compress.executorch import version as executorch_version
from alambic.compress.latency import RUNTIMES, UNTIMED, latency_ms, load_model, onnx_latency_ms, torch_threads
from alambic.compress.memory import peak_rss
from alambic.compress.onnx_export import file_bytes, ort_logits, ort_session
from alambic.errors import AlambicError
from alambic.machine import describe
from alambic.train.models import params

DEFAULT_LENGTHS = (16, 32, 64, 128)
#: the length whose latency is the headline (THUCNews headlines are ~20 tokens, [CLS]/[SEP] added)
REFERENCE_LENGTH = 32
#: one thread: the most repeatable batch-1 figure, and the closest to one big phone core
DEFAULT_THREADS = 1
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VOCAB_FILES = ("vocab.txt", "tokenizer.json")  # the first one present is what a phone ships


@dataclass
class Measurement:
    """One artifact, measured. ``latency_ms`` is keyed by the sequence length, as a string (JSON)."""

    runtime: str  # "pytorch" | "onnxruntime" | "executorch"
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
    latency_note: str = ""  # why latency is not measured (a runtime that cannot run here), else ""

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
                "threads": self.threads, "latency_note": self.latency_note}


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
    """Bytes of each file, by name; an ONNX graph counts its external-data files too, a package
    folder (``.mlpackage``) every file in it."""
    sizes = {}
    for path in map(Path, files):
        if path.is_dir():
            sizes[path.name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            continue
        if not path.is_file():
            raise AlambicError(f"cannot measure {path}: no such file")
        if path.suffix == ".onnx":
            sizes[path.name] = file_bytes(path)
        else:
            sizes[path.name] = path.stat().st_size
    return sizes


def size_on_disk(files: Iterable[str | os.PathLike[str]]) -> int:
    """Total bytes of ``files`` (the files a phone ships: see :func:`model_files`)."""
    return sum(file_sizes(files).values())


def onnx_params(path: str | os.PathLike[str]) -> int:
    """Elements of an ONNX graph's initializers (its weights, however stored)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(math.prod(t.dims) for t in graph.initializer)


def weight_bytes(model: Any) -> dict[str, int]:
    """Bytes of the parameters (shared tensors once) and buffers of a torch module."""
    param = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer = sum(b.numel() * b.element_size() for b in model.buffers())
    return {"param_bytes": param, "buffer_bytes": buffer, "total_bytes": param + buffer}


# --- accuracy -------------------------------------------------------------------------------


def onnx_evaluate(session: Any, dataset: Any, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report of an ONNX Runtime session on a tokenized split."""
    from alambic.train.loop import evaluate_logits

    return evaluate_logits(functools.partial(ort_logits, session), dataset, batch_size)


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


def measure_untimed(runtime: str, files: Sequence[str | os.PathLike[str]], model: Any, dataset: Any, *,
                    batch_size: int = 64) -> Measurement:
    """An artifact whose runtime cannot run here (:data:`UNTIMED`), measured for what can be: the
    bytes of ``files`` (what a phone ships) and the accuracy of ``model``, which holds the
    artifact's weights as its runtime will. Latency and memory stay empty; ``latency_note`` says why.
    """
    from alambic.train.loop import evaluate

    if runtime not in UNTIMED:
        raise AlambicError(f"runtime {runtime!r} can be timed here: measure it (measurable: {', '.join(RUNTIMES)})")
    _check(dataset, ())
    sizes = file_sizes(files)
    scores = evaluate(model, dataset, batch_size)
    return Measurement(runtime=runtime, artifact=str(files[0]), files=sizes, size_bytes=sum(sizes.values()),
                       params=params(model), latency_ms={},
                       accuracy=scores["accuracy"], macro_f1=scores["macro_f1"], examples=scores["examples"],
                       threads=0, runs=0, warmup=0, machine=describe(), latency_note=UNTIMED[runtime])


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


def measure_executorch(pte_path: str | os.PathLike[str], dataset: Any, lengths: Sequence[int] = DEFAULT_LENGTHS,
                       threads: int | None = None, *, tokenizer_files: Sequence[str | os.PathLike[str]] = (),
                       vocab_size: int | None = None, params: int = 0, runs: int = 50, warmup: int = 10,
                       memory: bool = True, batch_size: int = 64) -> Measurement:
    """Measure an ExecuTorch program (.pte) in ExecuTorch's Python runtime, on XNNPACK's CPU kernels
    (``threads``: its thread pool). Accuracy runs each row alone at batch 1, as a phone does.

    :param tokenizer_files: shipped beside the program (the vocabulary: :func:`vocab_files`).
    :param vocab_size: latency inputs draw token ids below it; None = the largest id in ``dataset`` + 1.
    :param params: the source model's parameters (the program's XNNPACK blobs do not say); 0 = unknown.
    """
    lengths = _check(dataset, lengths)
    threads = threads or DEFAULT_THREADS
    path = Path(pte_path)
    sizes = file_sizes([path, *tokenizer_files])
    vocab_size = vocab_size or _max_token_id(dataset) + 1
    method = load_pte(path, threads)
    latency = {str(n): pte_latency_ms(method, vocab_size, n, runs, warmup) for n in lengths}
    scores = pte_evaluate(method, dataset, batch_size)
    del method
    rss = (peak_rss(path, lengths[-1], threads, runtime="executorch", vocab_size=vocab_size)
           if memory and lengths else {})
    return Measurement(runtime="executorch", artifact=str(path), files=sizes, size_bytes=sum(sizes.values()),
                       params=params, latency_ms=latency, accuracy=scores["accuracy"], macro_f1=scores["macro_f1"],
                       examples=scores["examples"], threads=threads, runs=runs, warmup=warmup, memory=rss,
                       machine=describe() | {"threads": threads, "runtime": executorch_version()})


def measure_speed(runtime: str, artifact: str | os.PathLike[str], lengths: Sequence[int], threads: int, *,
                  model_dir: str | os.PathLike[str] | None = None, vocab_size: int | None = None,
                  runs: int = 50, warmup: int = 10, memory: bool = True) -> dict[str, Any]:
    """Latency at each length and peak memory of a shipped artifact, without scoring it: what the
    search's serial pass measures, after the trials, with nothing else running.

    :param artifact: an ONNX file (``onnxruntime``), an ExecuTorch program (``executorch``), a
        save_pretrained folder, or a quantized state dict loaded over ``model_dir`` (``pytorch``).
    :param vocab_size: ONNX and ExecuTorch inputs draw token ids below it (PyTorch reads the model's).
    """
    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 2:
        raise AlambicError(f"measuring latency needs sequence lengths >= 2, got {list(lengths)}")
    path = Path(artifact)
    if runtime in ("onnxruntime", "executorch"):  # a file with a fixed input layout: ids drawn below vocab_size
        if not vocab_size:
            raise AlambicError(f"timing {path}: no vocab_size to draw its inputs from (its model folder's config.json)")
        if runtime == "onnxruntime":
            import onnxruntime

            loaded, time_one = ort_session(path, threads), onnx_latency_ms
            version = f"onnxruntime {onnxruntime.__version__}"
        else:
            loaded, time_one, version = load_pte(path, threads), pte_latency_ms, executorch_version()
        latency = {str(n): time_one(loaded, vocab_size, n, runs, warmup) for n in lengths}
        del loaded  # freed before the memory probe's child process starts
        rss = peak_rss(path, lengths[-1], threads, runtime=runtime, vocab_size=vocab_size) if memory else {}
    elif runtime == "pytorch":
        import torch

        folder, weights = (path, None) if path.is_dir() else (Path(model_dir or path.parent), path)
        model = load_model(folder, weights)
        with torch_threads(threads):
            latency = {str(n): latency_ms(model.eval(), n, runs, warmup) for n in lengths}
        del model
        rss = peak_rss(folder, lengths[-1], threads, weights=weights) if memory else {}
        version = f"torch {torch.__version__}"
    elif runtime in UNTIMED:
        raise AlambicError(f"cannot time {path}: {runtime} latency is {UNTIMED[runtime]}")
    else:
        raise AlambicError(f"unknown runtime {runtime!r}; measurable: {', '.join(RUNTIMES)}")
    return {"latency_ms": latency, "memory": rss, "threads": threads, "runs": runs, "warmup": warmup,
            "machine": describe() | {"threads": threads, "runtime": version}}


# --- report ---------------------------------------------------------------------------------


def format_measurements(measured: Mapping[str, Measurement | Mapping[str, Any]], title: str = "measurements") -> Table:
    """A rich table, one column per artifact (the first is the reference, later ones show x ratio)."""
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
