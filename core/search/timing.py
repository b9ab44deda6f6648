"""Latency and memory of a search's candidates: measured after the search, one at a time, here.

A trial that timed its own candidate would share the host with the trials training beside it, and
on a cluster run on whichever node Ray gave it: its figures would measure the load, not the model.
So trials score accuracy and size only (``compress.SCORES_ONLY``), and when every trial is done the
driver times each shipped artifact in turn, on its own node, in the artifact's runtime, at
``search.measure.threads``; an artifact whose runtime cannot run here (Core ML) is not timed, and its
row's ``latency_note`` says so::

    rows = time_candidates(ctx, rows, settings, on_timed=print)   # latency_p50_ms, peak_mem_mb, ...

Each timing is a stage (``timing.json``) keyed by the candidate's compress stage, the settings and
this machine's identity (:func:`alambic.machine.identity`): a repeated search reuses it on this
machine, and a figure made on another machine is never taken for this one's.

``search.measure.runtimes: [executorch]`` times each ok candidate a second time, in another runtime:
its model folder lowered to an ExecuTorch program on XNNPACK (the kernels ExecuTorch runs on Android
and iOS CPUs), int8 when the candidate is int8 (calibrated on seeded token ids: latency does not
depend on the ranges), else fp32, timed at the reference length into ``executorch_p50_ms``,
``executorch_p90_ms`` and ``executorch_size_mb`` (the .pte). A stage of its own, keyed as the
other; a Core ML candidate is not (its model folder is not what it ships).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from alambic.compress import executorch as pte
from alambic.compress.chain import MODEL_DIR, RECORD_FILE
from alambic.compress.latency import UNTIMED, load_model
from alambic.compress.measure import REFERENCE_LENGTH, config_vocab_size, measure_speed
from alambic.errors import AlambicError
from alambic.fingerprint import stable_hash
from alambic.machine import identity, label, summary
from alambic.paths import inside

log = logging.getLogger(__name__)

TIMING_FILE = "timing.json"
#: the row columns this pass fills
COLUMNS = ("latency_p50_ms", "latency_p90_ms", "peak_mem_mb", "model_mem_mb", "latency_threads", "latency_machine")
#: the columns each runtime of ``search.measure.runtimes`` fills
RUNTIME_COLUMNS = {"executorch": ("executorch_p50_ms", "executorch_p90_ms", "executorch_size_mb")}


def time_candidates(ctx: Any, rows: Sequence[dict[str, Any]], settings: Any,
                    on_timed: Callable[[int, int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The rows with their latency and memory columns, each ok row timed (or its timing reused).

    :param settings: ``compress.MeasureSettings`` (lengths, threads, runs, warmup, memory).
    :param on_timed: called with (n, total, row) after each candidate.
    """
    machine = identity()
    for row in rows:  # size and accuracy only: its latency stays empty, and says why
        if row.get("status") == "ok" and row.get("runtime") in UNTIMED:
            row["latency_note"] = UNTIMED[row["runtime"]]
    todo = [r for r in rows if r.get("status") == "ok" and r.get("compress_key") and r.get("runtime") not in UNTIMED]
    runtimes = tuple(getattr(settings, "runtimes", ()))
    if todo:
        log.info("timing %d candidates one at a time on %s, %d thread(s)%s", len(todo), summary(), settings.threads,
                 f", also in {', '.join(runtimes)}" if runtimes else "")
    if todo and "executorch" in runtimes:
        pte.require()  # before any work: asked for and not installed
    for n, row in enumerate(todo, start=1):
        found = timing(ctx, row, settings, machine)
        row.update(columns(found))
        for runtime in runtimes:
            row.update(runtime_timing(ctx, row, settings, machine, runtime))
        if on_timed is not None:
            on_timed(n, len(todo), row)
    return list(rows)


def timing(ctx: Any, row: dict[str, Any], settings: Any, machine: dict[str, Any]) -> dict[str, Any]:
    """One candidate's artifact timed as a stage keyed by its compress stage, settings and machine."""
    key = stable_hash({"stage": "timing", "compress": row["compress_key"], "artifact": row["artifact"],
                       "measure": _own(settings), "machine": machine})[:32]
    stage = ctx.store.local_path(ctx.store.stage_path(row["compress_key"]))

    def build(folder: Path) -> dict[str, Any]:
        artifact = inside(stage, _in_stage(row["artifact"], ctx.store.stage_path(row["compress_key"]), row),
                          source=f"candidate {row['candidate_id']}'s row", key="artifact")
        start = time.perf_counter()
        found = measure_speed(row["runtime"], artifact, settings.lengths, settings.threads,
                              model_dir=stage / MODEL_DIR, vocab_size=config_vocab_size(stage / MODEL_DIR),
                              runs=settings.runs, warmup=settings.warmup, memory=settings.memory)
        found["machine"] = machine | found["machine"]
        found |= {"artifact": row["artifact"], "compress_key": row["compress_key"], "key": key,
                  "seconds": round(time.perf_counter() - start, 1)}
        (folder / TIMING_FILE).write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
        return {"compress_key": row["compress_key"]}

    ctx.store.get_or_build_stage(key, "timing", build)
    return json.loads((ctx.store.local_path(ctx.store.stage_path(key)) / TIMING_FILE).read_text(encoding="utf-8"))


