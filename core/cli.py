"""The ``alambic`` command line. Each command is a thin shell over a library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from alambic import __version__
from alambic.compress.chain import compress as run_compress
from alambic.compress.records import MeasureSettings, format_record, parse_lengths, parse_steps
from alambic.config import GOLDEN_LIMITS, load_config
from alambic.config_reference import config_reference
from alambic.config_reference import config_schema as schema
from alambic.console import (
    SearchTable,
    console,
    errors,
    plugin_listing,
    plugins_table,
    print_data_summary,
    print_decision,
    print_model_record,
    print_plan,
    print_run,
    print_search_result,
    spinner,
    step_printer,
)
from alambic.data.dataset import describe_data, load_data
from alambic.data.tokenize import prepare_tokenizer
from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.options import parse_set
from alambic.pipeline import estimate_minutes, export_selected, planned_steps, run_pipeline
from alambic.report.build import build_report, save_report
from alambic.report.compare import compare_dirs, format_report
from alambic.report.monitor import monitor_command
from alambic.run import RunContext
from alambic.search.front import format_front, front_rows, front_tolerance, load_results, mark_front, resolve_run
from alambic.search.golden import GoldenGateFailed
from alambic.search.plot import plot_front
from alambic.search.select import format_selection, write_selected
from alambic.search.select import select as choose
from alambic.search.tune import search
from alambic.ship.export import format_verification
from alambic.ship.personalize_command import personalize_command
from alambic.train.distributed import quiet_ray_loggers

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

    quiet_ray_loggers()  # the same third-party noise is silenced here as in Ray's workers


# --- plugins --------------------------------------------------------------------------------


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every registered plugin id by hook, with the package it comes from."""
    listing, failed = plugin_listing(build_registry())
    if as_json:
        print(json.dumps({"plugins": listing, "failed": failed}, ensure_ascii=False, indent=2))
        return
    console.print(plugins_table(listing))
    for f in failed:
        errors.print(f"[red]plugin '{f['plugin']}' ({f['package']}) failed to load:[/red] {f['error']}")


# --- config ---------------------------------------------------------------------------------


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="The run config (YAML).")]) -> None:
    """Validate a run config without running anything: keys, types, ranges, files, plugin ids."""
    config = load_config(path, registry=build_registry())
    console.print(f"[green]ok[/green] {path}: run '{config.name}'")


@config_app.command("schema")
def config_schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Every key as a Markdown table instead.")] = False,
) -> None:
    """Print the JSON schema of a run config (or, --markdown, the reference table README shows)."""
    print(config_reference() if markdown else json.dumps(schema(), indent=2, ensure_ascii=False), end="" if markdown else "\n")


