"""core/search/results.py: the front marked on the result rows, and what the search built or reused."""

from __future__ import annotations

from alambic.search import front
from alambic.search.results import COLUMNS, mark_front, memo_counts


def test_memo_counts_count_builds_and_reuses():
    rows = [{"status": "ok", "distill_key": "a", "distill_reused": False, "prune_key": None,
             "compress_key": "x", "compress_reused": False},
            {"status": "ok", "distill_key": "a", "distill_reused": True, "prune_key": "p", "prune_reused": False,
             "compress_key": "y", "compress_reused": False},
            {"status": "failed", "distill_key": "a", "distill_reused": True}]
    assert memo_counts(rows) == {"distill": {"ran": 0 + 1, "reused": 2}, "prune": {"ran": 1, "reused": 0},
                                 "compress": {"ran": 2, "reused": 0}, "candidates": {"ok": 2, "failed": 1}}


def test_mark_front_sets_on_front_as_the_front_marks_it():
    from alambic.config import Objective

    objectives = [Objective(metric="val_accuracy", mode="max"), Objective(metric="size_mb", mode="min")]
    rows = [{"candidate_id": "big", "status": "ok", "val_accuracy": 0.9, "size_mb": 40.0, "on_front": True},
            {"candidate_id": "small", "status": "ok", "val_accuracy": 0.8, "size_mb": 10.0},
            {"candidate_id": "beaten", "status": "ok", "val_accuracy": 0.8, "size_mb": 20.0, "on_front": True},
            {"candidate_id": "unmeasured", "status": "ok", "val_accuracy": None, "size_mb": 1.0},
            {"candidate_id": "failed", "status": "failed", "val_accuracy": 0.99, "size_mb": 1.0}]
    assert mark_front(rows, objectives) is rows
    assert {r["candidate_id"]: r["on_front"] for r in rows} == {"big": True, "small": True, "beaten": False,
                                                                "unmeasured": False, "failed": False}
    assert mark_front([], objectives) == []


def test_what_the_search_writes_holds_every_column_the_front_reads():
    assert set(front.RESULT_COLUMNS) <= set(COLUMNS)
