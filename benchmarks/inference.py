"""Batch-1 inference of the teacher and the students in every runtime, side by side in one run (CPU).

    python benchmarks/inference.py [--models teacher,roberta-l4,tinybert-4l,mobilebert-adapter]
                                   [--lengths 16,32,64,128] [--threads 2] [--runs 50] [--warmup 10]
                                   [--runtimes "ONNX Runtime fused,ExecuTorch XNNPACK fp32,..."]
                                   [--config examples/thucnews.yaml] [--out results.json]

Models: full size with random weights (latency does not depend on their values), 10 labels,
bert-base-chinese's vocabulary (21128 tokens). ``teacher`` is bert-base-chinese's architecture from
config; the others are the student plugins. Runtimes, one row per (model, runtime, length):

  PyTorch fp32                       the model as built (SDPA attention)
  PyTorch dynamic int8               int8_dynamic_torch (torchao): nn.Linear weights int8
  ONNX Runtime fp32                  export_onnx, unfused, in a session with ORT's defaults (every
                                     fusion ORT applies at load): the naive path
  ONNX Runtime dynamic int8          int8_dynamic on the unfused export, ORT's defaults: naive too
  ONNX Runtime fused, ORT fusions    optimize_onnx with every fusion ORT's transformer optimizer
                                     knows (Attention, SkipLayerNormalization, BiasGelu,
                                     EmbedLayerNormalization), ORT's default session
  ... + dynamic int8                 int8_dynamic of that graph, ORT's default session
  ONNX Runtime fused                 alambic's graph and session: the same fusions but
                                     SkipLayerNormalization (alambic.compress.onnx_export.SLOW_FUSIONS),
                                     which the session does not re-create at load either
  ONNX Runtime fused + dynamic int8  int8_dynamic of alambic's fused graph, alambic's session: what
                                     the dynamic-int8 quantizer ships and measures by default
  ONNX Runtime static int8 (QDQ)     int8_static (minmax) on the unfused export, calibrated on the
                                     first 64 THUCNews training headlines (the config's tokenizer)
  ExecuTorch XNNPACK fp32 / int8     export_pte: the model as an ExecuTorch program lowered to the
                                     XNNPACK delegate (the kernels ExecuTorch runs on iOS and Android
                                     CPUs), int8 by PT2E (per-channel weights, calibrated on those
                                     headlines), run in ExecuTorch's Python runtime with its thread
                                     pool sized to --threads; the note: argmax agreement with PyTorch

``--artifact LABEL=FILE.onnx`` adds rows for a model alambic built (e.g. a compress stage's
``model.int8-dynamic.onnx``), timed in alambic's session; its FLOPs come from the config.json of
the stage's ``model/`` folder (pruned sizes), found beside or above the file. A last table lists
the artifacts with the test accuracy of their stage's record.json and marks their Pareto front
(accuracy max, size min, p50 min at length 32).

A runtime that fails for a model gets its reason in the rows' note instead of figures. Each row:
p50/p90 ms of ``--runs`` passes after ``--warmup`` (alambic.compress.latency.timed), ``--threads`` intra-op
threads; size (ONNX: the file; PyTorch: the serialized state dict); speed-up against the teacher
in PyTorch fp32 at the same length (needs ``teacher`` among the models); FLOPs of one inference;
achieved GFLOP/s = FLOPs / p50; and that as a share of the machine's ceiling: fp32 rows against the
best fp32 matrix product below, int8 rows against the best int8 one (int8 rows still run attention
scores, softmax and embeddings in fp32, so their share is of an all-int8 ideal).

FLOPs (a multiply-add is 2), batch 1, L tokens, counted from the model's config:

  BERT (teacher, roberta-l4, tinybert-4l): hidden H, A = heads x head_dim (= H), FFN F, C labels;
    per encoder layer: Q/K/V/O projections 2*L*H*(4*A) + attention scores and context 2*2*L^2*A
                       + FFN 2*2*L*H*F
    once: pooler 2*H^2 (the [CLS] row only) + classifier 2*H*C; embeddings are lookups: 0
  MobileBERT (mobilebert-adapter): hidden H = 512, bottleneck B = true_hidden_size = 128, attention
  width A = B, word embeddings E = 128, FFN F = 512, n = 4 stacked FFNs, C labels; every linear:
    embeddings: trigram input, 3 shifted word vectors concatenated, 3E -> H: 2*L*3E*H
    per encoder layer: input bottleneck H -> B and the query/key shared bottleneck H -> B: 2*2*L*H*B
                       Q, K from the shared bottleneck B -> A: 2*2*L*B*A; V from the full width
                       H -> A: 2*L*H*A; attention output A -> B: 2*L*A*B; scores and context
                       2*2*L^2*A; n FFNs B -> F -> B: n*2*2*L*B*F; output bottleneck B -> H: 2*L*B*H
    once: pooler 2*H^2 + classifier 2*H*C
  Not counted: biases, softmax, LayerNorm/NoNorm, activations, residual adds (all O(L*H), well
  under 1% here). Both formulas equal torch.utils.flop_counter.FlopCounterMode's count (BERT with
  eager attention: the counter does not see PyTorch's CPU SDPA kernel).

Machine ceiling, measured first, at the same threads: ONNX Runtime MatMul (fp32), MatMulInteger
(uint8 x int8 -> int32) and int8_dynamic's quantized MatMul (the op the dynamic int8 models run),
and torch.matmul (fp32), on a shape large enough to reach peak (1024x1024x1024) and a BERT-like one
(32x768 @ 768x3072); the ceiling of a precision is its best figure.

Prints the machine, the command, progress per row, the ceiling's table, the fused operators of each
model, a Markdown table for BENCHMARKS.md and, per model at length 32, the fastest runtime.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from datasets import DatasetDict
from onnx import TensorProto, helper, numpy_helper
from transformers import BertForSequenceClassification

from alambic import machine
from alambic.compress.executorch import compare_pte, export_pte, load_pte, pte_latency_ms
from alambic.compress.latency import latency_ms, onnx_latency_ms, timed, torch_threads
from alambic.compress.measure import REFERENCE_LENGTH
from alambic.compress.onnx_export import (
    attention_dims,
    export_onnx,
    file_bytes,
    fused_operators,
    optimize_onnx,
    ort_session,
)
from alambic.compress.onnx_quant import int8_dynamic, int8_static
from alambic.compress.quantization import int8_dynamic_torch
from alambic.config import load_config
from alambic.data.dataset import load_data
from alambic.data.tokenize import prepare_tokenizer, tokenize_data
from alambic.manager import build_registry
from alambic.train.models import teacher_config

MODELS = ("teacher", "roberta-l4", "tinybert-4l", "mobilebert-adapter")
NUM_LABELS = 10
CALIBRATION_EXAMPLES = 64
MAX_PTE_LENGTH = 128  # the ExecuTorch programs' longest input (their dynamic length's bound)
BASELINE = ("teacher", "PyTorch fp32")  # the speed-ups are against this row at the same length
FUSED_INT8 = "ONNX Runtime fused + dynamic int8"
#: (M, K, N) of the ceiling's matrix products: large enough for peak, and one BERT FFN at 32 tokens
CEILING_SHAPES = {"peak": (1024, 1024, 1024), "bert-like": (32, 768, 3072)}


# --- models and runtimes --------------------------------------------------------------------


@dataclass
class Subject:
    """One model, and the ONNX files made from it: each made once, when a runtime first needs it."""

    name: str
    model: Any
    work: Path
    calibration: Any  # tokenized headlines for static int8
    config: Any = None  # the architecture the FLOPs are counted from; None = the model's
    fused_ops: dict[str, int] | None = None  # what optimize_onnx fused; None until it has run
    ort_fused_ops: dict[str, int] | None = None  # the same, with every fusion ORT knows
    agreement: dict[str, str] = field(default_factory=dict)  # .pte file -> its logits against PyTorch

    def __post_init__(self) -> None:
        self.config = self.config or self.model.config

    def file(self, kind: str) -> Path:
        return self.work / f"{self.name}.{kind}.onnx"

    @cached_property
    def exported(self) -> Path:
        return export_onnx(self.model, self.file("fp32"))

    @cached_property
    def fused(self) -> Path:
        heads, width = attention_dims(self.model.config)
        path = optimize_onnx(self.exported, self.file("fused"), heads, width)
        self.fused_ops = fused_operators(path)
        print(f"{self.name}: fused operators {self.fused_ops or 'none: nothing fused'}", flush=True)
        return path

    @cached_property
    def ort_fused(self) -> Path:
        """Fused with every fusion ORT's transformer optimizer knows, SkipLayerNormalization included."""
        heads, width = attention_dims(self.model.config)
        path = optimize_onnx(self.exported, self.file("ort-fused"), heads, width, skip_layer_norm=True)
        self.ort_fused_ops = fused_operators(path)
        return path


