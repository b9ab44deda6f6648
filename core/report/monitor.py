"""``alambic monitor BUNDLE LOGS...``: the app's prediction logs against the bundle's baseline
(``baseline.json``, :mod:`alambic.ship.baseline`), window by window; drift flagged, exit status 1.

Per window (``--window N`` rows in log order, or ``--every 1h`` by timestamp), against the baseline's
split (``test``, or ``golden`` with ``--against golden``):

- predicted-label shares: PSI and Jensen-Shannon divergence (base 2);
- confidence (the predicted label's probability): the shift of its mean, and the PSI of its
  histogram (20 bins on [0, 1]);
- where the rows log their text, the inputs: the PSI of the token-length histogram, and the shifts
  of the ``[UNK]`` rate (share of the texts' tokens) and of the share of truncated texts.

``PSI = sum((a - e) * ln(a / e))`` over the bins, ``a`` the window's share and ``e`` the baseline's;
an empty bin counts as :data:`EPSILON` (1e-4) inside the logarithm, so that a label the window never
predicts gives a large, finite PSI. ``JS = (KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``, in
bits: 0 for equal shares, 1 for disjoint ones; it needs no epsilon. A shift is the window's figure
minus the baseline's. The thresholds are :class:`Thresholds` (defaults there, in ``--help`` and the
README); a window with fewer than ``min_rows`` rows (texts, for the inputs) is reported, not judged::

    result = monitor("artifacts/run/export", ["logs/"], size=1000)   # or every=parse_every("1h")
    result["drift"], result["windows"][0]["status"]          # "ok", "watch", "drift", "too few rows"
    console.print(format_windows(result))
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alambic.report.monitor_logs import Window, Windows, parse_every, read_logs
from alambic.report.monitor_page import write_page
from alambic.ship.baseline import Baseline, TextEncoder, read_baseline

#: an empty bin's share inside PSI's logarithm
EPSILON = 1e-4
DEFAULT_WINDOW = 1000


@dataclass(frozen=True)
class Thresholds:
    """When a window drifts (``watch``: worth a look, not flagged). Shifts are absolute."""

    psi_watch: float = 0.1  # any PSI at or above: watch (the usual rule: < 0.1 stable, 0.1-0.25 watch)
    label_psi: float = 0.25  # predicted-label shares: PSI at or above: drift
    label_js: float = 0.05  # ... JS divergence (bits): about what PSI 0.25 is for small shifts
    confidence_shift: float = 0.05  # mean confidence moved by 5 points or more
    confidence_psi: float = 0.25
    length_psi: float = 0.25  # token-length histogram
    unk_shift: float = 0.01  # [UNK] rate moved by 1 point of the tokens or more
    truncated_shift: float = 0.05  # share of truncated texts moved by 5 points or more
    min_rows: int = 200  # fewer rows (texts, for the inputs): reported, not judged


# --- the figures ----------------------------------------------------------------------------


def shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total else [0.0] * len(counts)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two histograms (counts or shares), empty bins at EPSILON."""
    e, a = shares(expected), shares(actual)
    return sum((ai - ei) * math.log(max(ai, EPSILON) / max(ei, EPSILON)) for ei, ai in zip(e, a))


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence of two histograms, base 2 (0 to 1)."""
    p, q = shares(p), shares(q)
    m = [(x + y) / 2 for x, y in zip(p, q)]

    def kl(x: list[float]) -> float:
        return sum(xi * math.log2(xi / mi) for xi, mi in zip(x, m) if xi > 0)

    return max(0.0, (kl(p) + kl(q)) / 2)


# --- judging a window -----------------------------------------------------------------------


def judge(window: Window, baseline: Baseline, limits: Thresholds) -> dict[str, Any]:
    """The window's figures against the baseline, its status and the reasons for it."""
    ref, got = baseline.reference["predictions"], window.predictions
    found: dict[str, Any] = {
        "index": window.index, "start": _time(window.start), "end": _time(window.end), "first_row": window.first,
        "rows": got.rows, "label_counts": got.labels, "label_shares": shares(got.labels),
        "label_psi": psi(ref["label_counts"], got.labels), "label_js": js_divergence(ref["label_counts"], got.labels),
        "confidence_mean": got.confidence_mean, "confidence_shift": got.confidence_mean - ref["confidence_mean"],
        "confidence_psi": psi(ref["confidence_hist"], got.confidence), "inputs": _inputs(window, baseline)}
    checks = [("label PSI", found["label_psi"], limits.label_psi), ("label JS", found["label_js"], limits.label_js),
              ("confidence shift", found["confidence_shift"], limits.confidence_shift),
              ("confidence PSI", found["confidence_psi"], limits.confidence_psi)]
    inputs = found["inputs"]
    judged_inputs = inputs is not None and inputs["texts"] >= limits.min_rows
    if judged_inputs:
        checks += [("length PSI", inputs["length_psi"], limits.length_psi),
                   ("[UNK] rate shift", inputs["unk_shift"], limits.unk_shift),
                   ("truncated shift", inputs["truncated_shift"], limits.truncated_shift)]
    if got.rows < limits.min_rows:
        found |= {"status": "too few rows", "reasons": [f"{got.rows} rows < {limits.min_rows}: not judged"]}
        return found
    drift = [f"{name} {value:{'+.3f' if name.endswith('shift') else '.3f'}} (limit {limit})"
             for name, value, limit in checks if abs(value) >= limit]  # a shift counts either way
    watch = [f"{name} {value:.3f} (watch from {limits.psi_watch})"
             for name, value, _ in checks if name.endswith("PSI") and value >= limits.psi_watch]
    found |= {"status": "drift" if drift else "watch" if watch else "ok", "reasons": drift or watch}
    if inputs is not None and not judged_inputs:
        found["reasons"].append(f"inputs: {inputs['texts']} texts < {limits.min_rows}: not judged")
    return found