# --- data -----------------------------------------------------------------------------------


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="The run config (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Splits, sizes, label distribution, token-length percentiles and bad rows of the data."""
    registry = build_registry()
    config = load_config(path, registry=registry)
    # Inspection lists every bad row instead of stopping at the first one.
    data_config = config.data.model_copy(update={"bad_rows": "skip"})
    data_log = logging.getLogger("alambic.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # its warnings are printed below; the level is put back after
    try:
        with spinner("reading data", State.quiet):
            dsd, report = load_data(data_config, registry)
            tokenizer = prepare_tokenizer(config.tokenizer, dsd)
            summary = describe_data(dsd, report, tokenizer=tokenizer, max_length=config.tokenizer.max_length)
    finally:
        data_log.setLevel(level)
    summary["bad_rows"]["policy"] = config.data.bad_rows
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    print_data_summary(summary)


# --- teacher & distillation -----------------------------------------------------------------

LocalOption = Annotated[bool, typer.Option(
    "--local", help="Train in this process instead of on Ray Train (debugging, notebooks).")]


@app.command()
def teacher(path: Annotated[Path, typer.Argument(help="The run config (YAML).")], local: LocalOption = False) -> None:
    """Fine-tune the teacher (or build it from config and train it); reuse it if already trained."""
    from alambic.train.teacher import train_teacher

    ctx = RunContext.open(path, quiet=State.quiet)
    record = train_teacher(ctx, local=local)
    print_model_record("teacher", record.path, record.metrics, record.reused)


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

    ctx = RunContext.open(path, quiet=State.quiet)
    record = run_distill(ctx, student, parse_set(settings or []), local=local, init=init)
    print_model_record(f"student {student}", record.path, record.metrics, record.reused)


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
    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    settings = MeasureSettings(lengths=parse_lengths(lengths), threads=threads, runs=runs,
                               warmup=min(10, runs), memory=memory)
    pruning = parse_steps(steps, ctx.registry)

    options = parse_set(quant_options or [], "--quant-option", "per_channel=true")
    record = run_compress(ctx, model, pruning, quant, options or None, measure=settings,
                          on_decision=None if as_json else print_decision)
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
    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    if address:
        ctx.config = ctx.config.model_copy(update={"ray": ctx.config.ray.model_copy(update={"address": address})})
    live = SearchTable(quiet=State.quiet or as_json)
    with live:
        result = search(ctx, resume=resume, on_row=live.add, on_start=live.start, on_timed=live.timed)
    if as_json:
        print(json.dumps({"results": result.path, "counts": result.counts, "rows": result.rows},
                         ensure_ascii=False, indent=2, default=str))
        return
    print_search_result(result, path)


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
    quiet = State.quiet or as_json
    with spinner("comparing", quiet):
        result = compare_dirs(model_a, model_b, config, split=split, max_examples=max_examples)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    for table in format_report(result):
        console.print(table)


# the prediction logs against the bundle's baseline; its options are many: defined beside its code
app.command("monitor")(monitor_command)


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
    flags replace that section (--tier with --max-* flags needs both) but for its golden limits, which
    hold whatever the flags (data.golden, against the teacher). The choice goes to
    <run dir>/selected.json. Exit code 2 when nothing qualifies, with the three nearest candidates
    and what each misses.
    """
    target = resolve_run(run)
    limits = {k: v for k, v in (("max_size_mb", max_size_mb), ("max_latency_ms", max_latency_ms),
                                ("min_accuracy", min_accuracy)) if v is not None}
    spec = ({"policy": "tier" if tier else "constraints", "tier": tier, **limits} if tier or limits
            else target.select.model_dump())
    spec |= target.select.model_dump(include=set(GOLDEN_LIMITS))  # the run's golden gate holds
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
    force: Annotated[bool, typer.Option("--force", help=(
        "Export a candidate that misses the golden gate (select's golden limits on data.golden) all the same; "
        "verification.json records it."))] = False,
) -> None:
    """Export the selected candidate (or --candidate / --stage) to Hugging Face, ONNX and Core ML.

    Each check says what it covered: ONNX and HF run in their own runtimes against the source model
    on the test split; Core ML cannot predict on Linux, so its converter's PyTorch input is checked
    against the source and its files by their specs (predictions: examples/ios on a Mac). A format
    that fails is reported with the op that failed and a fallback to try; the others are still
    exported. Exit code 1 when a format failed, or when the candidate misses the golden gate (then
    nothing is written, unless --force).
    """
    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    chosen = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    per_format: dict[str, dict[str, object]] = {}

    for key, value in parse_set(options or [], "--option", "coreml.epochs=5").items():
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise AlambicError(f"--option {key}: expected format.key=value, e.g. --option coreml.epochs=5")
        per_format.setdefault(name, {})[option] = value
    try:
        with spinner("exporting", State.quiet or as_json):
            result = export_selected(ctx, candidate=candidate, stage=stage, formats=chosen, options=per_format,
                                     out=out, max_examples=max_examples, force=force)
    except GoldenGateFailed as exc:  # the model failed a check, as a failed format does: exit 1
        errors.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result.verification, ensure_ascii=False, indent=2, default=str))
    else:
        console.print(format_verification(result))
        console.print(f"bundle: {result.path} (README.md, manifest.json, verification.json)", highlight=False)
    for failure in result.failed.values():
        errors.print(f"[red]{escape(failure.message)}[/red]", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)


app.command("personalize")(personalize_command)


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
    with spinner("writing the report", State.quiet):
        written = build_report(run, quiet=State.quiet)
        paths = save_report(written)
    for line in written.missing:
        console.print(f"[yellow]not in the report yet[/yellow] {escape(line)}", highlight=False)
    console.print(f"report: {paths['markdown']}\n        {paths['html']}", highlight=False)


# --- run ------------------------------------------------------------------------------------


@app.command()
def run(path: Annotated[Path, typer.Argument(help="The run config (YAML).")], local: LocalOption = False) -> None:
    """The whole pipeline: data, teacher, search, front, select, export, report.

    Each step reuses what the store already holds (and says so): a second run of the same config
    trains nothing. Ctrl-C leaves a resumable run: run it again (or `alambic search --resume`).
    """
    ctx = RunContext.open(path, quiet=State.quiet)
    print_plan(ctx, planned_steps(ctx))
    live = SearchTable(quiet=State.quiet)
    with spinner("starting", State.quiet) as status:
        estimate = (lambda: estimate_minutes(ctx)) if ctx.config.search is not None else None
        on_step = step_printer(status, live, estimate=estimate)
        result = run_pipeline(ctx, local=local, on_step=on_step, on_row=live.add, on_search_start=live.start,
                              on_timed=live.timed)
    live.close()
    print_run(ctx, result)
    if result.export is not None and result.export.failed:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point: user errors print one clear message, no traceback."""
    try:
        app()
    except AlambicError as exc:
        errors.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
