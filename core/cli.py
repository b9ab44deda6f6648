"""The ``alambic`` command line. Each command is a thin shell over a library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

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

console = Console()
errors = Console(stderr=True)


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
def config_schema() -> None:
    """Print the JSON schema of a run config."""
    from alambic.config import config_schema as schema

    print(json.dumps(schema(), indent=2, ensure_ascii=False))


# --- data -----------------------------------------------------------------------------------


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="The run config (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Splits, sizes, label distribution, token-length percentiles and bad rows of the data."""
    from alambic.config import load_config
    from alambic.data import describe_data, load_data, prepare_tokenizer
    from alambic.manager import build_registry

    registry = build_registry()
    config = load_config(path, registry=registry)
    # Inspection lists every bad row instead of stopping at the first one.
    data_config = config.data.model_copy(update={"bad_rows": "skip"})
    logging.getLogger("alambic.data").setLevel(logging.ERROR)  # warnings are printed below
    with console.status("reading data", spinner="dots") if not State.quiet else _nothing():
        dsd, report = load_data(data_config, registry)
        tokenizer = prepare_tokenizer(config.tokenizer, dsd)
        summary = describe_data(dsd, report, tokenizer=tokenizer, max_length=config.tokenizer.max_length)
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
    stops = bad["count"] and bad["policy"] == "error"
    console.print(f"bad rows: {bad['count']}" + (
        " (the run stops at the first one: data.bad_rows is 'error')" if stops
        else " (skipped: data.bad_rows is 'skip')" if bad["count"] else ""))
    for row in bad["first"]:
        console.print(f"  {row}", highlight=False, markup=False)
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
    from alambic.teacher import train_teacher

    ctx = RunContext.open(path, quiet=State.quiet)
    record = train_teacher(ctx, local=local)
    _print_model_record("teacher", record.path, record.metrics, record.reused)


@app.command()
def distill(
    path: Annotated[Path, typer.Argument(help="The run config (YAML).")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student plugin id, e.g. roberta-l4.")],
    settings: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a distill setting, e.g. --set temperature=2 --set losses=[kd,hidden-mse].")] = None,
    local: LocalOption = False,
) -> None:
    """Distill a student from the run's teacher (trained first if needed); reuse identical runs."""
    from alambic.distill import distill as run_distill
    from alambic.distill import parse_set
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet)
    record = run_distill(ctx, student, parse_set(settings or []), local=local)
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
        "Pruning steps in order, comma-separated pruner[:amount], e.g. heads:0.25,ffn:0.3,vocab; "
        "'none' for no pruning. `alambic plugins` lists the pruners."))] = "none",
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
    from alambic.compress import MeasureSettings, format_record, parse_lengths, parse_steps
    from alambic.compress import compress as run_compress
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet or as_json)
    settings = MeasureSettings(lengths=parse_lengths(lengths), threads=threads, runs=runs,
                               warmup=min(10, runs), memory=memory)
    pruning = parse_steps(steps, ctx.registry)
    options = _key_values(quant_options or [], "--quant-option")
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


def _key_values(items: list[str], flag: str) -> dict[str, object]:
    """``["per_channel=true", "calibration=entropy"]`` -> a dict, values read as YAML scalars."""
    import yaml

    found: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AlambicError(f"{flag} {item!r}: expected key=value, e.g. {flag} per_channel=true")
        try:
            found[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise AlambicError(f"{flag} {item!r}: cannot read the value {value!r}") from None
    return found


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
    from alambic.compare import compare_dirs, format_report

    quiet = State.quiet or as_json
    with console.status("comparing", spinner="dots") if not quiet else _nothing():
        result = compare_dirs(model_a, model_b, config, split=split, max_examples=max_examples)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    for table in format_report(result):
        console.print(table)


# --- run ------------------------------------------------------------------------------------


@app.command()
def run(path: Annotated[Path, typer.Argument(help="The run config (YAML).")], local: LocalOption = False) -> None:
    """The whole pipeline: data, teacher, students (then search, front, select, export, report)."""
    from alambic.pipeline import PLANNED_STEPS, run_pipeline
    from alambic.run import RunContext

    ctx = RunContext.open(path, quiet=State.quiet)
    students = ctx.config.search.students if ctx.config.search else []
    console.print(f"run '{ctx.config.name}': data -> teacher -> {len(students)} student(s) "
                  f"({', '.join(students) or 'none'}); artifacts in {ctx.store.uri}", highlight=False)
    with console.status("starting", spinner="dots") if not State.quiet else _nothing() as status:
        def on_step(name: str, index: int, total: int) -> None:
            if status is not None:
                status.update(f"step {index + 1}/{total}: {name}")
            console.print(f"[bold]step {index + 1}/{total}[/bold]: {name}")

        result = run_pipeline(ctx, local=local, on_step=on_step)
    teacher_accuracy = result.teacher.metrics["test"]["accuracy"]
    table = Table(title=f"run '{ctx.config.name}' ({result.seconds:.0f} s)")
    for column in ("model", "test accuracy", "macro-F1", "of teacher", "params", "", "folder"):
        table.add_column(column)
    for name, record in [("teacher", result.teacher)] + [(s.student, s) for s in result.students]:
        test = record.metrics["test"]
        table.add_row(name, f"{test['accuracy']:.4f}", f"{test['macro_f1']:.4f}",
                      f"{test['accuracy'] / teacher_accuracy:.1%}", f"{record.metrics['params']:,}",
                      "reused" if record.reused else "trained", str(record.path))
    console.print(table)
    errors.print(f"[yellow]not yet available[/yellow] in this release: {', '.join(PLANNED_STEPS)} "
                 "(pruning, quantization, the Pareto front and ONNX / Core ML export).")


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
