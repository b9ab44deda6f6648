"""The CLI's console output: Rich consoles on stdout and stderr, and the tables and lines the
commands print (plugins, data summaries, trained models, candidates as they finish, a whole run)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from alambic.ship.export import format_verification


def make_console(stderr: bool = False) -> Console:
    """Rich's console on a terminal; written to a file (CI, nohup, a cluster job's log), tables at
    their natural width rather than cut to 80 columns ("0.78…", "robe…")."""
    found = Console(stderr=stderr)
    return found if found.is_terminal else Console(stderr=stderr, width=1000)


console = make_console()
errors = make_console(stderr=True)


def spinner(message: str, quiet: bool) -> contextlib.AbstractContextManager[Any]:
    """A spinner saying ``message`` while the block runs (``as`` gives its Status, to update or
    stop); when quiet, nothing (``as`` gives None)."""
    return contextlib.nullcontext() if quiet else console.status(message, spinner="dots")


def plugin_listing(registry: Any) -> tuple[dict[str, list[dict]], list[dict]]:
    """`alambic plugins`: every registered id by hook, with where it comes from; the plugins that
    failed to load."""
    listing = {
        kind: [
            {"id": e.id, "plugin": e.source.name, "package": e.source.package,
             "version": e.source.version, "module": e.source.module, "description": e.description}
            for e in sorted(reg.entries.values(), key=lambda e: e.id)
        ]
        for kind, reg in registry.kinds.items()
    }
    failed = [{"plugin": s.name, "package": s.package, "error": err} for s, err in registry.failures]
    return listing, failed


def plugins_table(listing: dict[str, list[dict]]) -> Table:
    """`alambic plugins`: every plugin id by hook, with the package it comes from."""
    table = Table(title="registered plugins")
    for header in ("hook", "id", "from"):
        table.add_column(header, no_wrap=True)
    table.add_column("description")
    for kind, entries in listing.items():
        if not entries:
            table.add_row(kind, "[dim](none)[/dim]", "", "")
        for e in entries:
            table.add_row(kind, e["id"], f"{e['package']} {e['version']} ({e['plugin']})", e["description"])
    return table


def print_data_summary(summary: dict) -> None:
    splits = summary["splits"]
    sizes = Table("split", "rows", *(["tokens p50", "p90", "p95", "p99", "max", "> max_length"]
                  if "tokens" in next(iter(splits.values())) else []), title="splits")
    for name, split in splits.items():
        tokens = split.get("tokens")
        extra = [str(tokens[k]) for k in ("p50", "p90", "p95", "p99", "max")] if tokens else []
        if tokens:
            extra.append(f"{tokens['over_max_length']:.2%}")
        sizes.add_row(name, f"{split['rows']:,}", *extra)
    console.print(sizes)
    labels = Table("label", *splits, title=f"{len(summary['label_names'])} labels")
    for i, name in enumerate(summary["label_names"]):
        labels.add_row(f"{i} {name}", *(f"{s['labels'].get(name, 0):,}" for s in splits.values()))
    console.print(labels)
    bad = summary["bad_rows"]
    # inspection reads past every bad row; say what a run does with them, as data.bad_rows says
    if not bad["count"]:
        console.print("bad rows: 0")
    elif bad["policy"] == "error":
        console.print(f"bad rows: {bad['count']}, the run stops at the first one (data.bad_rows is 'error'): "
                      f"{bad['first'][0]}", highlight=False, markup=False)
    else:
        console.print(f"bad rows: {bad['count']} skipped (data.bad_rows is 'skip'), the first: {bad['first'][0]}",
                      highlight=False, markup=False)
    for row in bad["first"] if bad["count"] > 1 else []:  # one bad row is named above already
        console.print(f"  {row}", highlight=False, markup=False)
    if bad["count"] > len(bad["first"]) > 1:
        console.print(f"  ... and {bad['count'] - len(bad['first']):,} more")
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def candidates_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, caption="val acc: validation, what every choice uses; test acc: reported only; "
                  "latency: timed after the search, one candidate at a time")
    for column in ("candidate", "student", "settings", "pruning", "quant", "val acc", "test acc", "size MB",
                   "p50 ms", "front", "status"):
        table.add_column(column)
    for r in rows:
        ok = r["status"] == "ok"
        table.add_row(r["candidate_id"], r["student"], r["settings"], r["pruning"], r["quantization"],
                      _figure(r.get("val_accuracy"), ".4f"), _figure(r.get("test_accuracy"), ".4f"),
                      _figure(r.get("size_mb"), ".2f"), _figure(r.get("latency_p50_ms"), ".2f"),
                      "*" if r.get("on_front") else "",
                      "ok" if ok else f"[red]failed[/red]: {escape(str(r.get('error'))[:80])}")
    return table


def _figure(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class SearchTable:
    """Finished candidates while the search runs: a live table on a terminal; written to a file, one
    line per candidate (a log shows progress, not an hour of silence). Nothing when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.rows, self.live, self.plan = quiet, [], None, {}
        self.lines = not console.is_terminal
        self.started = time.monotonic()

    def __enter__(self) -> SearchTable:
        if not self.quiet and not self.lines:
            self.live = Live(self._render(), console=console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def start(self, plan: dict) -> None:
        self.plan = plan
        self.started = time.monotonic()
        if not self.quiet:
            console.print(f"search {plan['name']}: {plan['algorithm']}, {plan['candidates']} candidate(s), "
                          f"{plan['max_concurrent'] or 'as many as the cluster grows to'} at a time, each trial {plan['trial_resources']}"
                          f"{' (resuming)' if plan['resume'] else ''}; Tune state in {plan['storage']}",
                          highlight=False)
            for note in plan.get("notes", []):
                console.print(f"  {note}", highlight=False, markup=False)
        self._refresh()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.lines and not self.quiet:
            console.print(progress_line(len(self.rows), self.plan.get("candidates", "?"), row,
                                        time.monotonic() - self.started), highlight=False, markup=False)
        self._refresh()

    def close(self) -> None:
        """End the live table now (the search is over); lines may follow."""
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def timed(self, n: int, total: int, row: dict) -> None:
        """A candidate timed in the serial pass after the trials."""
        if self.quiet:
            return
        self.close()  # the trials are done: the live table gives way to lines
        console.print(f"timed {n}/{total} {row['candidate_id']}: p50 {_figure(row.get('latency_p50_ms'), '.2f')} ms, "
                      f"p90 {_figure(row.get('latency_p90_ms'), '.2f')} ms @ {row.get('latency_threads')} thread(s), "
                      f"model memory {_figure(row.get('model_mem_mb'), ',.1f')} MB", highlight=False, markup=False)

    def _render(self) -> Table:
        total = self.plan.get("candidates", "?")
        return candidates_table(self.rows[-15:], title=f"finished {len(self.rows)} / {total}")

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())


