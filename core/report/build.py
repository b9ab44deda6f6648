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
(:func:`alambic.paths.inside`). What a report reads: :mod:`alambic.report.gather`; the teacher's timings
and the evaluations: :mod:`alambic.report.teacher`; the sections and the speed-up:
:mod:`alambic.report.sections`; rendering and pictures: :mod:`alambic.report.html_page`.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from alambic import __version__
from alambic.report.document import Image, Report
from alambic.report.gather import gather
from alambic.report.html_page import render_html, render_markdown
from alambic.report.sections import SECTIONS

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
IMAGES_DIR = "report_images"  # the markdown's pictures; the HTML embeds its own


def build_report(target: Any, *, quiet: bool = True) -> Report:
    """The report of a run: a RunContext, a run config (YAML), or a run directory (fewer sections)."""
    run = gather(target, quiet)
    name = run.ctx.config.name if run.ctx else Path(run.store.uri).name
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Report(f"alambic report: {name}", f"Run `{name}` in `{run.store.uri}`, written {now} by alambic "
                  f"{__version__}.", [section(run) for section in SECTIONS], run.store)


def save_report(report: Report) -> dict[str, str]:
    """The pictures, report.md and report.html into the run directory, each written atomically."""
    store = report.store
    for image in (b for s in report.sections for b in s.blocks if isinstance(b, Image)):
        store.write_bytes(f"{IMAGES_DIR}/{image.name}", image.png)
    store.write_text(REPORT_MD, render_markdown(report, IMAGES_DIR))
    store.write_text(REPORT_HTML, render_html(report))
    return {"markdown": f"{store.uri}/{REPORT_MD}", "html": f"{store.uri}/{REPORT_HTML}"}


def write_report(target: Any, *, quiet: bool = True) -> dict[str, str]:
    """Build and save the report of a run; returns where report.md and report.html went."""
    return save_report(build_report(target, quiet=quiet))


__all__ = ["REPORT_HTML", "REPORT_MD", "build_report", "save_report", "write_report"]
