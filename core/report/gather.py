"""What a report reads from a run (:func:`gather`): its store and config, results and selection, the
teacher timed here and the scores on data.golden; and a row's compress stage, its paths checked.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.compress.chain import MODEL_DIR, RECORD_FILE
from alambic.errors import AlambicError
from alambic.paths import UnsafePathError, inside
from alambic.report.teacher import Teacher, measure_config, timed_teacher
from alambic.run import RunContext
from alambic.search.front import RESULTS, Run, json_row, load_results, mark_front, resolve_run
from alambic.search.golden import evaluate_rows, golden_set, stage_scores, teacher_scores
from alambic.search.select import SELECTED
from alambic.ship.exporter import check_record_paths
from alambic.store import Store

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)


@dataclass
class GatheredRun:
    store: Store
    ctx: RunContext | None
    results: pd.DataFrame | None = None  # marked: on_front, knee
    selected: dict[str, Any] | None = None
    teacher: Teacher | None = None
    golden: Any = None  # data.golden as a Dataset
    golden_scores: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # by candidate id, "teacher"

    @property
    def selected_row(self) -> dict[str, Any]:
        return (self.selected or {}).get("row") or {}


def _open(target: Any, quiet: bool) -> tuple[Store, RunContext | None]:
    if isinstance(target, RunContext):
        return target.store, target
    path = Path(os.fspath(target))
    if path.is_file() and path.name != RESULTS:
        ctx = RunContext.open(path, quiet=quiet)
        return ctx.store, ctx
    # a run directory (before its search, too), results.parquet or a URI: no config, fewer sections
    return (Store.open(path) if path.is_dir() else resolve_run(target).store), None


def gather(target: Any, quiet: bool) -> GatheredRun:
    store, ctx = _open(target, quiet)
    run = GatheredRun(store, ctx)
    if store.exists(RESULTS):
        run.results = mark_front(load_results(store), Run(store, ctx.config if ctx else None).objectives)
    if store.exists(SELECTED):
        run.selected = store.read_json(SELECTED)
    if ctx is not None:
        run.teacher = timed_teacher(ctx, candidate_threads(run))
        _golden(run)
    return run


def candidate_threads(run: GatheredRun) -> list[int]:
    """The threads the candidates were timed at (the teacher is timed at each); else the config's."""
    found = {int(r["latency_threads"]) for r in ok_rows(run.results) if r.get("latency_threads")}
    return sorted(found) or [measure_config(run.ctx).threads]


def compress_stage(run: GatheredRun, row: dict[str, Any], source: str) -> tuple[Path, dict[str, Any]]:
    """A row's compress stage and its record.json, every path in them checked to stay inside (a
    tampered row or record fails here, naming the file and key, instead of reading elsewhere).

    :param source: where the row was read: results.parquet or selected.json
    """
    stage = run.store.record_path(row.get("stage"), source=f"{run.store.uri}/{source}", key="stage")
    record = json.loads((stage / RECORD_FILE).read_text(encoding="utf-8"))
    check_record_paths(stage, record)
    return stage, record


def candidate_scores(run: GatheredRun, row: dict[str, Any], rows: Any, rows_key: str, source: str) -> dict[str, Any]:
    """A candidate's shipped artifact (its stage's record.json says which, in which runtime) on rows."""
    stage, record = compress_stage(run, row, source)
    artifact = inside(stage, record["artifact"], source=f"{stage}/{RECORD_FILE}", key="artifact")
    return evaluate_rows(run.ctx, record["key"], stage / MODEL_DIR, rows, rows_key, runtime=record["runtime"],
                         artifact=artifact)


def _results_source(row: dict[str, Any]) -> str:
    return f"{RESULTS} (candidate {row.get('candidate_id')})"


def _golden(run: GatheredRun) -> None:
    """Every ok candidate, and the teacher, on data.golden (the user's hand-checked rows): the
    scores the search made for its golden columns (alambic.search.golden), found in the store."""
    ctx = run.ctx
    golden = golden_set(ctx)
    if golden is None:
        return
    run.golden = golden.rows
    if run.teacher is not None:
        run.golden_scores["teacher"] = teacher_scores(ctx, run.teacher.key, run.teacher.path, golden)
    for row in ok_rows(run.results):
        try:
            stage, record = compress_stage(run, row, _results_source(row))
            run.golden_scores[row["candidate_id"]] = stage_scores(ctx, stage, record, golden)
        except UnsafePathError:
            raise  # a tampered record is not a missing stage: the report stops and says where
        except (AlambicError, OSError) as exc:  # its stage gone from the store: the others still count
            log.warning("candidate %s not evaluated on data.golden: %s", row["candidate_id"], exc)
            run.golden_scores[row["candidate_id"]] = None


def ok_rows(df: pd.DataFrame | None) -> list[dict[str, Any]]:
    return [] if df is None else [json_row(r) for _, r in df[df["status"] == "ok"].iterrows()]


__all__ = ["GatheredRun", "candidate_scores", "candidate_threads", "compress_stage", "gather", "ok_rows"]
