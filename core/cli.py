"""The ``alambic`` command line. Each command is a thin shell over a library function."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from alambic import __version__
from alambic.errors import AlambicError

app = typer.Typer(
    help="Compress Chinese BERT text classifiers for phones: distill, prune, quantize, "
    "search the accuracy-size-latency Pareto front, export to ONNX and Core ML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Validate a run config, or print its schema.", no_args_is_help=True)
data_app = typer.Typer(help="Look at the data a config points to.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

def _console(stderr: bool = False) -> Console:
    """Rich's console on a terminal; written to a file (CI, nohup, a cluster job's log), tables at
    their natural width rather than cut to 80 columns ("0.78…", "robe…")."""
    found = Console(stderr=stderr)
    return found if found.is_terminal else Console(stderr=stderr, width=1000)


console = _console()
errors = _console(stderr=True)


class State:
    quiet = False


@app.callback()
def _main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, fewer messages.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"alambic {__version__}")
        raise typer.Exit()
    State.quiet = quiet
    level = logging.DEBUG if verbose else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from alambic.train.distributed import quiet_ray_loggers

    quiet_ray_loggers()  # the same third-party noise is silenced here as in Ray's workers


# --- plugins --------------------------------------------------------------------------------


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every registered plugin id by hook, with the package it comes from."""
    from alambic.manager import build_registry

    registry = build_registry()
    listing = {
        kind: [
            {"id": e.id, "plugin": e.source.name, "package": e.source.package,
             "version": e.source.version, "module": e.source.module, "description": e.description}
            for e in sorted(reg.entries.values(), key=lambda e: e.id)
        ]
        for kind, reg in registry.kinds.items()
    }
    failed = [{"plugin": s.name, "package": s.package, "error": err} for s, err in registry.failures]
    if as_json:
        print(json.dumps({"plugins": listing, "failed": failed}, ensure_ascii=False, indent=2))
        return
    table = Table(title="registered plugins")
    for header in ("hook", "id", "from"):
        table.add_column(header, no_wrap=True)
    table.add_column("description")
    for kind, entries in listing.items():
        if not entries:
            table.add_row(kind, "[dim](none)[/dim]", "", "")
        for e in entries:
            table.add_row(kind, e["id"], f"{e['package']} {e['version']} ({e['plugin']})", e["description"])
    console.print(table)
    for f in failed:
        errors.print(f"[red]plugin '{f['plugin']}' ({f['package']}) failed to load:[/red] {f['error']}")


# --- config ---------------------------------------------------------------------------------


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="The run config (YAML).")]) -> None:
    """Validate a run config without running anything: keys, types, ranges, files, plugin ids."""
    from alambic.config import load_config
    from alambic.manager import build_registry

    config = load_config(path, registry=build_registry())
    console.print(f"[green]ok[/green] {path}: run '{config.name}'")


@config_app.command("schema")
def config_schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Every key as a Markdown table instead.")] = False,
) -> None:
    """Print the JSON schema of a run config (or, --markdown, the reference table README shows)."""
    from alambic.config import config_reference
    from alambic.config import config_schema as schema

    print(config_reference() if markdown else json.dumps(schema(), indent=2, ensure_ascii=False), end="" if markdown else "\n")


# --- data -----------------------------------------------------------------------------------


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="The run config (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Splits, sizes, label distribution, token-length percentiles and bad rows of the data."""
    from alambic.config import load_config
    from alambic.data.dataset import describe_data, load_data, prepare_tokenizer
    from alambic.manager import build_registry

    registry = build_registry()
    config = load_config(path, registry=registry)
    # Inspection lists every bad row instead of stopping at the first one.
    data_config = config.data.model_copy(update={"bad_rows": "skip"})
    data_log = logging.getLogger("alambic.data.dataset")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # its warnings are printed below; the level is put back after
    try:
        with console.status("reading data", spinner="dots") if not State.quiet else _nothing():
            dsd, report = load_data(data_config, registry)
            tokenizer = prepare_tokenizer(config.tokenizer, dsd)
            summary = describe_data(dsd, report, tokenizer=tokenizer, max_length=config.tokenizer.max_length)
    finally:
        data_log.setLevel(level)
    summary["bad_rows"]["policy"] = config.data.bad_rows
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    _print_data_summary(summary)


