"""`alambic run`: the whole pipeline in one call, each step skipped when its artifact exists.

::

    result = run_pipeline(ctx, on_step=print_step)

    # <data>     ctx.prepared: loaded, split, tokenized (Arrow cache)
    # <teacher>  train_teacher: trained, or reused from the store
    # <search>   alambic.search.tune: every candidate memoized; skipped outright when results.parquet
    #            holds this very search with every candidate ok
    # <front>    front.png beside results.parquet
    # <select>   selected.json, by the config's select section (a selection-policy plugin)
    # <export>   export/: the bundle, skipped when it already holds the selected candidate; with
    #            data.golden, refused (GoldenGateFailed) when the candidate misses the golden gate
    # <report>   report.md, report.html

A run without a ``search`` section stops after the teacher (and says so). When nothing meets the
selection's limits, the run stops before the export, naming the nearest candidates.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alambic.data.dataset import load_golden
from alambic.errors import AlambicError
from alambic.fingerprint import stable_hash
from alambic.machine import identity
from alambic.model_sources import resolve_model
from alambic.report.build import write_report
from alambic.search.front import Run, load_results, mark_front
from alambic.search.golden import export_gate
from alambic.search.plot import plot_front
from alambic.search.results import memo_counts
from alambic.search.select import select, write_selected
from alambic.search.tune import SearchResult, search, search_key
from alambic.ship.export import EXPORT_DIR, VERIFICATION_FILE, export_stage, resolve_stage

log = logging.getLogger(__name__)

STEPS = ("data", "teacher", "search", "front", "select", "export", "report")
SEARCH_FILE = "search.json"  # which search results.parquet holds (its key), so a rerun skips it


@dataclass
class PipelineResult:
    teacher: Any
    search: Any = None  # SearchResult
    selection: Any = None  # select.Selection
    export: Any = None  # export.ExportResult, or None when reused / not reached
    golden: Any = None  # the export's golden section (figures, the teacher's, the gate's verdict); None without
    report: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # steps whose artifacts were reused
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def planned_steps(ctx: Any) -> tuple[str, ...]:
    """The steps a run takes: all of them, or data and teacher only when the config has no search."""
    return STEPS if ctx.config.search is not None else STEPS[:2]


def run_pipeline(ctx: Any, local: bool = False, on_step: Callable[[str, int, int], None] | None = None,
                 on_row: Callable[[dict[str, Any]], None] | None = None,
                 on_search_start: Callable[[dict[str, Any]], None] | None = None,
                 on_timed: Callable[[int, int, dict[str, Any]], None] | None = None) -> PipelineResult:
    """Every step in order; ``on_step(name, index, total)`` feeds a progress display."""
    from alambic.train.teacher import train_teacher

    start = time.perf_counter()
    steps = planned_steps(ctx)

    def step(name: str) -> None:
        if on_step:
            on_step(name, steps.index(name), len(steps))

    step("data")
    ctx.prepared  # noqa: B018  (loads, tokenizes and caches the data)
    step("teacher")
    result = PipelineResult(teacher=train_teacher(ctx, local=local))
    if result.teacher.reused:
        result.skipped.append("teacher")
    if ctx.config.search is None:
        result.notes.append("no search section: the run stops after the teacher")
        result.seconds = time.perf_counter() - start
        return result
    step("search")
    result.search = _search(ctx, result, on_row, on_search_start, on_timed)
    step("front")
    _front(ctx)
    step("select")
    result.selection = _select(ctx)
    if result.selection.row is None:
        result.notes.append(result.selection.summary)
        result.seconds = time.perf_counter() - start
        return result
    step("export")
    result.export = export_selected(ctx, skip_if_done=True)  # GoldenGateFailed: the run stops, naming the miss
    if result.export is None:
        result.skipped.append("export")
    result.golden = _golden_verdict(ctx, result.export)
    step("report")
    result.report = _report(ctx)
    result.seconds = time.perf_counter() - start
    return result


def _search(ctx: Any, result: PipelineResult, on_row: Any, on_start: Any, on_timed: Any) -> Any:
    """The search, or the results of this very search, timed on this machine, when they are
    complete already."""
    key = stable_hash([search_key(ctx, result.teacher.key), identity()])[:12]
    done = _finished_search(ctx, key)
    if done is not None:
        result.skipped.append("search")
        counts = memo_counts([r | {f"{s}_reused": True for s in ("distill", "prune", "compress")} for r in done])
        return SearchResult(rows=done, counts=counts, path=f"{ctx.store.uri}/results.parquet", seconds=0.0,
                            resumed=False)
    found = search(ctx, on_row=on_row, on_start=on_start, on_timed=on_timed)
    ctx.store.write_json(SEARCH_FILE, {"key": key, "candidates": len(found.rows)})
    return found


def _finished_search(ctx: Any, key: str) -> list[dict[str, Any]] | None:
    """results.parquet's rows when it holds the search ``key`` with every candidate ok."""
    import pyarrow.parquet as pq

    if not (ctx.store.exists(SEARCH_FILE) and ctx.store.exists("results.parquet")):
        return None
    if ctx.store.read_json(SEARCH_FILE).get("key") != key:
        return None
    rows = pq.read_table(io.BytesIO(ctx.store.read_bytes("results.parquet"))).to_pylist()
    return rows if rows and all(r["status"] == "ok" for r in rows) else None