def step_printer(status: Any, live: SearchTable,
                 estimate: Callable[[], float] | None) -> Callable[[str, int, int], None]:
    """`alambic run`'s ``on_step``: each step on a line, the spinner (``status``, None when quiet)
    saying which runs, the live table of candidates during the search; with ``estimate``, the
    minutes a run from scratch takes, said once the data is read."""

    def on_step(name: str, index: int, total: int) -> None:
        if name == "search" and status is not None:
            status.stop()  # the live table of candidates takes the screen
        elif name == "front":
            live.close()
        if name == "teacher" and index == 1 and estimate is not None:
            console.print(f"roughly {estimate():.0f} min on this machine when nothing is "
                          "built yet (a rough estimate from the model sizes and the data)", highlight=False)
        if name == "search":
            live.__enter__()
        if status is not None and name != "search":
            status.update(f"step {index + 1}/{total}: {name}")
        console.print(f"[bold]step {index + 1}/{total}[/bold]: {name}")

    return on_step


def progress_line(n: int, total: object, row: dict, elapsed: float) -> str:
    """One finished candidate as a log line: n/N, id, student, pruning, quantizer, validation
    accuracy, size, status, time since the search started."""
    status = "ok" if row["status"] == "ok" else f"failed: {str(row.get('error'))[:200]}"
    return (f"candidate {n}/{total} {row['candidate_id']} {row['student']} pruning={row['pruning']} "
            f"quant={row['quantization']} val_acc={_figure(row.get('val_accuracy'), '.4f')} "
            f"size={_figure(row.get('size_mb'), '.2f')}MB {status} elapsed={elapsed:.0f}s")