def _print_data_summary(summary: dict) -> None:
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
        console.print(f"[yellow]warning:[/yellow] {_escape(warning)}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- teacher & distillation -----------------------------------------------------------------

LocalOption = Annotated[bool, typer.Option(
    "--local", help="Train in this process instead of on Ray Train (debugging, notebooks).")]


@app.command()
def teacher(path: Annotated[Path, typer.Argument(help="The run config (YAML).")], local: LocalOption = False) -> None:
    """Fine-tune the teacher (or build it from config and train it); reuse it if already trained."""
    from alambic.run import RunContext
    from alambic.train.teacher import train_teacher

    ctx = RunContext.open(path, quiet=State.quiet)
    record = train_teacher(ctx, local=local)
    _print_model_record("teacher", record.path, record.metrics, record.reused)


@app.command()
def distill(
    path: Annotated[Path, typer.Argument(help="The run config (YAML).")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student plugin id, e.g. roberta-l4.")],
    settings: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a distill setting, e.g. --set temperature=2 --set losses=[kd,hidden-mse].")] = None,
    init: Annotated[str | None, typer.Option("--init", help=(
        "Where the student's weights start: a hub id (uer/chinese_roberta_L-4_H-512), a save_pretrained "
        "folder, a packaged <source>:<model>, or 'random'. Default: search.student_init, else random "
        "(the teacher-layers student: the teacher's own layers)."))] = None,
    local: LocalOption = False,
) -> None:
    """Distill a student from the run's teacher (trained first if needed); reuse identical runs."""
    from alambic.train.distill import distill as run_distill
    from alambic.train.distill import parse_set
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet)
    record = run_distill(ctx, student, parse_set(settings or []), local=local, init=init)
    teacher_accuracy = record.metrics.get("teacher_test_accuracy")
    _print_model_record(f"student {student}", record.path, record.metrics, record.reused)
    if teacher_accuracy:
        console.print(f"{record.metrics['test']['accuracy'] / teacher_accuracy:.1%} of the teacher's test accuracy")


@app.command()
def compress(
    path: Annotated[Path, typer.Argument(help="The run config (YAML): its data, tokenizer and guard.")],
    model: Annotated[Path, typer.Option("--model", "-m", help=(
        "The model to compress: a save_pretrained folder (e.g. a distilled student's stage folder)."))],
    steps: Annotated[str, typer.Option(help=(
        "Pruning steps in order, comma-separated pruner[:amount][+N], e.g. heads:0.25,ffn:0.3,vocab; "
        "+N: N epochs of distillation from the run's teacher after the step, before the guard judges "
        "it (layers:0.5+1); 'none' for no pruning. `alambic plugins` lists the pruners."))] = "none",
    quant: Annotated[str, typer.Option(help=(
        "A quantizer id (dynamic-int8, static-int8, fp16, mixed, ...) or 'none'."))] = "none",
    quant_options: Annotated[list[str] | None, typer.Option(
        "--quant-option", help="A quantizer option, e.g. --quant-option runtime=pytorch.")] = None,
    lengths: Annotated[str, typer.Option(help="Sequence lengths latency is measured at.")] = "16,32,64,128",
    threads: Annotated[int, typer.Option(min=1, help="Intra-op threads while measuring latency.")] = 1,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per length (after warm-up).")] = 50,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS in a fresh process.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Prune and quantize a trained model under the accuracy guard; measure it before and after.

    Each step is evaluated on the validation split: one that costs more than guard.max_drop points
    is retried at half strength (guard.retries times), then reverted. The result, its guard
    decisions and its measurements are stored as a stage, reused when the same call is made again.
    """
    from alambic.compress.chain import MeasureSettings, format_record, parse_lengths, parse_steps
    from alambic.compress.chain import compress as run_compress
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    settings = MeasureSettings(lengths=parse_lengths(lengths), threads=threads, runs=runs,
                               warmup=min(10, runs), memory=memory)
    pruning = parse_steps(steps, ctx.registry)
    from alambic.train.distill import parse_set

    options = parse_set(quant_options or [], "--quant-option", "per_channel=true")
    def show(d) -> None:  # each guard decision as it is made
        if not as_json:
            console.print(f"guard {d.step} (try {d.attempt}): validation accuracy {d.accuracy_before:.4f} -> "
                          f"{d.accuracy_after:.4f}, {d.note}", highlight=False, markup=False)

    record = run_compress(ctx, model, pruning, quant, options or None, measure=settings, on_decision=show)
    if as_json:
        print(json.dumps(record.to_dict(), ensure_ascii=False, indent=2, default=str))
        return
    for table in format_record(record):
        console.print(table)
    console.print(f"ships: {record.artifact} ({record.runtime})  record: {record.path / 'record.json'}",
                  highlight=False)


@app.command("search")
def search_command(
    path: Annotated[Path, typer.Argument(help="The run config (YAML) with a search section.")],
    resume: Annotated[bool, typer.Option(help="Continue an interrupted search (finished candidates are kept).")] = False,
    address: Annotated[str | None, typer.Option(help=(
        "A Ray cluster to run on ('auto', ray://host:10001); default: the config's ray.address, "
        "else a local Ray started in-process."))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows and counts as JSON at the end.")] = False,
) -> None:
    """Search students x distillation settings x pruning x quantization with Ray Tune.

    Each candidate is one trial: distill -> prune -> quantize -> measure, every stage memoized in
    the store. Writes results.parquet in the run directory; `alambic front` shows the front.
    """
    from alambic.run import RunContext
    from alambic.search.tune import search

    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    if address:
        ctx.config = ctx.config.model_copy(update={"ray": ctx.config.ray.model_copy(update={"address": address})})
    live = _SearchTable(quiet=State.quiet or as_json)
    with live:
        result = search(ctx, resume=resume, on_row=live.add, on_start=live.start, on_timed=live.timed)
    if as_json:
        print(json.dumps({"results": result.path, "counts": result.counts, "rows": result.rows},
                         ensure_ascii=False, indent=2, default=str))
        return
    console.print(_candidates_table(result.rows, title=f"{len(result.rows)} candidates ({result.seconds:.0f} s)"))
    counts = result.counts
    console.print("memoization: " + "; ".join(
        f"{stage} {c['ran']} ran, {c['reused']} reused" for stage, c in counts.items() if stage != "candidates")
        + f"; candidates {counts['candidates']['ok']} ok, {counts['candidates']['failed']} failed", highlight=False)
    console.print(f"results: {result.path}  (alambic front {path})", highlight=False)


def _candidates_table(rows: list[dict], title: str) -> Table:
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
                      "ok" if ok else f"[red]failed[/red]: {_escape(str(r.get('error'))[:80])}")
    return table


def _figure(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class _SearchTable:
    """Finished candidates while the search runs: a live table on a terminal; written to a file, one
    line per candidate (a log shows progress, not an hour of silence). Nothing when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.rows, self.live, self.plan = quiet, [], None, {}
        self.lines = not console.is_terminal
        self.started = time.monotonic()

    def __enter__(self) -> _SearchTable:
        if not self.quiet and not self.lines:
            from rich.live import Live

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

    def timed(self, n: int, total: int, row: dict) -> None:
        """A candidate timed in the serial pass after the trials."""
        if self.quiet:
            return
        if self.live is not None:
            self.live.__exit__(None, None, None)  # the trials are done: the live table gives way to lines
            self.live = None
        console.print(f"timed {n}/{total} {row['candidate_id']}: p50 {_figure(row.get('latency_p50_ms'), '.2f')} ms, "
                      f"p90 {_figure(row.get('latency_p90_ms'), '.2f')} ms @ {row.get('latency_threads')} thread(s), "
                      f"model memory {_figure(row.get('model_mem_mb'), ',.1f')} MB", highlight=False, markup=False)

    def _render(self) -> Table:
        total = self.plan.get("candidates", "?")
        return _candidates_table(self.rows[-15:], title=f"finished {len(self.rows)} / {total}")

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
def progress_line(n: int, total: object, row: dict, elapsed: float) -> str:
    """One finished candidate as a log line: n/N, id, student, pruning, quantizer, validation
    accuracy, size, status, time since the search started."""
    status = "ok" if row["status"] == "ok" else f"failed: {str(row.get('error'))[:200]}"
    return (f"candidate {n}/{total} {row['candidate_id']} {row['student']} pruning={row['pruning']} "
            f"quant={row['quantization']} val_acc={_figure(row.get('val_accuracy'), '.4f')} "
            f"size={_figure(row.get('size_mb'), '.2f')}MB {status} elapsed={elapsed:.0f}s")


def _print_model_record(what: str, path: Path, metrics: dict, reused: bool) -> None:
    table = Table(title=f"{what} ({'reused from the store' if reused else 'trained'})")
    for column in ("split", "accuracy", "macro-F1"):
        table.add_column(column)
    for split in ("validation", "test"):
        table.add_row(split, f"{metrics[split]['accuracy']:.4f}", f"{metrics[split]['macro_f1']:.4f}")
    console.print(table)
    console.print(f"params {metrics['params']:,}  wall time {metrics['wall_time_s']} s  ->  {path}",
                  highlight=False)


# --- compare --------------------------------------------------------------------------------


@app.command()
def compare(
    model_a: Annotated[Path, typer.Argument(help="Model A, the reference: a save_pretrained folder.")],
    model_b: Annotated[Path, typer.Argument(help="Model B, the candidate (e.g. the adapter).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="The run config (YAML) whose data to use.")],
    split: Annotated[str, typer.Option(help="Data split to compare on: train, validation or test.")] = "test",
    max_examples: Annotated[int, typer.Option(min=1, help="Compare on at most this many examples.")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Accuracy, latency, memory and layer-by-layer similarity (CKA, attention KL) of two models."""
    from alambic.report.compare import compare_dirs, format_report

    quiet = State.quiet or as_json
    with console.status("comparing", spinner="dots") if not quiet else _nothing():
        result = compare_dirs(model_a, model_b, config, split=split, max_examples=max_examples)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    for table in format_report(result):
        console.print(table)


# --- front & select -------------------------------------------------------------------------


RunArgument = Annotated[str, typer.Argument(metavar="RUN", help=(
    "The run config (YAML), or a run directory <store>/<run name>/ holding the search's results.parquet."))]
ToleranceOption = Annotated[float | None, typer.Option(min=0, max=100, help=(
    "Validation accuracies within this many points (1.0 = one percentage point) count as equal, and the "
    "smaller, then faster, wins. Default: the config's select.accuracy_tolerance, else one standard error "
    "(about 1.1 points at 41% on 2,000 rows); 0 = rank by the last digit."))]


@app.command()
def front(
    run: RunArgument,
    all_rows: Annotated[bool, typer.Option("--all", help="Every candidate, failed ones too, not only the front.")] = False,
    plot: Annotated[Path | None, typer.Option(help=(
        "Also draw validation accuracy (± one standard error) against size, coloured by latency p50, test "
        "accuracy beside it (reported only), the front joined and its knee named, into this PNG, e.g. "
        "--plot front.png."))] = None,
    accuracy_tolerance: ToleranceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The Pareto front of a search: the candidates that no other beats on every objective.

    Objectives: the config's search.objectives when RUN is a config, else val_accuracy (max),
    size_mb (min) and latency_p50_ms (min): every choice is made on the validation split, test
    accuracy is shown beside it and only reported. Only candidates with status ok are ranked; *
    marks the knee (the best compromise, where accuracies within the tolerance count as equal, as
    in select) and crowding says how isolated a point is on its front.
    """
    from alambic.search.front import format_front, front_rows, front_tolerance, load_results, mark_front, plot_front
    from alambic.search.front import resolve_run

    target = resolve_run(run)
    tolerance = target.select.accuracy_tolerance if accuracy_tolerance is None else accuracy_tolerance
    df = mark_front(load_results(target), target.objectives, tolerance)
    if plot is not None:
        plot_front(df, plot)
    if as_json:
        print(json.dumps({"run": target.store.uri, "objectives": [{"metric": m, "mode": mode} for m, mode in
                          target.objectives], "chosen_on": "validation", "accuracy_tolerance": front_tolerance(df),
                          "rows": front_rows(df, all_rows=all_rows), "plot": str(plot) if plot else None},
                         ensure_ascii=False, indent=2))
        return
    console.print(format_front(df, all_rows=all_rows))
    if plot is not None:
        console.print(f"plot: {plot}", highlight=False)


@app.command()
def select(
    run: RunArgument,
    tier: Annotated[Literal["high", "mid", "low"] | None, typer.Option(help=(
        "iOS device class: high = A16 and newer (phone latency < 100 ms, peak memory <= 200 MB), "
        "mid = A14-A15 (< 200 ms, <= 150 MB), low = A13 (< 500 ms, <= 100 MB)."))] = None,
    max_size_mb: Annotated[float | None, typer.Option(help="Largest shipped size, MB.")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help=(
        "Slowest phone latency, ms (latency_p90_ms x --phone-latency-factor)."))] = None,
    min_accuracy: Annotated[float | None, typer.Option(help=(
        "Lowest validation accuracy (val_accuracy), a fraction (0.9 = 90%)."))] = None,
    phone_latency_factor: Annotated[float | None, typer.Option(help=(
        "Phone latency = the CPU-measured latency_p90_ms x this. Default 1.0: the CPU figure stands in "
        "for the phone's; measure one model on the device and set phone p90 / CPU p90."))] = None,
    accuracy_tolerance: ToleranceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Choose the candidate to ship for a device tier or explicit limits; write selected.json.

    Among the candidates meeting every limit, the most accurate on validation wins, but not by its
    last digit: those within --accuracy-tolerance of it count as equally accurate, and among them
    the smaller, then the faster, wins; the reasons say which rule decided. Test accuracy is only
    reported. With no flag: the config's select section when RUN is a config, else --tier high;
    flags replace that section (--tier with --max-* flags needs both). The choice goes to
    <run dir>/selected.json. Exit code 2 when nothing qualifies, with the three nearest candidates
    and what each misses.
    """
    from alambic.search.front import format_selection, load_results, resolve_run, write_selected
    from alambic.search.front import select as choose

    target = resolve_run(run)
    limits = {k: v for k, v in (("max_size_mb", max_size_mb), ("max_latency_ms", max_latency_ms),
                                ("min_accuracy", min_accuracy)) if v is not None}
    spec = ({"policy": "tier" if tier else "constraints", "tier": tier, **limits} if tier or limits
            else target.select.model_dump())
    if phone_latency_factor is not None:
        spec["phone_latency_factor"] = phone_latency_factor
    # how to rank, not a limit: the config's value holds unless the flag replaces it
    spec["accuracy_tolerance"] = target.select.accuracy_tolerance if accuracy_tolerance is None else accuracy_tolerance
    selection = choose(load_results(target), spec, objectives=target.objectives, registry=target.registry)
    if as_json:
        print(json.dumps(selection.to_dict(), ensure_ascii=False, indent=2))
    where = write_selected(target, selection)  # NothingQualifies: exit 2, nearest candidates listed
    if not as_json:
        console.print(format_selection(selection))
        console.print(f"wrote {where}", highlight=False)


# --- export ---------------------------------------------------------------------------------


@app.command()
def export(
    path: Annotated[Path, typer.Argument(metavar="RUN", help="The run config (YAML).")],
    candidate: Annotated[str | None, typer.Option(help="A candidate id of the search (results.parquet).")] = None,
    stage: Annotated[Path | None, typer.Option(help=(
        "A compress stage folder to export instead (model/, record.json), e.g. from `alambic compress`."))] = None,
    formats: Annotated[str | None, typer.Option("--format", help=(
        "Formats, comma-separated: hf, onnx, coreml (`alambic plugins` lists more); "
        "default: the config's export.formats."))] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the bundle; default <run dir>/export/.")] = None,
    options: Annotated[list[str] | None, typer.Option("--option", help=(
        "An exporter option, format.key=value, e.g. --option coreml.epochs=5 --option coreml.int8=false."))] = None,
    max_examples: Annotated[int, typer.Option(min=1, help="Test rows the exports are verified on.")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Print verification.json.")] = False,
) -> None:
    """Export the selected candidate (or --candidate / --stage) to Hugging Face, ONNX and Core ML.

    Each format is verified against the source model on the test split (and Core ML by its specs:
    it cannot predict on Linux). A format that fails is reported with the op that failed and a
    fallback to try; the others are still exported. Exit code 1 when a format failed.
    """
    from alambic.ship.export import format_verification
    from alambic.pipeline import export_selected
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    chosen = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    per_format: dict[str, dict[str, object]] = {}
    from alambic.train.distill import parse_set

    for key, value in parse_set(options or [], "--option", "coreml.epochs=5").items():
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise AlambicError(f"--option {key}: expected format.key=value, e.g. --option coreml.epochs=5")
        per_format.setdefault(name, {})[option] = value
    with console.status("exporting", spinner="dots") if not (State.quiet or as_json) else _nothing():
        result = export_selected(ctx, candidate=candidate, stage=stage, formats=chosen, options=per_format,
                                 out=out, max_examples=max_examples)
    if as_json:
        print(json.dumps(result.verification, ensure_ascii=False, indent=2, default=str))
    else:
        console.print(format_verification(result))
        console.print(f"bundle: {result.path} (README.md, manifest.json, verification.json)", highlight=False)
    for failure in result.failed.values():
        errors.print(f"[red]{_escape(failure.message)}[/red]", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)


# --- report ---------------------------------------------------------------------------------


@app.command()
def report(
    run: Annotated[str, typer.Argument(metavar="RUN", help=(
        "The run config (YAML), or a run directory <store>/<run name>/ (then the sections that need the "
        "data or the teacher say so)."))],
) -> None:
    """Write report.md and report.html (one self-contained page) into the run directory.

    Data, teacher, every candidate against the teacher (speed-up, size ratio), the Pareto plot, the
    selected model and why, its guard decisions, per-class F1, confusion matrix and prediction
    distribution on the test split, data.golden accuracy, export verification, the machine. A
    section whose inputs do not exist yet (no selection, no export) says so.
    """
    from alambic.report.build import build_report, save_report

    with console.status("writing the report", spinner="dots") if not State.quiet else _nothing():
        written = build_report(run, quiet=State.quiet)
        paths = save_report(written)
    for line in written.missing:
        console.print(f"[yellow]not in the report yet[/yellow] {_escape(line)}", highlight=False)
    console.print(f"report: {paths['markdown']}\n        {paths['html']}", highlight=False)


# --- run ------------------------------------------------------------------------------------


@app.command()
def run(path: Annotated[Path, typer.Argument(help="The run config (YAML).")], local: LocalOption = False) -> None:
    """The whole pipeline: data, teacher, search, front, select, export, report.

    Each step reuses what the store already holds (and says so): a second run of the same config
    trains nothing. Ctrl-C leaves a resumable run: run it again (or `alambic search --resume`).
    """
    from alambic.pipeline import STEPS, estimate_minutes, run_pipeline
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet)
    search = ctx.config.search
    plan = " -> ".join(STEPS if search else STEPS[:2])
    students = ", ".join(search.students) if search else "none"
    console.print(f"run '{ctx.config.name}': {plan}; students: {students}; artifacts in {ctx.store.uri}",
                  highlight=False)
    live = _SearchTable(quiet=State.quiet)
    with console.status("starting", spinner="dots") if not State.quiet else _nothing() as status:
        def on_step(name: str, index: int, total: int) -> None:
            if name == "search" and status is not None:
                status.stop()  # the live table of candidates takes the screen
            elif name == "front" and live.live is not None:
                live.__exit__(None, None, None)
                live.live = None
            if name == "teacher" and index == 1 and search is not None:
                console.print(f"roughly {estimate_minutes(ctx):.0f} min on this machine when nothing is "
                              "built yet (a rough estimate from the model sizes and the data)", highlight=False)
            if name == "search":
                live.__enter__()
            if status is not None and name != "search":
                status.update(f"step {index + 1}/{total}: {name}")
            console.print(f"[bold]step {index + 1}/{total}[/bold]: {name}")

        result = run_pipeline(ctx, local=local, on_step=on_step, on_row=live.add, on_search_start=live.start,
                              on_timed=live.timed)
    if live.live is not None:
        live.__exit__(None, None, None)
    _print_run(ctx, result)


def _print_run(ctx: object, result: object) -> None:
    teacher = result.teacher.metrics["test"]
    console.print(f"teacher: test accuracy {teacher['accuracy']:.4f}, macro-F1 {teacher['macro_f1']:.4f}"
                  f"{' (reused)' if result.teacher.reused else ''}", highlight=False)
    if result.search is not None:
        console.print(_candidates_table(result.search.rows, title=f"{len(result.search.rows)} candidates"))
        counts = result.search.counts
        console.print("memoization: " + "; ".join(f"{stage} {c['ran']} ran, {c['reused']} reused"
                      for stage, c in counts.items() if stage != "candidates"), highlight=False)
    if result.selection is not None and result.selection.row is not None:
        row = result.selection.row
        console.print(f"selected {row['candidate_id']} ({row['student']}, {row['pruning']}, {row['quantization']}): "
                      f"{result.selection.summary}", highlight=False)
    if result.export is not None:
        from alambic.ship.export import format_verification

        console.print(format_verification(result.export))
    for name, where in result.report.items():
        console.print(f"{name}: {where}", highlight=False)
    for note in result.notes:
        errors.print(f"[yellow]{_escape(note)}[/yellow]", highlight=False)
    reused = f"; reused: {', '.join(result.skipped)}" if result.skipped else ""
    console.print(f"done in {result.seconds:.0f} s{reused}; artifacts in {ctx.store.uri}", highlight=False)
    if result.export is not None and result.export.failed:
        for failure in result.export.failed.values():
            errors.print(f"[red]{_escape(failure.message)}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point: user errors print one clear message, no traceback."""
    try:
        app()
    except AlambicError as exc:
        errors.print(f"[bold red]error:[/bold red] {_escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