def _front(ctx: Any) -> None:
    run = Run(ctx.store, ctx.config, ctx.registry)
    df = mark_front(load_results(run), run.objectives, run.select.accuracy_tolerance)
    if ctx.store.is_local:
        plot_front(df, ctx.store.local_path("front.png"), run.objectives)


def _select(ctx: Any) -> Any:
    run = Run(ctx.store, ctx.config, ctx.registry)
    selection = select(load_results(run), ctx.config.select, objectives=run.objectives, registry=ctx.registry)
    if selection.row is not None:
        write_selected(run, selection)
    return selection


def export_selected(ctx: Any, *, candidate: str | None = None, stage: Any = None,
                    formats: Sequence[str] | None = None, options: dict[str, dict[str, Any]] | None = None,
                    out: Any = None, max_examples: int = 2000, skip_if_done: bool = False, force: bool = False) -> Any:
    """Export the selected candidate (or ``candidate`` / ``stage``) with the config's export
    settings; with ``skip_if_done``, None when ``export/`` already holds that very candidate.

    With data.golden the candidate is scored on it first and held to the select section's golden
    limits: GoldenGateFailed when it misses one, unless ``force`` (verification.json says so)."""
    stage_dir, recipe = resolve_stage(ctx.store, candidate=candidate, stage=stage)
    golden = export_gate(ctx, stage_dir, candidate=(recipe or {}).get("candidate_id"), force=force)
    chosen = list(formats or ctx.config.export.formats)
    per_format = {"onnx": {"opset": ctx.config.export.opset}} if "onnx" in chosen else {}
    for name, values in (options or {}).items():
        per_format.setdefault(name, {}).update(values)
    if out is None and not ctx.store.is_local:
        raise AlambicError(f"the run's store {ctx.store.uri} is not local: give --out DIR for the bundle")
    target = out or ctx.store.local_path(EXPORT_DIR)
    if skip_if_done and _exported(ctx, stage_dir, chosen):
        log.info("export: %s already holds this candidate", target)
        return None
    metadata = ctx.config.export.model_dump(include={"author", "license", "description"})
    return export_stage(stage_dir, target, chosen, test_split=ctx.prepared.raw["test"], recipe=recipe,
                        metadata=metadata, options=per_format, max_length=ctx.config.tokenizer.max_length,
                        max_examples=max_examples, registry=ctx.registry,
                        golden_split=load_golden(ctx.config.data, ctx.prepared.label_names), golden=golden,
                        calibration_split=ctx.prepared.raw["train"])


