"""The ``alambic personalize`` command: a thin shell over :func:`alambic.ship.personalize.personalize`.

It lives beside the library (registered by ``alambic.cli`` in one line) and imports it, numpy and
the ML stack inside the command, so that the CLI starts without them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from alambic.config import load_config
from alambic.manager import build_registry


def personalize_command(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help=(
        "An export bundle (or its coreml/ folder) holding UpdatableClassifier.mlmodel."))],
    feedback: Annotated[Path, typer.Argument(metavar="FEEDBACK", help=(
        "The user's corrections: .tsv/.txt (text<TAB>label), .csv (header text,label) or .jsonl "
        "({\"text\": ..., \"label\": ...}); label = one of the model's label names."))],
    out: Annotated[Path | None, typer.Option(help=(
        "Where to write the updated head and update_inputs.json (for examples/ios/UpdateCheck); default "
        "<bundle>-personalized/."))] = None,
    golden: Annotated[Path | None, typer.Option(help=(
        "A golden set, to see that the rest still holds: a file in the feedback format, or with --config "
        "in the run's data format (with --config and no --golden: its data.golden)."))] = None,
    config: Annotated[Path | None, typer.Option(help=(
        "The run config (YAML) whose data format --golden is written in."))] = None,
    min_samples: Annotated[int, typer.Option(min=1, help=(
        "Fewer feedback rows than this to update with (after the held-out part): no update."))] = 30,
    holdout: Annotated[float, typer.Option(min=0, max=0.95, help=(
        "Share of the feedback held out (seeded) to measure before and after on."))] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw and of the shuffle.")] = 0,
    encoder_weights: Annotated[Literal["mlmodel", "stage"], typer.Option(help=(
        "The encoder's weights: those the .mlmodel holds (fp16 or int8, as the phone has them), or the "
        "compress stage's fp32 ones."))] = "mlmodel",
    stage: Annotated[Path | None, typer.Option(help=(
        "The compress stage the bundle was exported from (the encoder's architecture); default: the "
        "bundle's manifest.json names it."))] = None,
    learning_rate: Annotated[float | None, typer.Option(help=(
        "As the app may set it (MLModelConfiguration); default: the model's."))] = None,
    batch_size: Annotated[int | None, typer.Option(help="As the app may set it; default: the model's.")] = None,
    epochs: Annotated[int | None, typer.Option(help="As the app may set it; default: the model's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Run the phone's update of the head (MLUpdateTask on UpdatableClassifier.mlmodel) off the phone.

    The loss, the optimizer and its settings, and the head's weights are read from the .mlmodel;
    the frozen encoder's pooled vectors are computed in PyTorch with the weights the .mlmodel
    holds. A seeded part of the feedback is held out: accuracy before and after on it and on
    --golden shows whether the update helps this user without breaking the rest. Fewer than
    --min-samples rows to update with: no update (exit code 0). Writes head.npz,
    UpdatableClassifier.personalized.mlmodel, personalization.json and update_inputs.json (the rows
    as the app feeds MLUpdateTask and the off-device result, for examples/ios/UpdateCheck on a Mac);
    the bundle's own model stays the reset.
    """
    from alambic.ship.personalize import format_personalization, personalize

    # the CLI's --quiet sets the root log level to ERROR: no progress bars then
    quiet = as_json or logging.getLogger().getEffectiveLevel() >= logging.ERROR
    run_config = load_config(config, registry=build_registry()) if config is not None else None
    result = personalize(bundle, feedback, out=out, golden=golden, config=run_config, min_samples=min_samples,
                         holdout=holdout, seed=seed, encoder_weights=encoder_weights, stage=stage,
                         learning_rate=learning_rate, batch_size=batch_size, epochs=epochs, quiet=quiet)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str))
        return
    console = Console()
    if not result.updated:
        console.print(f"[yellow]no update[/yellow]: {escape(result.reason)}", highlight=False)
        return
    console.print(format_personalization(result))
    console.print(f"encoder: {escape(result.encoder)}", highlight=False)
    console.print(f"wrote {result.out}: {', '.join(result.written)} (the reset: the bundle's "
                  f"{escape(str(result.reset))})", highlight=False)


__all__ = ["personalize_command"]