def _inputs(window: Window, baseline: Baseline) -> dict[str, Any] | None:
    ref, got = baseline.reference.get("inputs"), window.inputs
    if ref is None or got.texts == 0:
        return None
    mine = got.to_dict()
    return mine | {"length_psi": psi(ref["length_hist"], got.lengths),
                   "unk_shift": mine["unk_rate"] - ref["unk_rate"],
                   "truncated_shift": mine["truncated_share"] - ref["truncated_share"]}


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# --- the whole log --------------------------------------------------------------------------


def monitor(bundle: str | Path, logs: Sequence[str | Path], *, size: int | None = None,
            every: dt.timedelta | None = None, against: str = "test",
            thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Read the logs (streamed), judge every window; JSON-ready: the baseline, the thresholds, the
    windows, and ``drift``: whether any window drifted."""
    limits = thresholds or Thresholds()
    baseline = read_baseline(bundle, against)
    tokenizer = baseline.tokenizer_path
    encoder = TextEncoder.from_file(tokenizer) if tokenizer and baseline.reference.get("inputs") else None
    size = size if size is not None or every is not None else DEFAULT_WINDOW
    windower = Windows(len(baseline.labels), baseline.max_length, encoder, size=size, every=every)
    windows = [judge(w, baseline, limits) for w in windower.feed(read_logs(logs, baseline.labels))]
    ref = baseline.reference
    return {"bundle": str(baseline.path.parent), "logs": [str(p) for p in logs],
            "windowing": {"rows": size} if every is None else {"every_s": every.total_seconds()},
            "baseline": {"split": against, "labels": baseline.labels, "model": baseline.data.get("model"),
                         "rows": ref["predictions"]["rows"], "label_shares": ref["predictions"]["label_shares"],
                         "confidence_mean": ref["predictions"]["confidence_mean"], "inputs": ref.get("inputs"),
                         "scored_by": baseline.data.get("scored_by")},
            "inputs_compared": encoder is not None,
            "thresholds": dataclasses.asdict(limits) | {"psi_epsilon": EPSILON},
            "rows": sum(w["rows"] for w in windows), "windows": windows,
            "drifted": [w["index"] for w in windows if w["status"] == "drift"],
            "drift": any(w["status"] == "drift" for w in windows)}


def format_windows(result: dict[str, Any]) -> Table:
    """A rich table: one window a row (from: its first row's time, or its period's start, UTC), its
    figures (conf.: mean confidence, Δ its shift) and its status; :func:`reasons` says why."""
    base = result["baseline"]
    table = Table("#", "from", "rows", "label PSI", "label JS", "conf.", "Δ conf.", "conf. PSI", "length PSI",
                  "[UNK]", "trunc.", "status", box=box.SIMPLE_HEAD, padding=(0, 0),  # fits 80 columns
                  title=f"{result['rows']:,} predictions against the baseline's {base['split']} split "
                        f"({base['rows']:,} rows, mean confidence {base['confidence_mean']:.3f})")
    colour = {"ok": "green", "watch": "yellow", "drift": "red", "too few rows": "dim"}
    for w in result["windows"]:
        inputs = w["inputs"] or {}
        table.add_row(str(w["index"]), _short(w["start"]), f"{w['rows']:,}", f"{w['label_psi']:.3f}",
                      f"{w['label_js']:.3f}", f"{w['confidence_mean']:.3f}", f"{w['confidence_shift']:+.3f}",
                      f"{w['confidence_psi']:.3f}", _num(inputs.get("length_psi"), ".3f"),
                      _num(inputs.get("unk_rate"), ".2%"), _num(inputs.get("truncated_share"), ".1%"),
                      f"[{colour[w['status']]}]{w['status']}[/]")
    return table


def reasons(result: dict[str, Any]) -> list[str]:
    """One line per window that is not ok: why (what reached its threshold, or too few rows)."""
    return [f"window {w['index']} ({w['first_row']}): {w['status']}: {'; '.join(w['reasons'])}"
            for w in result["windows"] if w["reasons"]]


def _short(stamp: str | None) -> str:
    return "" if stamp is None else stamp.replace("T", " ").removesuffix("Z")[5:16]


def _num(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


# --- the command ----------------------------------------------------------------------------

_T = Thresholds()


def monitor_command(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help=(
        "The exported bundle (holding baseline.json), e.g. artifacts/<run>/export."))],
    logs: Annotated[list[Path], typer.Argument(metavar="LOGS...", help=(
        "Prediction logs: .jsonl, .csv or .parquet files (.jsonl.gz, .csv.gz), or folders of them; one "
        "prediction a row: timestamp (ISO 8601), label (its name), confidence or probs, optional text."))],
    window: Annotated[int | None, typer.Option(min=1, help=(
        f"Windows of this many rows, in log order (default {DEFAULT_WINDOW})."))] = None,
    every: Annotated[str | None, typer.Option(help="Windows by timestamp instead: 30m, 1h, 1d, 7d, ...")] = None,
    against: Annotated[str, typer.Option(help="The baseline split: test, or golden (data.golden).")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write a page of the figures over time here.")] = None,
    psi_threshold: Annotated[float, typer.Option(help="Label-share PSI that flags drift.")] = _T.label_psi,
    psi_watch: Annotated[float, typer.Option(help="Any PSI from here up: 'watch' (not flagged).")] = _T.psi_watch,
    js_threshold: Annotated[float, typer.Option(help="Label-share JS divergence (bits).")] = _T.label_js,
    confidence_shift: Annotated[float, typer.Option(help="Change of the mean confidence.")] = _T.confidence_shift,
    confidence_psi: Annotated[float, typer.Option(help="PSI of the confidence histogram.")] = _T.confidence_psi,
    length_psi: Annotated[float, typer.Option(help="PSI of the token-length histogram.")] = _T.length_psi,
    unk_shift: Annotated[float, typer.Option(help="Change of the [UNK] rate (share of tokens).")] = _T.unk_shift,
    truncated_shift: Annotated[float, typer.Option(help="Change of the truncated share.")] = _T.truncated_shift,
    min_rows: Annotated[int, typer.Option(min=1, help="Fewer rows (texts): reported, not judged.")] = _T.min_rows,
) -> None:
    """Compare the app's prediction logs with the bundle's baseline, window by window.

    Per window: PSI and JS divergence (base 2) of predicted-label shares, the confidence's mean shift and
    PSI, and with texts the token-length PSI, [UNK] rate and truncated share. A window drifts when a
    figure reaches its threshold (defaults: label PSI 0.25, JS 0.05, confidence shift 0.05, confidence
    PSI 0.25, length PSI 0.25, [UNK] shift 0.01, truncated shift 0.05; PSI from 0.1: watch). Empty bins
    count as 1e-4 in PSI. Logs larger than memory are streamed. Exit status 1 when a window drifts.
    """
    if window is not None and every is not None:
        raise typer.BadParameter("give --window N or --every DURATION, not both")
    limits = Thresholds(psi_watch, psi_threshold, js_threshold, confidence_shift, confidence_psi, length_psi,
                        unk_shift, truncated_shift, min_rows)
    result = monitor(bundle, logs, size=window, every=parse_every(every) if every else None, against=against,
                     thresholds=limits)
    if html is not None:
        write_page(result, html)
    console = Console()
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        console.print(format_windows(result))
        for line in reasons(result):
            console.print(escape(line), highlight=False, soft_wrap=True)
        if not result["inputs_compared"]:
            console.print("inputs not compared: the baseline has no input statistics or the bundle no tokenizer.json")
        if not result["windows"]:
            console.print("[yellow]no predictions in the logs[/yellow]", highlight=False)
        drifted = len(result["drifted"])
        console.print(f"[red]drift in {drifted} of {len(result['windows'])} windows[/red]" if drifted
                      else f"[green]no drift[/green] in {len(result['windows'])} windows", highlight=False)
        if html is not None:
            console.print(f"page: {html}", highlight=False)
    if result["drift"]:
        raise typer.Exit(1)


__all__ = ["DEFAULT_WINDOW", "EPSILON", "Thresholds", "format_windows", "js_divergence", "judge", "monitor",
           "monitor_command", "psi", "reasons", "shares"]