@dataclass(frozen=True)
class Runtime:
    name: str
    precision: str  # "fp32" | "int8": the ceiling its GFLOP/s is compared with
    make: Callable[[Subject], Any]  # -> a torch model (PyTorch) or the path of an ONNX file
    fused: bool = False  # runs the graph optimize_onnx fused
    ort_defaults: bool = False  # an ONNX Runtime session with ORT's defaults, not alambic's


RUNTIMES = (
    Runtime("PyTorch fp32", "fp32", lambda s: s.model),
    Runtime("PyTorch dynamic int8", "int8", lambda s: int8_dynamic_torch(s.model)),
    Runtime("ONNX Runtime fp32", "fp32", lambda s: s.exported, ort_defaults=True),
    Runtime("ONNX Runtime dynamic int8", "int8", lambda s: int8_dynamic(s.exported, s.file("int8")),
            ort_defaults=True),
    Runtime("ONNX Runtime fused, ORT fusions", "fp32", lambda s: s.ort_fused, fused=True, ort_defaults=True),
    Runtime("ONNX Runtime fused, ORT fusions + dynamic int8", "int8",
            lambda s: int8_dynamic(s.ort_fused, s.file("ort-fused.int8")), fused=True, ort_defaults=True),
    Runtime("ONNX Runtime fused", "fp32", lambda s: s.fused, fused=True),
    Runtime(FUSED_INT8, "int8", lambda s: int8_dynamic(s.fused, s.file("fused.int8")), fused=True),
    Runtime("ONNX Runtime static int8 (QDQ)", "int8",
            lambda s: int8_static(s.exported, s.file("qdq"), s.calibration, examples=CALIBRATION_EXAMPLES)),
    Runtime("ExecuTorch XNNPACK fp32", "fp32", lambda s: pte(s, int8=False)),
    Runtime("ExecuTorch XNNPACK int8", "int8", lambda s: pte(s, int8=True)),
)
ARTIFACT = Runtime("alambic artifact (ONNX Runtime, alambic's session)", "int8", lambda s: s.model)


