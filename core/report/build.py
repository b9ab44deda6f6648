"""The run report: ``report.md`` and ``report.html`` in the run directory, written for people.

::

    write_report("examples/thucnews.yaml")   # or a RunContext, or a run directory; returns where
    report = build_report(ctx)                # sections of paragraphs, tables, pictures
    report.missing                            # the sections that lacked their inputs, one line each
    save_report(report)                       # report.md (+ report_images/), report.html: atomically

The sections: data (splits, sizes, labels, data.golden) · teacher (its metrics, its size and
latency in each runtime) · candidates (every row of results.parquet: validation accuracy, which
every choice uses, and test accuracy, reported only; golden accuracy, params, size, latency
p50/p90, peak memory, speed-up split into runtime x compression, size ratio vs the teacher) · the
Pareto plot · the selected model and why · it against its teacher (speed-up, both sides named)
and against its distilled student (accuracy drops per split) · its guard decisions · its
per-class F1, confusion matrix and prediction distribution against the teacher's on the test
split (the seeds watch drift this way) · export verification · the machines. A section whose
inputs do not exist yet (no selection, no export) says so in one line; given a run directory
instead of its config, so do the ones that need the data or the teacher.

The speed-up of a candidate is against the run's teacher in the teacher's fastest runtime here
(PyTorch or ONNX Runtime, fp32, at the candidate's threads and lengths: the baseline), split
exactly (the teacher in its other runtime stays in the tables as a reference, not the baseline)::

    total = teacher[fastest] / candidate = runtime share x compression share
    runtime share     = teacher[fastest] / teacher[candidate's runtime]     (fp32 both)
    compression share = teacher[candidate's runtime] / candidate            (one runtime)

What the report computes is cached as stages of the store, so that writing it again is quick:
``teacher-measure`` (the teacher in one runtime, fp32, at the candidates' threads and lengths, no
memory child, keyed by this machine) and ``evaluation`` (a shipped artifact on a split: the
selected one on test; every candidate and the teacher on data.golden). Every path read from a
record (a row's ``stage``, record.json's ``artifact``) is checked to stay inside its folder
(:func:`alambic.store.inside`). Rendering and pictures: :mod:`alambic.report.html_page`.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.errors import AlambicError
from alambic.machine import identity, label, summary
from alambic.report.html_page import Image, Items, Section, Table
from alambic.store import Store, UnsafePathError, stable_hash

if TYPE_CHECKING:
    import pandas as pd

    from alambic.compress.measure import Measurement
    from alambic.run import RunContext

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
IMAGES_DIR = "report_images"  # the markdown's pictures; the HTML embeds its own
METRICS_FILE = "metrics.json"
MEASUREMENT_FILE = "measurement.json"
RUNTIME_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}
#: the runtimes the teacher is timed in (fp32), the fastest being every speed-up's baseline
TEACHER_RUNTIMES = ("pytorch", "onnxruntime")
SPLITS = ("validation", "test")


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]
    store: Store  # the run directory it is written to

    @property
    def missing(self) -> list[str]:
        return [f"{s.title}: {s.missing}" for s in self.sections if s.missing]


def _absent(id: str, title: str, why: str) -> Section:
    return Section(id, title, [why], missing=why)


# --- inputs ---------------------------------------------------------------------------------


@dataclass
class _Teacher:
    key: str
    path: Path
    metrics: dict[str, Any]  # metrics.json: validation, test (per_class, confusion), params
    timed: dict[tuple[str, int], Measurement]  # (runtime, threads): the teacher timed here, fp32
    untimed: dict[str, str] = field(default_factory=dict)  # runtime: why it could not be timed

    def at(self, threads: int) -> dict[str, Measurement]:
        """The teacher's measurements at ``threads``, by runtime, fastest first."""
        found = {rt: m for (rt, t), m in self.timed.items() if t == threads and _p50(m)}
        return dict(sorted(found.items(), key=lambda item: _p50(item[1])))


def _p50(m: Measurement) -> float | None:
    return m.headline()["latency_p50_ms"]


@dataclass
class _Run:
    store: Store
    ctx: RunContext | None
    results: pd.DataFrame | None = None  # marked: on_front, knee
    selected: dict[str, Any] | None = None
    teacher: _Teacher | None = None
    golden: Any = None  # data.golden as a Dataset
    golden_scores: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # by candidate id, "teacher"

    @property
    def selected_row(self) -> dict[str, Any]:
        return (self.selected or {}).get("row") or {}


def _open(target: Any, quiet: bool) -> tuple[Store, RunContext | None]:
    from alambic.search.front import RESULTS, resolve_run
    from alambic.run import RunContext

    if isinstance(target, RunContext):
        return target.store, target
    path = Path(os.fspath(target))
    if path.is_file() and path.name != RESULTS:
        ctx = RunContext.open(path, quiet=quiet)
        return ctx.store, ctx
    # a run directory (before its search, too), results.parquet or a URI: no config, fewer sections
    return (Store.open(path) if path.is_dir() else resolve_run(target).store), None