def memoization(counts: dict[str, dict]) -> str:
    """How many stages of each kind ran and how many were reused from the store."""
    return "memoization: " + "; ".join(f"{stage} {c['ran']} ran, {c['reused']} reused"
                                       for stage, c in counts.items() if stage != "candidates")


def print_search_result(result: Any, path: Path) -> None:
    """`alambic search`: every candidate, what was reused, where the results are."""
    console.print(candidates_table(result.rows, title=f"{len(result.rows)} candidates ({result.seconds:.0f} s)"))
    counts = result.counts
    console.print(memoization(counts) + f"; candidates {counts['candidates']['ok']} ok, "
                  f"{counts['candidates']['failed']} failed", highlight=False)
    console.print(f"results: {result.path}  (alambic front {path})", highlight=False)


def print_model_record(what: str, path: Path, metrics: dict, reused: bool) -> None:
    table = Table(title=f"{what} ({'reused from the store' if reused else 'trained'})")
    for column in ("split", "accuracy", "macro-F1"):
        table.add_column(column)
    for split in ("validation", "test"):
        table.add_row(split, f"{metrics[split]['accuracy']:.4f}", f"{metrics[split]['macro_f1']:.4f}")
    console.print(table)
    console.print(f"params {metrics['params']:,}  wall time {metrics['wall_time_s']} s  ->  {path}",
                  highlight=False)
    teacher_accuracy = metrics.get("teacher_test_accuracy")  # a student's record
    if teacher_accuracy:
        console.print(f"{metrics['test']['accuracy'] / teacher_accuracy:.1%} of the teacher's test accuracy")


def print_decision(d: Any) -> None:
    """A guard decision of `alambic compress`, as it is made."""
    console.print(f"guard {d.step} (try {d.attempt}): validation accuracy {d.accuracy_before:.4f} -> "
                  f"{d.accuracy_after:.4f}, {d.note}", highlight=False, markup=False)


def print_plan(ctx: Any, steps: Sequence[str]) -> None:
    """`alambic run`'s first line: the steps it takes, the students, where the artifacts go."""
    search = ctx.config.search
    students = ", ".join(search.students) if search else "none"
    console.print(f"run '{ctx.config.name}': {' -> '.join(steps)}; students: {students}; artifacts in "
                  f"{ctx.store.uri}", highlight=False)


def print_run(ctx: object, result: object) -> None:
    teacher = result.teacher.metrics["test"]
    console.print(f"teacher: test accuracy {teacher['accuracy']:.4f}, macro-F1 {teacher['macro_f1']:.4f}"
                  f"{' (reused)' if result.teacher.reused else ''}", highlight=False)
    if result.search is not None:
        console.print(candidates_table(result.search.rows, title=f"{len(result.search.rows)} candidates"))
        console.print(memoization(result.search.counts), highlight=False)
    if result.selection is not None and result.selection.row is not None:
        row = result.selection.row
        console.print(f"selected {row['candidate_id']} ({row['student']}, {row['pruning']}, {row['quantization']}): "
                      f"{result.selection.summary}", highlight=False)
    if result.export is not None:
        console.print(format_verification(result.export))
    for name, where in result.report.items():
        console.print(f"{name}: {where}", highlight=False)
    for note in result.notes:
        errors.print(f"[yellow]{escape(note)}[/yellow]", highlight=False)
    reused = f"; reused: {', '.join(result.skipped)}" if result.skipped else ""
    console.print(f"done in {result.seconds:.0f} s{reused}; artifacts in {ctx.store.uri}", highlight=False)
    if result.export is not None and result.export.failed:  # the command exits 1 after this
        for failure in result.export.failed.values():
            errors.print(f"[red]{escape(failure.message)}[/red]", highlight=False, soft_wrap=True)