def pte(subject: Subject, int8: bool) -> Path:
    """The model as an ExecuTorch program lowered to XNNPACK (int8: PT2E, per-channel weights,
    calibrated on the headlines), as ``alambic export --format executorch`` writes it; its logits'
    agreement with PyTorch on those headlines is printed and kept for the rows' note."""
    path = subject.work / f"{subject.name}.{'int8' if int8 else 'fp32'}.pte"
    export_pte(subject.model, path, int8=int8, max_length=MAX_PTE_LENGTH, calibration=subject.calibration)
    found = compare_pte(subject.model, path, subject.calibration, max_examples=CALIBRATION_EXAMPLES)
    subject.agreement[path.name] = (f"argmax vs PyTorch {found['argmax_agreement']:.0%} of {found['examples']} "
                                    f"headlines, max abs diff {found['max_abs_diff']:.2g}")
    print(f"{subject.name}: {path.name}: {subject.agreement[path.name]}", flush=True)
    return path


def build_model(name: str, registry: Any, vocab_size: int) -> Any:
    """Full size, random weights (seeded): the teacher's architecture or a student plugin's."""
    torch.manual_seed(0)
    if name == "teacher":
        return BertForSequenceClassification(teacher_config(NUM_LABELS, vocab_size=vocab_size)).eval()
    return registry["students"].get(name).build(NUM_LABELS, vocab_size=vocab_size).eval()