def _gather(target: Any, quiet: bool) -> _Run:
    from alambic.search.front import RESULTS, SELECTED, Run, load_results, mark_front

    store, ctx = _open(target, quiet)
    run = _Run(store, ctx)
    if store.exists(RESULTS):
        run.results = mark_front(load_results(store), Run(store, ctx.config if ctx else None).objectives)
    if store.exists(SELECTED):
        run.selected = store.read_json(SELECTED)
    if ctx is not None:
        run.teacher = _teacher(ctx, _threads(run))
        _golden(run)
    return run


def _measure_config(ctx: RunContext) -> Any:
    from alambic.config import MeasureConfig

    return ctx.config.search.measure if ctx.config.search is not None else MeasureConfig()


def _threads(run: _Run) -> list[int]:
    """The threads the candidates were timed at (the teacher is timed at each); else the config's."""
    found = {int(r["latency_threads"]) for r in _ok_rows(run.results) if r.get("latency_threads")}
    return sorted(found) or [_measure_config(run.ctx).threads]


def _teacher(ctx: RunContext, threads: list[int]) -> _Teacher | None:
    from alambic.train.teacher import current_teacher_key

    key = current_teacher_key(ctx)
    if ctx.store.load_manifest(ctx.store.stage_path(key)) is None:
        return None  # not trained yet: a report never trains
    path = ctx.store.local_path(ctx.store.stage_path(key))
    metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
    teacher = _Teacher(key, path, metrics, {})
    for runtime in TEACHER_RUNTIMES:
        for n in threads:
            try:
                teacher.timed[runtime, n] = teacher_measurement(ctx, key, path, runtime=runtime, threads=n)
            except Exception as exc:  # noqa: BLE001 - a model ONNX cannot export: PyTorch stays the baseline
                if runtime == "pytorch":
                    raise
                log.warning("the teacher could not be timed in %s: %s", runtime, exc)
                teacher.untimed[runtime] = f"{type(exc).__name__}: {exc}"
    return teacher


def teacher_measurement(ctx: RunContext, key: str, path: Path, *, runtime: str = "pytorch",
                        threads: int = 1) -> Measurement:
    """The teacher folder timed as the candidates are (the search's lengths and runs, ``threads``),
    in ``runtime`` at fp32 (ONNX Runtime: exported and fused as the candidates' graphs are), without
    the memory child; once per teacher, settings and machine (a ``teacher-measure`` stage)."""
    from alambic.compress.measure import Measurement

    measure = _measure_config(ctx)
    settings = {"lengths": tuple(measure.lengths), "runs": measure.runs, "warmup": measure.warmup}
    here = identity()  # a timing is this machine's: never reused elsewhere
    stage = stable_hash({"stage": "teacher-measure", "teacher": key, "data": ctx.prepared.tokenized_key,
                         "runtime": runtime, "threads": threads, "memory": False, "machine": here,
                         **settings})[:32]

    def build(folder: Path) -> dict[str, Any]:
        found = _time_teacher(ctx, path, runtime, threads, settings)
        (folder / MEASUREMENT_FILE).write_text(json.dumps(found.to_dict(), indent=2), encoding="utf-8")
        return found.headline()

    ctx.store.get_or_build_stage(stage, "teacher-measure", build)
    done = ctx.store.local_path(ctx.store.stage_path(stage)) / MEASUREMENT_FILE
    return Measurement.from_dict(json.loads(done.read_text(encoding="utf-8")))


def _time_teacher(ctx: RunContext, path: Path, runtime: str, threads: int, settings: dict[str, Any]) -> Measurement:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alambic.compress.measure import measure_onnx, measure_pytorch, vocab_files
    from alambic.train.models import load_pretrained
    from alambic.ship.onnx_export import attention_dims, export_onnx, optimize_onnx

    tokenized, _ = ctx.tokenize(AutoTokenizer.from_pretrained(str(path)))  # the teacher's own tokenizer
    if runtime == "pytorch":
        return measure_pytorch(path, tokenized["test"], threads=threads, memory=False, **settings)
    if runtime != "onnxruntime":
        raise AlambicError(f"cannot time the teacher in runtime {runtime!r} ({', '.join(TEACHER_RUNTIMES)} can be)")
    model = load_pretrained(path, AutoModelForSequenceClassification).eval()
    with tempfile.TemporaryDirectory(prefix="alambic-teacher-") as tmp:  # the graph is not kept: ~ the weights
        heads, width = attention_dims(model.config)  # fused as the quantizers fuse the candidates' graphs
        graph = optimize_onnx(export_onnx(model, Path(tmp) / "teacher.onnx"), Path(tmp) / "teacher.fused.onnx",
                              heads, width)
        found = measure_onnx(graph, tokenized["test"], threads=threads, memory=False,
                             tokenizer_files=vocab_files(path), **settings)
    found.artifact = f"{path} (exported to ONNX, fused)"
    return found


