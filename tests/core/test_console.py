"""core/console.py: what the commands print: tables, progress lines, data summaries, model records."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from alambic import console as output

OK_ROW = {"candidate_id": "c1", "student": "roberta-l4", "settings": "T=4", "pruning": "heads:0.25",
          "quantization": "dynamic-int8", "status": "ok", "val_accuracy": 0.91234, "test_accuracy": None,
          "size_mb": 12.345, "latency_p50_ms": None, "on_front": True}
FAILED_ROW = OK_ROW | {"candidate_id": "c2", "status": "failed", "error": "[boom] out of memory",
                       "val_accuracy": None, "size_mb": None, "on_front": False}


@pytest.fixture
def screen(monkeypatch) -> Console:
    """The console the output goes to, wide and recorded."""
    recorded = Console(width=300, record=True, force_terminal=False)
    monkeypatch.setattr(output, "console", recorded)
    return recorded


def test_written_to_a_file_tables_keep_their_natural_width():
    assert output.make_console().width == 1000  # pytest captures stdout: not a terminal


def test_progress_line_names_the_candidate_and_its_figures():
    assert output.progress_line(1, 4, OK_ROW, 12.4) == (
        "candidate 1/4 c1 roberta-l4 pruning=heads:0.25 quant=dynamic-int8 val_acc=0.9123 size=12.35MB ok "
        "elapsed=12s")
    assert output.progress_line(2, "?", FAILED_ROW, 0).endswith(
        "val_acc=- size=-MB failed: [boom] out of memory elapsed=0s")


def test_candidates_table_marks_the_front_and_escapes_errors(screen):
    screen.print(output.candidates_table([OK_ROW, FAILED_ROW], title="2 candidates"))
    text = screen.export_text()
    assert "2 candidates" in text and "0.9123" in text and "12.35" in text
    assert "failed: [boom] out of memory" in text  # markup in an error message is shown, not read


def test_memoization_counts_every_stage_but_the_candidates():
    counts = {"distill": {"ran": 1, "reused": 2}, "compress": {"ran": 0, "reused": 3},
              "candidates": {"ok": 3, "failed": 0}}
    assert output.memoization(counts) == "memoization: distill 1 ran, 2 reused; compress 0 ran, 3 reused"


def test_search_table_written_to_a_file_prints_a_line_per_candidate(screen):
    with output.SearchTable(quiet=False) as live:
        assert live.lines and live.live is None
        live.start({"name": "s", "algorithm": "grid", "candidates": 2, "max_concurrent": 1,
                    "trial_resources": "1 CPU", "resume": False, "storage": "/tmp/tune", "notes": ["a note"]})
        live.add(OK_ROW)
        live.close()
    text = screen.export_text()
    assert "search s: grid, 2 candidate(s), 1 at a time" in text and "  a note" in text
    assert "candidate 1/2 c1 roberta-l4" in text


def test_a_quiet_search_table_prints_nothing(screen):
    with output.SearchTable(quiet=True) as live:
        live.add(OK_ROW)
        live.timed(1, 1, OK_ROW)
    assert screen.export_text() == ""


def test_a_quiet_spinner_is_nothing():
    with output.spinner("working", quiet=True) as status:
        assert status is None


def test_a_student_record_says_its_share_of_the_teacher_accuracy(screen):
    metrics = {"validation": {"accuracy": 0.8, "macro_f1": 0.79}, "test": {"accuracy": 0.81, "macro_f1": 0.8},
               "params": 1234567, "wall_time_s": 12.5, "teacher_test_accuracy": 0.9}
    output.print_model_record("student roberta-l4", Path("stages/x"), metrics, reused=True)
    text = screen.export_text()
    assert "student roberta-l4 (reused from the" in text and "params 1,234,567" in text  # the title wraps
    assert "90.0% of the teacher's test accuracy" in text


def data_summary(bad_count: int, policy: str) -> dict:
    first = [f"train.tsv:{7 + i}: expected 2 columns, found 1" for i in range(min(bad_count, 2))]
    return {"splits": {"train": {"rows": 1200, "labels": {"财经": 700, "房产": 500}}},
            "label_names": ["财经", "房产"], "bad_rows": {"count": bad_count, "first": first, "policy": policy},
            "warnings": ["a [bracketed] warning"]}


def test_data_summary_says_what_a_run_does_with_bad_rows(screen):
    output.print_data_summary(data_summary(3, "skip"))
    text = screen.export_text()
    assert "1,200" in text and "财经" in text
    assert "bad rows: 3 skipped (data.bad_rows is 'skip'), the first: train.tsv:7: expected 2 columns" in text
    assert "  ... and 1 more" in text and "warning: a [bracketed] warning" in text
    output.print_data_summary(data_summary(0, "error"))
    assert "bad rows: 0" in screen.export_text()