def _own(settings: Any) -> dict[str, Any]:
    """The settings that time the artifact in its own runtime: ``runtimes`` adds other timings, it
    does not change this one (nor its key)."""
    fields = ("lengths", "threads", "runs", "warmup", "memory")
    return {name: getattr(settings, name) for name in fields if hasattr(settings, name)}


def runtime_timing(ctx: Any, row: dict[str, Any], settings: Any, machine: dict[str, Any],
                   runtime: str) -> dict[str, Any]:
    """One candidate's model folder timed in ``runtime`` (executorch) at the reference length, as a
    stage keyed by its compress stage, precision, settings, runtime version and machine; its columns
    (:data:`RUNTIME_COLUMNS`), empty for a candidate it does not apply to or that does not lower."""
    names = RUNTIME_COLUMNS.get(runtime)
    if names is None:
        raise AlambicError(f"cannot time candidates in {runtime!r}: {', '.join(RUNTIME_COLUMNS)} can be")
    empty = dict.fromkeys(names)
    if row.get("runtime") in UNTIMED or row.get("runtime") == runtime:
        return empty  # Core ML ships no model folder it was measured as; its own runtime is timed already
    stage = ctx.store.local_path(ctx.store.stage_path(row["compress_key"]))
    record = json.loads((stage / RECORD_FILE).read_text(encoding="utf-8")) if (stage / RECORD_FILE).is_file() else {}
    int8 = pte.is_int8(record.get("quantization") or row.get("quantization"))
    length = REFERENCE_LENGTH if REFERENCE_LENGTH in settings.lengths else max(settings.lengths)
    key = stable_hash({"stage": f"timing-{runtime}", "compress": row["compress_key"], "int8": int8,
                       "length": length, "measure": _own(settings) | {"memory": False}, "machine": machine,
                       "runtime": pte.version()})[:32]

    def build(folder: Path) -> dict[str, Any]:
        start = time.perf_counter()
        model = load_model(stage / MODEL_DIR)
        vocab = model.get_input_embeddings().num_embeddings
        with tempfile.TemporaryDirectory(prefix="alambic-pte-") as tmp:  # the program is not kept: ~ the weights
            calibration = pte.seeded_rows(vocab, pte.CALIBRATION_ROWS, length) if int8 else None
            info = pte.export_pte(model, Path(tmp) / "model.pte", int8=int8,
                                  max_length=max(length, pte.MIN_LENGTH + 1), calibration=calibration)
            found = measure_speed(runtime, info.path, [length], settings.threads, vocab_size=vocab,
                                  runs=settings.runs, warmup=settings.warmup, memory=False)
        found["machine"] = machine | found["machine"]
        found |= {"runtime": runtime, "int8": int8, "pte_bytes": info.bytes, "lowered": info.describe(),
                  "compress_key": row["compress_key"], "key": key, "seconds": round(time.perf_counter() - start, 1)}
        (folder / TIMING_FILE).write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
        return {"compress_key": row["compress_key"], "runtime": runtime}

    try:
        ctx.store.get_or_build_stage(key, f"timing-{runtime}", build)
    except Exception as exc:  # noqa: BLE001 - one candidate that does not lower leaves the others timed
        log.warning("candidate %s: not timed in %s: %s: %s", row.get("candidate_id"), runtime, type(exc).__name__, exc)
        return empty
    found = json.loads((ctx.store.local_path(ctx.store.stage_path(key)) / TIMING_FILE).read_text(encoding="utf-8"))
    latency = found["latency_ms"][str(length)]
    return dict(zip(names, (latency["p50"], latency["p90"], found["pte_bytes"] / 1e6), strict=True))


def columns(found: dict[str, Any]) -> dict[str, Any]:
    """A timing's figures as row columns: latency at the reference length, peak and model memory."""
    lengths = sorted(int(n) for n in found["latency_ms"])
    length = REFERENCE_LENGTH if REFERENCE_LENGTH in lengths else lengths[-1]
    latency = found["latency_ms"][str(length)]
    memory = found.get("memory") or {}
    peak, base = memory.get("peak_rss_bytes"), memory.get("baseline_rss_bytes")

    return {"latency_p50_ms": latency["p50"], "latency_p90_ms": latency["p90"],
            "peak_mem_mb": None if peak is None else peak / 1e6,
            "model_mem_mb": None if peak is None or base is None else (peak - base) / 1e6,
            "latency_threads": found["threads"],
            "latency_machine": label(found["machine"])}


def _in_stage(artifact: str, stage: str, row: dict[str, Any]) -> str:
    """The row's artifact (relative to the run) relative to its compress stage, or a clear error
    (:func:`alambic.paths.inside` then checks it stays there)."""
    try:
        return PurePosixPath(artifact).relative_to(stage).as_posix()
    except (TypeError, ValueError):
        raise AlambicError(f"candidate {row['candidate_id']}'s row: artifact {artifact!r} is not a path inside "
                           f"its stage {stage}/") from None


__all__ = ["COLUMNS", "RUNTIME_COLUMNS", "runtime_timing", "time_candidates", "timing"]