def headlines(config_path: str, work: Path) -> tuple[Any, Any, Any]:
    """The first THUCNews training headlines, tokenized by alambic.data.tokenize; the tokenizer; the registry."""
    logging.getLogger("alambic.data").setLevel(logging.ERROR)
    registry = build_registry()
    config = load_config(config_path, registry=registry)
    dsd, _ = load_data(config.data, registry)
    tokenizer = prepare_tokenizer(config.tokenizer, dsd)
    rows = DatasetDict({"train": dsd["train"].select(range(CALIBRATION_EXAMPLES))})
    tokenized = tokenize_data(rows, tokenizer, config.tokenizer.max_length, work, "inference-calibration")
    return tokenized["train"], tokenizer, registry


# --- FLOPs ----------------------------------------------------------------------------------


def flops(config: Any, length: int) -> int:
    """FLOPs of one batch-1 inference of ``length`` tokens (the formulas of the module docstring)."""
    h = config.hidden_size
    head = 2 * h * h + 2 * h * config.num_labels  # pooler on [CLS], classifier
    encoder = mobilebert_flops if config.model_type == "mobilebert" else bert_flops
    return encoder(config, length) + head


def bert_flops(config: Any, n: int) -> int:
    h, f = config.hidden_size, config.intermediate_size
    a = config.num_attention_heads * (h // config.num_attention_heads)
    layer = 2 * n * h * 4 * a + 2 * 2 * n * n * a + 2 * 2 * n * h * f
    return config.num_hidden_layers * layer


def mobilebert_flops(config: Any, n: int) -> int:
    """MobileBERT as students.py configures it: bottlenecks, query/key sharing one, values full width."""
    h, b, f = config.hidden_size, config.true_hidden_size, config.intermediate_size
    a = b  # attention runs at the bottleneck width
    embeddings = 2 * n * 3 * config.embedding_size * h  # trigram concat -> hidden
    bottlenecks = 2 * 2 * n * h * b + 2 * n * b * h  # in and shared query/key (H -> B); out (B -> H)
    attention = 2 * 2 * n * b * a + 2 * n * h * a + 2 * n * a * b + 2 * 2 * n * n * a  # Q K, V, out, scores
    ffns = config.num_feedforward_networks * 2 * 2 * n * b * f
    return embeddings + config.num_hidden_layers * (bottlenecks + attention + ffns)


# --- machine ceiling ------------------------------------------------------------------------


def matmul_file(path: Path, op: str, a: np.ndarray, b: np.ndarray) -> Path:
    """A one-node ONNX graph ``Y = op(A, B)`` with ``B`` a constant (the weights), saved at ``path``."""
    out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], op,
        [helper.make_tensor_value_info("A", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)],
        [helper.make_tensor_value_info("Y", out_type, (a.shape[0], b.shape[1]))],
        initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def session_run(path: Path, a: np.ndarray, threads: int) -> Callable[[], Any]:
    session = ort_session(path, threads)
    return lambda: session.run(None, {"A": a})