def _golden_verdict(ctx: Any, export: Any) -> Any:
    """The golden section of the bundle just written, or of the one reused."""
    if export is not None:
        return export.verification.get("golden")
    where = f"{EXPORT_DIR}/{VERIFICATION_FILE}"
    return ctx.store.read_json(where).get("golden") if ctx.store.exists(where) else None


def _exported(ctx: Any, stage_dir: Any, formats: Sequence[str]) -> bool:
    """export/ is complete, made from ``stage_dir``, with every format asked for and none failed."""
    manifest = ctx.store.load_manifest(EXPORT_DIR)
    meta = manifest.meta if manifest is not None else {}
    source = (meta.get("source") or {}).get("stage")
    return (source is not None and Path(source).resolve() == Path(stage_dir).resolve()
            and set(formats) <= set(meta.get("formats", [])) and not meta.get("failed"))


def _report(ctx: Any) -> dict[str, str]:
    return write_report(ctx)


def teacher_architecture(ctx: Any) -> dict[str, int]:
    """The teacher's layers, width and FFN: from its config section, or read from the pretrained
    model's config.json (a packaged model is converted here: the teacher step needs it anyway);
    bert-base's for a hub id."""
    teacher = ctx.config.teacher
    bert_base = {"layers": 12, "hidden": 768, "ffn": 3072}
    if teacher.model is None:
        return bert_base | teacher.architecture.model_dump(exclude_none=True)
    config = Path(resolve_model(teacher.model, ctx.registry, ctx.root, "teacher.model")) / "config.json"
    if not config.is_file():
        return bert_base
    found = json.loads(config.read_text(encoding="utf-8"))
    return {"layers": found.get("num_hidden_layers", 12), "hidden": found.get("hidden_size", 768),
            "ffn": found.get("intermediate_size", 3072)}


def estimate_minutes(ctx: Any) -> float:
    """A rough wall-time estimate of a run from scratch on this kind of machine (2 CPU cores):
    training costs ~15 ms a step plus 6 x parameters x tokens at ~100 GFLOP/s (measured on
    THUCNews, see BENCHMARKS.md); a candidate's compression and measurement ~20 s; Ray ~20 s."""
    config, data = ctx.config, ctx.prepared
    rows = len(data.tokenized["train"])
    tokens = float(sum(data.tokenized["train"]["length"])) if "length" in data.tokenized["train"].column_names \
        else rows * config.tokenizer.max_length / 2

    def training(arch: dict[str, Any], epochs: int, batch: int) -> float:
        arch = {k: v for k, v in arch.items() if v is not None}
        layers, hidden, ffn = arch.get("layers", 4), arch.get("hidden", 512), arch.get("ffn", 2048)
        params = layers * (4 * hidden * hidden + 2 * hidden * ffn)
        return math.ceil(rows / batch) * epochs * 0.015 + 6 * params * tokens * epochs / 1e11

    teacher = config.teacher
    arch = teacher_architecture(ctx)
    # frozen lower layers (train_top_layers) still run forward (1/3 of a step) but not backward (2/3)
    trained = 1.0 if teacher.train_top_layers is None else min(1.0, teacher.train_top_layers / arch["layers"])
    seconds = 20 + training(arch, teacher.epochs, teacher.batch_size) * (1 + 2 * trained) / 3
    search = config.search
    space = 1
    for value in search.space.values():
        if isinstance(value, dict) and ("choice" in value or "grid" in value):
            space *= len(next(iter(value.values())))
    for student in search.students:
        sizes = search.student_sizes.get(student)
        seconds += space * training(sizes.model_dump() if sizes else {}, config.distill.epochs,
                                    config.distill.batch_size)
    candidates = len(search.students) * len(search.pruning) * len(search.quantization) * space
    concurrency = search.resources.max_concurrent or max(1, int((os.cpu_count() or 1) // search.resources.cpus_per_worker))
    return (seconds + 20 * candidates / concurrency + 60) / 60