def evaluate_artifact(ctx: RunContext, model_key: str, model_dir: Path, rows: Any, rows_key: str, *,
                      runtime: str = "pytorch", artifact: Path | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion of a shipped artifact on raw rows (text,
    label), tokenized by the model folder's own tokenizer (a pruned vocabulary has its own); cached
    as an ``evaluation`` stage keyed by the model's stage and ``rows_key`` (what the rows are)."""
    stage = stable_hash({"stage": "evaluation", "model": model_key, "rows": rows_key, "runtime": runtime,
                         "max_length": ctx.config.tokenizer.max_length})[:32]

    def build(folder: Path) -> dict[str, Any]:
        metrics = _evaluate(ctx, model_dir, rows, runtime, artifact)
        (folder / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
        return {k: metrics[k] for k in ("accuracy", "macro_f1", "examples")}

    ctx.store.get_or_build_stage(stage, "evaluation", build)
    done = ctx.store.local_path(ctx.store.stage_path(stage)) / METRICS_FILE
    return json.loads(done.read_text(encoding="utf-8"))


def _evaluate(ctx: RunContext, model_dir: Path, rows: Any, runtime: str, artifact: Path | None) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alambic.data.dataset import progress_bars
    from alambic.compress.measure import vocab_files
    from alambic.train.loop import MODEL_INPUTS

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir)) if vocab_files(model_dir) else ctx.prepared.tokenizer
    length = ctx.config.tokenizer.max_length

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        found = tokenizer(batch["text"], truncation=True, max_length=length)
        return {k: found[k] for k in MODEL_INPUTS if k in found} | {"length": [len(i) for i in found["input_ids"]]}

    with progress_bars(False):  # a given fingerprint spares datasets from hashing the tokenizer
        tokenized = rows.map(encode, batched=True, remove_columns=["text"], new_fingerprint=uuid.uuid4().hex)
    if runtime == "onnxruntime":
        from alambic.compress.measure import onnx_evaluate
        from alambic.ship.onnx_export import ort_session

        return onnx_evaluate(ort_session(artifact, 1), tokenized)
    if runtime != "pytorch":
        raise AlambicError(f"cannot evaluate runtime {runtime!r} here (pytorch and onnxruntime can be)")
    from alambic.train.models import load_pretrained
    from alambic.train.loop import evaluate

    model = load_pretrained(model_dir, AutoModelForSequenceClassification).eval()
    if artifact is not None and artifact.is_file():  # a quantized state dict shipped instead of the weights
        import torch
        import torchao.quantization  # noqa: F401 - registers the int8 tensor classes for loading

        model.load_state_dict(torch.load(artifact, weights_only=True, mmap=True), assign=True)
    return evaluate(model, tokenized)


def _stage(run: _Run, row: dict[str, Any], source: str) -> tuple[Path, dict[str, Any]]:
    """A row's compress stage and its record.json, every path in them checked to stay inside (a
    tampered row or record fails here, naming the file and key, instead of reading elsewhere).

    :param source: where the row was read: results.parquet or selected.json
    """
    from alambic.compress.chain import RECORD_FILE
    from alambic.ship.export import check_record_paths

    stage = run.store.record_path(row.get("stage"), source=f"{run.store.uri}/{source}", key="stage")
    record = json.loads((stage / RECORD_FILE).read_text(encoding="utf-8"))
    check_record_paths(stage, record)
    return stage, record


def _candidate_scores(run: _Run, row: dict[str, Any], rows: Any, rows_key: str, source: str) -> dict[str, Any]:
    """A candidate's shipped artifact (its stage's record.json says which, in which runtime) on rows."""
    from alambic.compress.chain import MODEL_DIR, RECORD_FILE
    from alambic.store import inside

    stage, record = _stage(run, row, source)
    artifact = inside(stage, record["artifact"], source=f"{stage}/{RECORD_FILE}", key="artifact")
    return evaluate_artifact(run.ctx, record["key"], stage / MODEL_DIR, rows, rows_key, runtime=record["runtime"],
                             artifact=artifact)


def _results_source(row: dict[str, Any]) -> str:
    from alambic.search.front import RESULTS

    return f"{RESULTS} (candidate {row.get('candidate_id')})"


def _golden(run: _Run) -> None:
    """Every ok candidate, and the teacher, on data.golden (the user's hand-checked rows)."""
    from alambic.data.dataset import file_sha256, load_golden

    ctx = run.ctx
    run.golden = load_golden(ctx.config.data, ctx.prepared.label_names)
    if run.golden is None:
        return
    key = stable_hash({"golden": file_sha256(ctx.config.data.golden), "data": ctx.prepared.report.fingerprint})
    if run.teacher is not None:
        run.golden_scores["teacher"] = evaluate_artifact(ctx, run.teacher.key, run.teacher.path, run.golden, key)
    for row in _ok_rows(run.results):
        try:
            run.golden_scores[row["candidate_id"]] = _candidate_scores(run, row, run.golden, key, _results_source(row))
        except UnsafePathError:
            raise  # a tampered record is not a missing stage: the report stops and says where
        except (AlambicError, OSError) as exc:  # its stage gone from the store: the others still count
            log.warning("candidate %s not evaluated on data.golden: %s", row["candidate_id"], exc)
            run.golden_scores[row["candidate_id"]] = None


def _ok_rows(df: pd.DataFrame | None) -> list[dict[str, Any]]:
    from alambic.search.front import json_row

    return [] if df is None else [json_row(r) for _, r in df[df["status"] == "ok"].iterrows()]


# --- sections -------------------------------------------------------------------------------