def ceiling_kernels(work: Path, m: int, k: int, n: int, threads: int) -> list[tuple[str, str, Callable[[], Any]]]:
    """(kernel, precision, one call) for each matrix product of the ceiling, at (M, K) @ (K, N)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    a_u8, b_s8 = rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-127, 128, (k, n), dtype=np.int8)
    fp32 = matmul_file(work / f"matmul-{m}x{k}x{n}.onnx", "MatMul", a, b)
    integer = matmul_file(work / f"matmulinteger-{m}x{k}x{n}.onnx", "MatMulInteger", a_u8, b_s8)
    dynamic = int8_dynamic(fp32, work / f"matmul-{m}x{k}x{n}.int8.onnx")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return [("ONNX Runtime MatMul", "fp32", session_run(fp32, a, threads)),
            ("torch.matmul", "fp32", lambda: torch.matmul(ta, tb)),
            ("ONNX Runtime MatMulInteger (u8 x s8)", "int8", session_run(integer, a_u8, threads)),
            ("ONNX Runtime int8_dynamic MatMul", "int8", session_run(dynamic, a, threads))]


def ceilings(work: Path, threads: int, runs: int, warmup: int) -> list[dict[str, Any]]:
    """Every kernel of :func:`ceiling_kernels` at every shape: p50 ms and G(FL)OP/s = 2*M*K*N / p50."""
    results = []
    for shape, (m, k, n) in CEILING_SHAPES.items():
        for kernel, precision, run in ceiling_kernels(work, m, k, n, threads):
            p50 = timed(run, runs, warmup)["p50"]
            results.append({"kernel": kernel, "precision": precision, "shape": shape, "mkn": [m, k, n],
                            "p50_ms": p50, "gflops": 2 * m * k * n / p50 / 1e6})
            print(f"ceiling {kernel:<38} {precision} {m}x{k}x{n}: {results[-1]['gflops']:7.1f} "
                  f"G{'OP' if precision == 'int8' else 'FLOP'}/s", flush=True)
    return results


def norm_file(path: Path, op: str, width: int) -> Path:
    """A one-node graph of the residual + LayerNorm step at (1, 32, width): ``Add``,
    ``LayerNormalization`` or ORT's fused ``SkipLayerNormalization`` (what SLOW_FUSIONS is about)."""
    gamma = numpy_helper.from_array(np.ones(width, np.float32), "g")
    beta = numpy_helper.from_array(np.zeros(width, np.float32), "b")
    io = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 32, width]) for n in ("x", "r", "y")}
    node, inputs, inits = {
        "Add": (helper.make_node("Add", ["x", "r"], ["y"]), ["x", "r"], []),
        "LayerNormalization": (helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-12),
                               ["x"], [gamma, beta]),
        "SkipLayerNormalization": (helper.make_node("SkipLayerNormalization", ["x", "r", "g", "b"], ["y"],
                                                    domain="com.microsoft", epsilon=1e-12), ["x", "r"], [gamma, beta]),
    }[op]
    graph = helper.make_graph([node], op, [io[n] for n in inputs], [io["y"]], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def norm_kernels(work: Path, threads: int, runs: int, warmup: int, width: int = 512) -> list[dict[str, Any]]:
    """p50 microseconds of each residual + LayerNorm kernel, one-node graphs, ORT's default session."""
    feeds = {n: np.random.default_rng(i).standard_normal((1, 32, width), dtype=np.float32)
             for i, n in enumerate(("x", "r"))}
    results = []
    for op in ("Add", "LayerNormalization", "SkipLayerNormalization"):
        session = ort_session(norm_file(work / f"{op}.onnx", op, width), threads, ())
        needed = {i.name for i in session.get_inputs()}
        p50 = timed(lambda: session.run(None, {k: v for k, v in feeds.items() if k in needed}), runs * 10, warmup)["p50"]
        results.append({"kernel": op, "shape": [1, 32, width], "p50_us": p50 * 1e3})
        print(f"kernel {op:<24} (1, 32, {width}): {p50 * 1e3:6.1f} us", flush=True)
    return results


def best_ceiling(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per precision, the best G(FL)OP/s of any kernel at any shape (the BERT-like one can win)."""
    return {p: max(r["gflops"] for r in results if r["precision"] == p) for p in ("fp32", "int8")}


# --- measuring ------------------------------------------------------------------------------


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of the serialized state dict: what torch.save writes (int8 tensors included)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def timer(artifact: Any, vocab_size: int, args: argparse.Namespace,
          ort_defaults: bool = False) -> tuple[Callable[[int], dict], int]:
    """A function of the length that times ``artifact`` (an ONNX file or a torch model); its bytes."""
    if isinstance(artifact, Path) and artifact.suffix == ".pte":  # XNNPACK's pool sized to --threads
        method = load_pte(artifact, args.threads)
        return (lambda n: pte_latency_ms(method, vocab_size, n, args.runs, args.warmup)), artifact.stat().st_size
    if isinstance(artifact, Path):
        session = ort_session(artifact, args.threads, *([()] if ort_defaults else []))
        return (lambda n: onnx_latency_ms(session, vocab_size, n, args.runs, args.warmup)), file_bytes(artifact)
    return (lambda n: latency_ms(artifact, n, args.runs, args.warmup)), state_dict_bytes(artifact)


def reason(exc: Exception) -> str:
    """What a row's note says of a failure: the exception's type and first line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def runtime_rows(subject: Subject, runtime: Runtime, vocab_size: int, args: argparse.Namespace) -> list[dict]:
    """One row per length for ``runtime``; a failure puts its reason in the rows it leaves unmeasured."""
    start = time.perf_counter()
    rows = [{"model": subject.name, "runtime": runtime.name, "precision": runtime.precision, "length": n,
             "flops": flops(subject.config, n), "p50_ms": None, "p90_ms": None, "size_mb": None,
             "note": ""} for n in args.lengths]
    try:
        made = runtime.make(subject)
        run_at, size = timer(made, vocab_size, args, runtime.ort_defaults)
        if isinstance(made, Path) and made.name in subject.agreement:
            rows = [row | {"note": subject.agreement[made.name]} for row in rows]
        if runtime.fused and not (subject.ort_fused_ops if runtime.ort_defaults else subject.fused_ops):
            rows = [row | {"note": "nothing fused"} for row in rows]
        print(f"{subject.name} / {runtime.name}: ready in {time.perf_counter() - start:.1f} s", flush=True)
        for row in rows:
            row.update(size_mb=size / 1e6, **{f"{k}_ms": v for k, v in run_at(row["length"]).items()})
            print(f"  {subject.name:<18} {runtime.name:<34} L={row['length']:<4} p50 {row['p50_ms']:8.2f} ms"
                  f"  p90 {row['p90_ms']:8.2f} ms  {row['flops'] / row['p50_ms'] / 1e6:6.1f} GFLOP/s", flush=True)
    except Exception as exc:  # noqa: BLE001 - a runtime failing for a model is a result, not the end
        print(f"{subject.name} / {runtime.name}: failed: {reason(exc)}", flush=True)
        rows = [row if row["p50_ms"] is not None else row | {"note": reason(exc)} for row in rows]
    return rows


def derive(rows: list[dict], ceiling: dict[str, float]) -> None:
    """Add GFLOP/s, its share of the ceiling and the speed-up against the baseline to each row."""
    baseline = {r["length"]: r["p50_ms"] for r in rows if (r["model"], r["runtime"]) == BASELINE}
    for row in rows:
        p50, base = row["p50_ms"], baseline.get(row["length"])
        row["gflops"] = row["flops"] / p50 / 1e6 if p50 else None
        row["ceiling_pct"] = 100 * row["gflops"] / ceiling[row["precision"]] if p50 else None
        row["speedup"] = base / p50 if p50 and base else None


# --- reporting ------------------------------------------------------------------------------


def cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def ceiling_table(results: list[dict[str, Any]]) -> str:
    lines = ["| kernel | precision | M x K x N | p50 ms | GFLOP/s (int8: GOP/s) |", "| --- | --- | --- | ---: | ---: |"]
    lines += [f"| {r['kernel']} | {r['precision']} | {' x '.join(map(str, r['mkn']))} | {r['p50_ms']:.3f} | "
              f"{r['gflops']:.1f} |" for r in results]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [("| model | runtime | length | p50 ms | p90 ms | size MB | speed-up vs teacher PyTorch fp32 "
              "| GFLOP | GFLOP/s | % of ceiling | note |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    order = {r.name: i for i, r in enumerate((*RUNTIMES, ARTIFACT))}
    models = list(dict.fromkeys(r["model"] for r in rows))
    for r in sorted(rows, key=lambda r: (models.index(r["model"]), r["length"], order[r["runtime"]])):
        note = r["note"].replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['runtime']} | {r['length']} | {cell(r['p50_ms'], '.2f')} | "
                     f"{cell(r['p90_ms'], '.2f')} | {cell(r['size_mb'], '.1f')} | {cell(r['speedup'], '.2f', 'x')} | "
                     f"{r['flops'] / 1e9:.3f} | {cell(r['gflops'], '.1f')} | {cell(r['ceiling_pct'], '.0f', '%')} | "
                     f"{note} |")
    return "\n".join(lines)


def verdicts(rows: list[dict], length: int) -> list[str]:
    """Per model at ``length``: the fastest runtime, and whether fused + dynamic int8 is it."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        measured = [r for r in rows if r["model"] == model and r["length"] == length and r["p50_ms"]]
        if not measured:
            continue
        best = min(measured, key=lambda r: r["p50_ms"])
        fused_int8 = next((r for r in measured if r["runtime"] == FUSED_INT8), None)
        if best["runtime"] == ARTIFACT.name:  # an --artifact: one runtime, nothing to rank
            answer = "(an artifact, timed as built)"
        elif fused_int8 is best:
            answer = "yes"
        elif fused_int8 is None:
            answer = "no (it failed)"
        else:
            answer = f"no ({fused_int8['p50_ms']:.2f} ms, {fused_int8['p50_ms'] / best['p50_ms']:.2f}x the fastest)"
        lines.append(f"{model} @ {length}: fastest {best['runtime']} ({best['p50_ms']:.2f} ms, "
                     f"{cell(best['speedup'], '.2f', 'x')} vs teacher PyTorch fp32); "
                     f"{FUSED_INT8} the winner: {answer}")
    return lines


def stage_accuracy(path: Path) -> float | None:
    """Test accuracy of what a compress stage ships, from the record.json above ``path``."""
    for folder in (path.parent, *path.parents):
        if (folder / "record.json").is_file():
            return json.loads((folder / "record.json").read_text(encoding="utf-8"))["after"]["accuracy"]
    return None


def front_table(rows: list[dict], accuracy: dict[str, float | None], length: int) -> str:
    """The --artifact rows at ``length`` with their test accuracy, and which of them are on the
    accuracy (max) / size (min) / p50 (min) Pareto front among them."""
    measured = [r for r in rows if r["runtime"] == ARTIFACT.name and r["length"] == length and r["p50_ms"]]

    def dominated(r: dict) -> bool:
        a = accuracy.get(r["model"])
        return a is not None and any(
            (accuracy.get(o["model"]) or 0) >= a and o["size_mb"] <= r["size_mb"] and o["p50_ms"] <= r["p50_ms"]
            and ((accuracy.get(o["model"]) or 0) > a or o["size_mb"] < r["size_mb"] or o["p50_ms"] < r["p50_ms"])
            for o in measured)

    lines = [f"| artifact | test accuracy | size MB | p50 ms @{length} | speed-up vs teacher PyTorch fp32 | on the front |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in sorted(measured, key=lambda r: r["p50_ms"]):
        a = accuracy.get(r["model"])
        lines.append(f"| {r['model']} | {cell(a, '.4f')} | {r['size_mb']:.1f} | {r['p50_ms']:.2f} | "
                     f"{cell(r['speedup'], '.2f', 'x')} | {'-' if a is None else 'no' if dominated(r) else 'yes'} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS),
                        help=f"comma-separated, from {','.join(MODELS)}")
    parser.add_argument("--lengths", type=lambda s: [int(n) for n in s.split(",")], default=[16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (PyTorch and ONNX Runtime)")
    parser.add_argument("--runs", type=int, default=50, help="timed passes per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed passes before them")
    parser.add_argument("--config", default="examples/thucnews.yaml", help="data and tokenizer of the calibration")
    parser.add_argument("--out", type=Path, help="write every row (and the ceilings) as JSON")
    parser.add_argument("--artifact", action="append", default=[], type=artifact_arg, metavar="LABEL=FILE.onnx",
                        help="also time an ONNX file alambic built (repeatable)")
    parser.add_argument("--runtimes", type=lambda s: s.split(","), default=[r.name for r in RUNTIMES],
                        help="comma-separated runtime names to run (default: all); the baseline, "
                             f"{BASELINE[1]!r}, is always run")
    args = parser.parse_args()
    unknown = sorted(set(args.runtimes) - {r.name for r in RUNTIMES})
    if unknown:
        parser.error(f"unknown runtimes {', '.join(unknown)}; choose from {', '.join(r.name for r in RUNTIMES)}")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


def artifact_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE.onnx with an existing file, got {text!r}")
    return label, Path(path)


def artifact_subject(label: str, path: Path, work: Path) -> Subject:
    """An ONNX file as a Subject: ``model`` is the file; its config from the nearest model/config.json."""
    from transformers import AutoConfig

    for folder in (path.parent, *path.parents):
        if (folder / "model" / "config.json").is_file() or (folder / "config.json").is_file():
            config_dir = folder / "model" if (folder / "model" / "config.json").is_file() else folder
            return Subject(label, path, work, None, config=AutoConfig.from_pretrained(config_dir))
    raise SystemExit(f"--artifact {label}: no config.json beside or above {path}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    print(f"machine: {machine.summary()}")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, "
          f"{args.runs} runs after {args.warmup} warm-up, batch 1")
    print(f"command: python {shlex.join(sys.argv)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="alambic-inference-") as tmp, torch_threads(args.threads):
        work = Path(tmp)
        calibration, tokenizer, registry = headlines(args.config, work)
        measured = ceilings(work, args.threads, args.runs, args.warmup)
        norms = norm_kernels(work, args.threads, args.runs, args.warmup)
        rows, fused_ops = [], {}
        for name in args.models:
            subject = Subject(name, build_model(name, registry, len(tokenizer)), work, calibration)
            for runtime in RUNTIMES:
                if runtime.name in args.runtimes or runtime.name == BASELINE[1]:
                    rows += runtime_rows(subject, runtime, len(tokenizer), args)
            fused_ops[name] = subject.fused_ops
        for label, path in args.artifact:
            subject = artifact_subject(label, path, work)
            rows += runtime_rows(subject, ARTIFACT, subject.config.vocab_size, args)
    ceiling = best_ceiling(measured)
    derive(rows, ceiling)
    print(f"\n{ceiling_table(measured)}\n\nceiling: fp32 {ceiling['fp32']:.1f} GFLOP/s, "
          f"int8 {ceiling['int8']:.1f} GOP/s (the best of each precision above)")
    print("residual + LayerNorm kernels, p50: " + ", ".join(f"{k['kernel']} {k['p50_us']:.1f} us" for k in norms))
    for name, counts in fused_ops.items():
        fused = ", ".join(f"{op} {count}" for op, count in (counts or {}).items())
        print(f"optimize_onnx fused in {name}: {fused or 'nothing'}")
    print(f"\n{table(rows)}")
    length = REFERENCE_LENGTH if REFERENCE_LENGTH in args.lengths else args.lengths[0]
    print("\n" + "\n".join(verdicts(rows, length)))
    if args.artifact:
        print("\n" + front_table(rows, {label: stage_accuracy(path) for label, path in args.artifact}, length))
    if args.out:
        report = {"machine": machine.describe(), "command": shlex.join(sys.argv),
                  "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
                  "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
                  "ceilings": measured, "ceiling": ceiling, "norm_kernels": norms, "fused_operators": fused_ops, "rows": rows}
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