def _num(value: Any, spec: str = ",.2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{int(value) if spec[-1:] == 'd' else value:{spec}}{suffix}"  # a count a pandas column made float


def _data_section(run: _Run) -> Section:
    from alambic.data.dataset import describe_data

    if run.ctx is None:
        return _absent("data", "Data", "No run config given (RUN is a run directory): the data summary needs it.")
    data, config = run.ctx.prepared, run.ctx.config
    splits = dict(data.tokenized) | ({"golden": run.golden} if run.golden is not None else {})
    summary = describe_data(splits, data.report, max_length=config.tokenizer.max_length)
    stats = ("p50", "p90", "p99", "max")
    sizes = [[name, f"{s['rows']:,}", *(str(s.get("tokens", {}).get(k, "-")) for k in stats),
              _num(s.get("tokens", {}).get("over_max_length"), ".2%")] for name, s in summary["splits"].items()]
    labels = [[str(i), name, *(f"{s['labels'][name]:,}" for s in summary["splits"].values())]
              for i, name in enumerate(summary["label_names"])]
    blocks: list[Any] = [
        f"Source `{config.data.source}`, {len(labels)} labels; tokens counted with [CLS] and [SEP] (max_length "
        f"{config.tokenizer.max_length}); data fingerprint `{summary['fingerprint'][:12]}`.",
        Table(["split", "rows", *(f"tokens {s}" for s in stats), "> max_length"], sizes),
        Table(["id", "label", *summary["splits"]], labels)]
    return Section("data", "Data", blocks + ([Items(summary["warnings"])] if summary["warnings"] else []))


def _teacher_section(run: _Run) -> Section:
    if run.teacher is None:
        why = ("No trained teacher in the store yet: run `alambic teacher RUN`." if run.ctx else
               "No run config given: the teacher is found by its config.")
        return _absent("teacher", "Teacher", why)
    t = run.teacher
    scores = {split: t.metrics[split] for split in SPLITS if split in t.metrics}
    scores |= {"golden": run.golden_scores["teacher"]} if run.golden_scores.get("teacher") else {}
    rows = [[split, _num(s.get("accuracy"), ".4f"), _num(s.get("macro_f1"), ".4f"), _num(s.get("examples"), ",")]
            for split, s in scores.items()]
    blocks: list[Any] = [
        Table(["split", "accuracy", "macro-F1", "examples"], rows),
        (f"{t.metrics.get('params', 0):,} parameters, trained in {t.metrics.get('wall_time_s', '?')} s; stage "
         f"`{t.key[:12]}`. Timed here, fp32, batch 1, as the candidates are:"),
        Table(["runtime", "threads", "size MB", "p50 ms", "p90 ms", "tokens", ""], _timed_rows(t))]
    return Section("teacher", "Teacher", blocks + [f"Not timed in {_runtime_label(rt)}: {why}"
                                                   for rt, why in t.untimed.items()])


def _timed_rows(t: _Teacher) -> list[list[str]]:
    rows = []
    for n in sorted({n for _, n in t.timed}):
        for i, (rt, m) in enumerate(t.at(n).items()):  # fastest first: the baseline
            h = m.headline()
            rows.append([_runtime_label(rt), str(n), _num(h["size_mb"]), _num(h["latency_p50_ms"]),
                         _num(h["latency_p90_ms"]), str(h["latency_length"]),
                         "the fastest: every speed-up's baseline" if i == 0 else ""])
    return rows


# --- speed-up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedUp:
    """A candidate's p50 against the teacher's, split exactly: ``total = runtime × compression``."""

    baseline: str  # the teacher's fastest runtime here: what the total is against
    runtime: str  # the candidate's runtime: the teacher timed in it (fp32) is where the split falls
    runtime_share: float  # teacher in ``baseline`` ÷ teacher in ``runtime``
    compression_share: float  # teacher in ``runtime`` ÷ the candidate, in that runtime

    @property
    def total(self) -> float:
        return self.runtime_share * self.compression_share


def speed_up(teacher_p50: dict[str, float], runtime: str, p50: float | None) -> SpeedUp | None:
    """The speed-up of a candidate timed at ``p50`` ms in ``runtime``, against the teacher's p50 by
    runtime (same threads and lengths); None when either side was not timed."""
    timed = {rt: ms for rt, ms in teacher_p50.items() if ms}
    if runtime not in timed or not p50 or (isinstance(p50, float) and math.isnan(p50)):
        return None
    baseline = min(timed, key=timed.__getitem__)
    return SpeedUp(baseline, runtime, timed[baseline] / timed[runtime], timed[runtime] / p50)


def _speed_up(run: _Run, r: dict[str, Any]) -> SpeedUp | None:
    if run.teacher is None:
        return None
    timed = run.teacher.at(int(r.get("latency_threads") or 0))
    return speed_up({rt: _p50(m) for rt, m in timed.items()}, str(r.get("runtime")), r.get("latency_p50_ms"))


def _runtime_label(runtime: str, quantization: Any = None) -> str:
    """``ONNX Runtime dynamic-int8``, ``PyTorch fp32``: the runtime and what the weights are."""
    precision = quantization if quantization and quantization != "none" else "fp32"
    return f"{RUNTIME_NAMES.get(runtime, runtime)} {precision}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}×"


# --- candidates -----------------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> str:
    return _num(a / b, ".2f", "×") if a and b else "-"


def _teacher_rows(run: _Run) -> list[dict[str, Any]]:
    """The teacher as rows of the candidates table: one per runtime timed, the fastest first."""
    t = run.teacher
    if t is None:
        return []
    threads = int(run.selected_row.get("latency_threads") or _threads(run)[0])
    accuracy = {f"{p}_{k}": t.metrics.get(split, {}).get(k) for p, split in (("val", "validation"), ("test", "test"))
                for k in ("accuracy", "macro_f1")}
    return [m.headline() | accuracy | {"candidate_id": "teacher", "runtime": rt, "quantization": "none",
                                       "latency_threads": threads, "peak_mem_mb": None}
            for rt, m in t.at(threads).items()]


def _candidates_section(run: _Run) -> Section:
    if run.results is None:
        return _absent("candidates", "Candidates", "No search results yet (results.parquet): run `alambic search RUN`.")
    golden, chosen = bool(run.golden_scores), (run.selected or {}).get("candidate_id")
    teacher = _teacher_rows(run)
    size = teacher[0]["size_mb"] if teacher else None  # the baseline: the teacher in its fastest runtime

    def line(mark: str, r: dict[str, Any]) -> list[str]:
        score, s = run.golden_scores.get(r["candidate_id"]) or {}, _speed_up(run, r)
        return [mark, r["candidate_id"], *(str(r.get(k) or "") for k in ("student", "pruning", "quantization",
                "runtime")), *(_num(r.get(k), ".4f") for k in ("val_accuracy", "val_macro_f1", "test_accuracy",
                                                               "test_macro_f1")),
                *([_num(score.get("accuracy"), ".4f")] if golden else []), _num(r.get("params"), ","),
                *(_num(r.get(k)) for k in ("size_mb", "latency_p50_ms", "latency_p90_ms")),
                _num(r.get("peak_mem_mb"), ",.1f"), *(_times(getattr(s, k, None)) for k in
                                                      ("total", "runtime_share", "compression_share")),
                _ratio(size, r.get("size_mb"))]

    rows = [line("teacher, baseline" if i == 0 else "teacher", r) for i, r in enumerate(teacher)]
    ok = sorted(_ok_rows(run.results), key=lambda r: (not r["on_front"], -(r["val_accuracy"] or 0), r["size_mb"] or 0))
    for r in ok:
        marks = (("selected", r["candidate_id"] == chosen), ("knee", r.get("knee")), ("front", r["on_front"]))
        rows.append(line(", ".join(m for m, on in marks if on), r))
    headers = ["", "candidate", "student", "pruning", "quant", "runtime", "val accuracy", "val macro-F1",
               "test accuracy", "test macro-F1", *(["golden accuracy"] if golden else []), "params", "size MB",
               "p50 ms", "p90 ms", "peak MB", "speed-up", "= runtime", "× compression", "smaller"]
    blocks: list[Any] = [Table(headers, rows, _candidates_caption(run, len(ok)),
                               tuple(i for i, r in enumerate(rows) if r[1] == chosen))]
    failed = [r for _, r in run.results[run.results["status"] != "ok"].iterrows()]
    if failed:
        blocks += [f"{len(failed)} failed candidate(s):", Items([
            f"`{r['candidate_id']}` {r.get('student')} / {r.get('pruning')} / {r.get('quantization')}: {r.get('error')}"
            for r in failed])]
    return Section("candidates", "Candidates", blocks)


def _candidates_caption(run: _Run, ok: int) -> str:
    machines = sorted({str(r.get("latency_machine")) for r in _ok_rows(run.results) if r.get("latency_machine")})
    text = (f"{ok} measured candidates, {int(run.results['on_front'].sum())} on the Pareto front. Validation "
            "accuracy: what every choice is made on; test accuracy: measured once, reported only. Latency: batch 1 "
            "on the CPU at the reference length, timed after the search one candidate at a time"
            + (f" on {'; '.join(machines)}" if machines else "") + "; peak MB: a fresh process running the "
            "artifact once. ")
    if run.teacher is None:
        return text + "No teacher timed here: no speed-up, no size ratio."
    return text + ("Speed-up = the teacher's p50 in its fastest runtime here (the baseline row, fp32, same threads "
                   "and lengths) ÷ the candidate's = runtime × compression: runtime = the teacher in that runtime ÷ "
                   "the teacher in the candidate's runtime (fp32 both); compression = the teacher in the candidate's "
                   "runtime ÷ the candidate. Smaller = the baseline's size ÷ the candidate's.")


def _front_section(run: _Run) -> Section:
    from alambic.search.front import plot_front

    if run.results is None or not (run.results["status"] == "ok").any():
        return _absent("front", "Pareto front", "No measured candidate yet: nothing to plot.")
    with tempfile.TemporaryDirectory(prefix="alambic-report-") as tmp:
        png = plot_front(run.results, Path(tmp) / "front.png").read_bytes()
    knee = ", ".join(run.results[run.results["knee"]]["candidate_id"]) or "-"
    return Section("front", "Pareto front", [
        (f"Validation accuracy (what the front and the selection use) against size, coloured by latency p50; test "
         f"accuracy drawn beside, reported only; the front joined; its knee: `{knee}`. Latency and memory were "
         f"timed after the search, one candidate at a time.{_proxy_note(run)}"),
        Image("front.png", png, "Pareto front: validation accuracy against size")])


def _proxy_note(run: _Run) -> str:
    """What Tune optimized in place of the objectives a trial cannot time (nsga2, tpe)."""
    from alambic.search.algorithms import proxied

    search = run.ctx.config.search if run.ctx is not None else None
    if search is None or search.algorithm not in ("nsga2", "tpe"):
        return ""
    return "".join(f" During the {search.algorithm} search, Tune optimized {proxy} in place of {metric} (a trial "
                   f"times nothing)." for metric, proxy in proxied(search.objectives).items())


def _selected_section(run: _Run) -> Section:
    sel, row = run.selected, run.selected_row
    if sel is None:
        return _absent("selected", "Selected model", "No selection yet (selected.json): run `alambic select RUN`.")
    facts = [("candidate", f"`{sel['candidate_id']}`"), ("policy", sel.get("summary", "")),
             *((k, row.get(k)) for k in ("student", "pruning", "quantization", "runtime")),
             ("validation accuracy (chosen on)", _accuracy(row, "val")),
             ("test accuracy (reported only)", _accuracy(row, "test")),
             ("size", _num(row.get("size_mb"), ",.2f", " MB")),
             ("latency p50 / p90", (f"{_num(row.get('latency_p50_ms'))} / {_num(row.get('latency_p90_ms'))} ms at "
                                    f"{_num(row.get('latency_threads'), 'd')} thread(s)")),
             ("artifact", f"`{row.get('artifact')}`"), ("selected at", sel.get("selected_at", ""))]
    blocks: list[Any] = [Table(["", ""], [[k, str(v)] for k, v in facts]),
                         f"{sel.get('qualifying', '?')} of {sel.get('considered', '?')} measured candidates qualify "
                         f"({sel.get('failed', 0)} failed). Why this one:", Items(list(sel.get("reasons", [])))]
    return Section("selected", "Selected model", blocks + (["Notes:", Items(sel["notes"])] if sel.get("notes") else []))


def _accuracy(row: dict[str, Any], split: str) -> str:
    examples = row.get(f"{split}_examples")  # a float once a pandas column held a null
    return _num(row.get(f"{split}_accuracy"), ".4f") + (f" on {int(examples):,} rows" if examples else "")


def _against_section(run: _Run) -> Section:
    title = "Selected model against its teacher and student"
    row = run.selected_row
    if not row:
        return _absent("against", title, "No selection yet (selected.json): run `alambic select RUN`.")
    blocks = _speed_up_blocks(run, row) if run.teacher else [
        ("No teacher here (it needs the run config and a trained teacher): no speed-up, and accuracy against the "
         "distilled student only.")]
    return Section("against", title, [*blocks, _drops(run, row)])


def _speed_up_blocks(run: _Run, row: dict[str, Any]) -> list[Any]:
    t, threads, s = run.teacher, int(row.get("latency_threads") or 0), _speed_up(run, row)
    timed = t.at(threads)
    if s is None:
        why = t.untimed.get(str(row.get("runtime")), "no latency measured on one side")
        return [(f"No speed-up: the candidate and the teacher are not both timed in "
                 f"{_runtime_label(row.get('runtime'))} at {threads} thread(s) ({why}).")]
    candidate = f"`{row['candidate_id']}` ({row.get('student')}; {row.get('pruning')})"
    teacher = f"teacher `{t.key[:12]}`"
    roles = {s.baseline: "the baseline: its fastest runtime here", s.runtime: "in the candidate's runtime"}
    if s.baseline == s.runtime:
        roles[s.runtime] = "the baseline (its fastest runtime here), in the candidate's runtime"
    sides = [["candidate (shipped)", candidate, _runtime_label(s.runtime, row.get("quantization")), str(threads),
              _num(row.get("latency_p50_ms"))]]
    sides += [[f"teacher: {roles.get(rt, 'a reference only, not the baseline')}", teacher, _runtime_label(rt),
               str(threads), _num(_p50(m))] for rt, m in timed.items()]
    length = next(iter(timed.values())).headline()["latency_length"]
    where = f"the candidate on {row.get('latency_machine') or 'the machine the search timed it on'}"
    text = (f"Speed-up {s.total:,.2f}× against the {teacher} in {_runtime_label(s.baseline)} (its fastest here) = "
            f"runtime {s.runtime_share:,.2f}× (the teacher: {_runtime_label(s.baseline)} → "
            f"{_runtime_label(s.runtime)}) × compression {s.compression_share:,.2f}× (the teacher → {candidate}, both "
            f"in {RUNTIME_NAMES.get(s.runtime, s.runtime)}); {threads} thread(s), {length} tokens, batch 1.")
    blocks: list[Any] = [text, Table(["side", "model", "runtime", "threads", f"p50 ms ({length} tokens)"], sides,
                                     f"The teacher timed here ({label()}); {where}.")]
    distilled = _distilled_from(run, row)
    if distilled and distilled != t.key:
        blocks.append(f"Note: this candidate was distilled from teacher `{distilled[:12]}`, not the run's current "
                      f"teacher `{t.key[:12]}`: the comparisons with the teacher are against the current one.")
    return blocks


def _distilled_from(run: _Run, row: dict[str, Any]) -> str | None:
    """The teacher key the candidate's distilled student records (its distill stage's metrics.json)."""
    if not row.get("distill_key"):
        return None
    try:
        path = run.store.local_path(run.store.stage_path(str(row["distill_key"])))
        return json.loads((path / METRICS_FILE).read_text(encoding="utf-8")).get("teacher")
    except (AlambicError, OSError, ValueError):
        return None


def _drops(run: _Run, row: dict[str, Any]) -> Table:
    """Accuracy points the shipped model lost against the distilled student and the teacher, per split."""
    shipped = {split: row.get(f"{p}_accuracy") for p, split in (("val", "validation"), ("test", "test"))}
    against = [("distilled student, before pruning and quantization",
                {"validation": row.get("student_val_accuracy"), "test": row.get("student_test_accuracy")})]
    if run.teacher:
        against.append((f"teacher `{run.teacher.key[:12]}`",
                        {split: run.teacher.metrics.get(split, {}).get("accuracy") for split in SPLITS}))
    rows = [[who, split, _num(ref[split], ".4f"), _num(shipped[split], ".4f"),
             _num(100 * (ref[split] - shipped[split]), "+.2f") if None not in (ref[split], shipped[split]) else "-"]
            for who, ref in against for split in SPLITS]
    return Table(["against", "split", "its accuracy", "shipped accuracy", "drop (points)"], rows,
                 "Drop = 100 × (its accuracy − the shipped model's), on the same split; negative: the shipped model "
                 "is the more accurate. The shipped model: its row's val_accuracy and test_accuracy.")


def _guard_section(run: _Run) -> Section:
    from alambic.search.front import SELECTED

    if not run.selected_row:
        return _absent("guard", "Guard decisions", "No selection yet: the decisions are the selected candidate's.")
    _, record = _stage(run, run.selected_row, SELECTED)
    guard, decisions = record.get("guard", {}), record.get("decisions", [])
    blocks: list[Any] = [f"Each step is evaluated on the validation split: one costing more than "
                         f"{guard.get('max_drop', '?')} points is retried at half strength "
                         f"({guard.get('retries', '?')} times), then reverted."]
    headers = ["step", "attempt", "strength", "validation before", "after", "drop (points)", "outcome", "note"]
    rows = [[d["step"], str(d["attempt"]), _num(d.get("strength"), "g"), _num(d["accuracy_before"], ".4f"),
             _num(d["accuracy_after"], ".4f"), _num(d["drop_points"], "+.2f"), d["outcome"], d.get("note", "")]
            for d in decisions]
    blocks.append(Table(headers, rows) if rows else "No compression step: nothing to guard.")
    if record.get("agreement"):
        a = record["agreement"]
        blocks.append(f"The quantized graph against its fp32 ONNX source on {a['examples']:,} test rows: argmax "
                      f"agreement {a['argmax_agreement']:.2%} ({'ok' if a['ok'] else 'below'} {a['threshold']:.0%}), "
                      f"max |logit diff| {a['max_abs_diff']:.4f}.")
    return Section("guard", "Guard decisions", blocks)


def _quality_section(run: _Run) -> Section:
    from alambic.report import html_page as draw

    row, title = run.selected_row, "Selected model on the test split"
    if run.ctx is None or not row:
        return _absent("quality", title, "Needs the run config and a selection (`alambic select RUN`).")
    from alambic.search.front import SELECTED

    data, teacher = run.ctx.prepared, run.teacher.metrics["test"] if run.teacher else None
    found = _candidate_scores(run, row, data.raw["test"], f"{data.report.fingerprint}/test", SELECTED)
    names = data.label_names
    per_class = [[str(i), n, f"{c['support']:,}", *(f"{c[k]:.4f}" for k in ("precision", "recall", "f1")),
                  _num(teacher["per_class"][n]["f1"], ".4f") if teacher else "-"]
                 for i, (n, c) in enumerate(found["per_class"].items())]
    shares = {"true labels": draw.shares(found["confusion"], axis=1)}
    shares |= {"teacher": draw.shares(teacher["confusion"], axis=0)} if teacher else {}
    shares["selected"] = draw.shares(found["confusion"], axis=0)
    blocks: list[Any] = [
        f"The shipped artifact ({row.get('runtime')}) on {found['examples']:,} test rows: accuracy "
        f"{found['accuracy']:.4f}, macro-F1 {found['macro_f1']:.4f}."
        + ("" if draw.draws_names(names) else " The pictures name labels by id (no CJK font installed here)."),
        Table(["id", "label", "support", "precision", "recall", "F1", "teacher F1"], per_class),
        Image("confusion.png", draw.confusion_png(found["confusion"], names), "confusion matrix"),
        Table(["label", *(f"{k} %" for k in shares)], [[n, *(f"{100 * v[i]:.1f}" for v in shares.values())]
                                                      for i, n in enumerate(names)],
              "Share of the test rows per label: the true labels, then the predictions.")]
    if teacher:
        tvd = 0.5 * sum(abs(a - b) for a, b in zip(shares["selected"], shares["teacher"], strict=True))
        blocks.append(f"Prediction distribution against the teacher's: total variation distance {100 * tvd:.2f} "
                      "points.")
    blocks.append(Image("predictions.png", draw.distribution_png(shares, names), "prediction distribution"))
    return Section("quality", title, blocks)


def _export_section(run: _Run) -> Section:
    from alambic.ship.export import EXPORT_DIR, VERIFICATION_FILE

    if not run.store.exists(f"{EXPORT_DIR}/{VERIFICATION_FILE}"):
        return _absent("export", "Export", "No export yet (export/verification.json): run `alambic export RUN`.")
    found = run.store.read_json(f"{EXPORT_DIR}/{VERIFICATION_FILE}")
    formats = found.get("formats", {})
    rows = [[name, c["name"], c["value"], {True: "ok", False: "FAILED", None: ""}[c["ok"]]]
            for name, f in formats.items() for c in f.get("checks", [])]
    rows += [[name, f"size {file}", f"{size / 1e6:,.2f} MB", ""] for name, f in formats.items()
             for file, size in f.get("sizes", {}).items()]
    blocks: list[Any] = [f"Formats {', '.join(formats) or 'none'}, verified on {found.get('test_rows', 0):,} test rows "
                         f"against the source (its test accuracy {_num(found.get('source_test_accuracy'), '.4f')}).",
                         Table(["format", "check", "result", ""], rows)]
    if found.get("failed"):
        blocks.append(Items([f["message"] for f in found["failed"].values()]))
    manifest = run.store.load_manifest(EXPORT_DIR)
    if manifest is not None:
        blocks.append(f"Bundle `{EXPORT_DIR}/`: {len(manifest.files)} files, "
                      f"{sum(f.size for f in manifest.files) / 1e6:,.2f} MB, written {manifest.created_at}.")
    shipped, chosen = Path(str(found.get("stage", ""))).name, Path(str(run.selected_row.get("stage", ""))).name
    if chosen and shipped != chosen:  # selected again since the export
        blocks.append(f"Note: the bundle is of stage `{shipped[:12]}`, not the selected candidate's `{chosen[:12]}`: "
                      "run `alambic export RUN` again.")
    return Section("export", "Export", blocks)


def _machine_section(run: _Run) -> Section:
    seen: Counter[tuple[str, ...]] = Counter()
    for row in _ok_rows(run.results):  # timed after the search, on the node that ran it
        runtime = RUNTIME_NAMES.get(str(row.get("runtime")), str(row.get("runtime")))
        seen[str(row.get("latency_machine") or "-"), runtime, _num(row.get("latency_threads"), "d")] += 1
    rows = [[f"{n} candidate(s)", *key] for key, n in seen.items()]
    if run.teacher:  # a teacher-measure stage is keyed by the machine: it was timed here
        rows += [["the teacher", label(), RUNTIME_NAMES[rt], str(n)] for rt, n in sorted(run.teacher.timed)]
    rows.append(["this report", label(), "", ""])
    caption = (f"This machine: {summary()}. Latency and memory hold for the machine they were timed on (a speed-up "
               "across two machines compares the machines too); a phone differs (phone_latency_factor).")
    return Section("machine", "Machine", [Table(["timed", "machine", "runtime", "threads"], rows, caption)])


SECTIONS = (_data_section, _teacher_section, _candidates_section, _front_section, _selected_section,
            _against_section, _guard_section, _quality_section, _export_section, _machine_section)


# --- the report -----------------------------------------------------------------------------


def build_report(target: Any, *, quiet: bool = True) -> Report:
    """The report of a run: a RunContext, a run config (YAML), or a run directory (fewer sections)."""
    from alambic import __version__

    run = _gather(target, quiet)
    name = run.ctx.config.name if run.ctx else Path(run.store.uri).name
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Report(f"alambic report: {name}", f"Run `{name}` in `{run.store.uri}`, written {now} by alambic "
                  f"{__version__}.", [section(run) for section in SECTIONS], run.store)


def save_report(report: Report) -> dict[str, str]:
    """The pictures, report.md and report.html into the run directory, each written atomically."""
    from alambic.report.html_page import render_html, render_markdown

    store = report.store
    for image in (b for s in report.sections for b in s.blocks if isinstance(b, Image)):
        store.write_bytes(f"{IMAGES_DIR}/{image.name}", image.png)
    store.write_text(REPORT_MD, render_markdown(report, IMAGES_DIR))
    store.write_text(REPORT_HTML, render_html(report))
    return {"markdown": f"{store.uri}/{REPORT_MD}", "html": f"{store.uri}/{REPORT_HTML}"}


def write_report(target: Any, *, quiet: bool = True) -> dict[str, str]:
    """Build and save the report of a run; returns where report.md and report.html went."""
    return save_report(build_report(target, quiet=quiet))


__all__ = ["REPORT_HTML", "REPORT_MD", "Report", "SpeedUp", "build_report", "evaluate_artifact", "save_report",
           "speed_up", "teacher_measurement", "write_report"]
