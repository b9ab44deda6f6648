"""The page ``alambic monitor --html PATH`` writes: the monitor's figures over time, one self-contained
HTML file (pictures inline, as the report's page: :mod:`alambic.report.html_page`)::

    write_page(result, "monitor.html")      # result: alambic.report.monitor.monitor(...)

Pictures: predicted-label PSI and JS per window against their thresholds, the label shares per
window beside the baseline's, the confidence's mean and PSI, and, where texts were logged, the
token-length PSI, [UNK] rate and truncated share. Each window's point is coloured by its status.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.report.document import Image, Report, Section, Table
from alambic.report.html_page import CJK_FONTS, draws_names, render_html

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = {"ok": "#2e8b57", "watch": "#e0a000", "drift": "#c0392b", "too few rows": "#9aa0a6"}


def write_page(result: dict[str, Any], path: str | Path) -> Path:
    """Write the page; the folder is created when missing."""
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(page(result)), encoding="utf-8")
    return out


def page(result: dict[str, Any]) -> Report:
    base, windows = result["baseline"], result["windows"]
    verdict = (f"drift in {len(result['drifted'])} of {len(windows)} windows" if result["drift"]
               else f"no drift in {len(windows)} windows")
    subtitle = (f"{result['rows']:,} logged predictions against the baseline's {base['split']} split "
                f"({base['rows']:,} rows) of {result['bundle']}: {verdict}")
    sections = _figures(result) if windows else [Section("labels", "Predicted labels", ["no rows logged"])]
    sections += [Section("windows", "Windows", [_windows_table(result)]),
                 Section("baseline", "Baseline and thresholds", [_facts(result)])]
    # the page is rendered, not saved to a run's store: Report's store is not used by render_html
    return Report("alambic monitor", subtitle, sections, store=None)  # type: ignore[arg-type]


# --- pictures -------------------------------------------------------------------------------


def _figures(result: dict[str, Any]) -> list[Section]:
    key = ("Each point is a window, coloured by its status: green ok, amber watch, red drift, grey too few rows "
           "to judge; dashed lines are the thresholds, dotted ones the baseline.")
    sections = [Section("labels", "Predicted labels", [key, _png(_labels_figure(result), "labels.png",
                                                                 "label PSI, JS and shares per window")]),
                Section("confidence", "Confidence", [_png(_confidence_figure(result), "confidence.png",
                                                          "mean confidence and confidence PSI per window")])]
    if any(w["inputs"] for w in result["windows"]):
        sections.append(Section("inputs", "Inputs", [_png(_inputs_figure(result), "inputs.png",
                                                          "token-length PSI, [UNK] rate, truncated share")]))
    return sections


def _x(result: dict[str, Any]) -> tuple[list[Any], str]:
    """Window start times (--every) or window numbers, and the axis label."""
    windows = result["windows"]
    if "every_s" in result["windowing"]:
        return [dt.datetime.fromisoformat(w["start"].replace("Z", "+00:00")) for w in windows], "window start (UTC)"
    return [w["index"] for w in windows], f"window ({result['windowing']['rows']:,} rows each)"


def _series(ax: Axes, x: Sequence[Any], values: Sequence[float | None], windows: list[dict[str, Any]],
            label: str, limit: float | None = None, baseline: float | None = None, watch: float | None = None) -> None:
    """One figure per window, joined, each point in its window's status colour; the threshold and
    the baseline as lines."""
    ax.plot(x, [v if v is not None else float("nan") for v in values], color="#44506a", lw=1, label=label)
    ax.scatter(x, [v if v is not None else float("nan") for v in values], s=18, zorder=3,
               c=[COLOURS[w["status"]] for w in windows])
    if limit is not None:
        ax.axhline(limit, color=COLOURS["drift"], ls="--", lw=1, label=f"threshold {limit:g}")
    if watch is not None:
        ax.axhline(watch, color=COLOURS["watch"], ls=":", lw=1, label=f"watch {watch:g}")
    if baseline is not None:
        ax.axhline(baseline, color="#2b5fb4", ls=":", lw=1.2, label=f"baseline {baseline:.3g}")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def _labels_figure(result: dict[str, Any]) -> Figure:
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    x, xlabel = _x(result)
    windows, limits, base = result["windows"], result["thresholds"], result["baseline"]
    names, rc = _names(base["labels"])
    with rc_context(rc):
        fig = Figure(figsize=(10, 8.5), dpi=100, layout="constrained")
        psi_ax, js_ax, share_ax = fig.subplots(3, 1)
        _series(psi_ax, x, [w["label_psi"] for w in windows], windows, "label PSI", limits["label_psi"],
                watch=limits["psi_watch"])
        _series(js_ax, x, [w["label_js"] for w in windows], windows, "label JS (bits)", limits["label_js"])
        positions = list(range(len(windows) + 1))
        bottom = [0.0] * len(positions)
        for k, name in enumerate(names):
            heights = [base["label_shares"][k]] + [w["label_shares"][k] for w in windows]
            share_ax.bar(positions, heights, bottom=bottom, width=0.9, label=name)
            bottom = [b + h for b, h in zip(bottom, heights)]
        step = max(1, len(windows) // 20)  # at most ~20 window numbers under the bars
        share_ax.set_xticks([0, *positions[1::step]], ["baseline", *(str(w["index"]) for w in windows[::step])])
        share_ax.set_xlabel("window")
        share_ax.set_ylabel("share of predictions")
        share_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        js_ax.set_xlabel(xlabel)
        fig.suptitle("predicted-label shares against the baseline", fontsize=11)
        return fig


def _confidence_figure(result: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    x, xlabel = _x(result)
    windows, limits, base = result["windows"], result["thresholds"], result["baseline"]
    fig = Figure(figsize=(10, 5.5), dpi=100, layout="constrained")
    mean_ax, psi_ax = fig.subplots(2, 1, sharex=True)
    _series(mean_ax, x, [w["confidence_mean"] for w in windows], windows, "mean confidence",
            baseline=base["confidence_mean"])
    for sign in (-1, 1):
        mean_ax.axhline(base["confidence_mean"] + sign * limits["confidence_shift"], color=COLOURS["drift"],
                        ls="--", lw=1)
    _series(psi_ax, x, [w["confidence_psi"] for w in windows], windows, "confidence PSI", limits["confidence_psi"])
    psi_ax.set_xlabel(xlabel)
    fig.suptitle("confidence (the predicted label's probability) against the baseline", fontsize=11)
    return fig


def _inputs_figure(result: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    x, xlabel = _x(result)
    windows, limits, base = result["windows"], result["thresholds"], result["baseline"]["inputs"] or {}
    fig = Figure(figsize=(10, 7.5), dpi=100, layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)

    def figure(key: str) -> list[float | None]:
        return [(w["inputs"] or {}).get(key) for w in windows]

    _series(axes[0], x, figure("length_psi"), windows, "token-length PSI", limits["length_psi"])
    _series(axes[1], x, figure("unk_rate"), windows, "[UNK] rate", baseline=base.get("unk_rate"))
    _series(axes[2], x, figure("truncated_share"), windows, "truncated share", baseline=base.get("truncated_share"))
    axes[2].set_xlabel(xlabel)
    fig.suptitle("inputs (logged texts, the bundle's tokenizer) against the baseline", fontsize=11)
    return fig


def _names(labels: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Label names when a font draws them (CJK font found), else ids; the rc settings for it."""
    if all(n.isascii() for n in labels):
        return list(labels), {}
    if not draws_names(labels):
        return [f"label {i}" for i in range(len(labels))], {}  # the page's tables name them
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    font = next(f for f in CJK_FONTS if f in installed)
    return list(labels), {"font.family": [font, "DejaVu Sans"]}


def _png(fig: Figure, name: str, alt: str) -> Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return Image(name, buffer.getvalue(), alt)


# --- tables ---------------------------------------------------------------------------------


def _windows_table(result: dict[str, Any]) -> Table:
    rows = []
    for w in result["windows"]:
        inputs = w["inputs"] or {}
        rows.append([str(w["index"]), w["start"] or "", w["end"] or "", f"{w['rows']:,}", f"{w['label_psi']:.3f}",
                     f"{w['label_js']:.3f}", f"{w['confidence_mean']:.3f}", f"{w['confidence_shift']:+.3f}",
                     f"{w['confidence_psi']:.3f}", _fmt(inputs.get("length_psi"), ".3f"),
                     _fmt(inputs.get("unk_rate"), ".2%"), _fmt(inputs.get("truncated_share"), ".1%"), w["status"],
                     "; ".join(w["reasons"])])
    headers = ["window", "from", "to", "rows", "label PSI", "label JS", "conf. mean", "conf. shift", "conf. PSI",
               "length PSI", "[UNK]", "truncated", "status", "why"]
    return Table(headers, rows, emphasis=tuple(i for i, w in enumerate(result["windows"]) if w["status"] == "drift"))


def _facts(result: dict[str, Any]) -> Table:
    base, model = result["baseline"], result["baseline"].get("model") or {}
    facts = [["model (stage key)", str(model.get("stage"))], ["model digest", str(model.get("digest"))],
             ["baseline", f"{base['split']} split, {base['rows']:,} rows, scored by {base.get('scored_by')}"],
             ["labels", ", ".join(f"{i} {name}" for i, name in enumerate(base["labels"]))],
             ["logs", ", ".join(result["logs"])]]
    facts += [[f"threshold {k}", f"{v:g}"] for k, v in result["thresholds"].items()]
    return Table(["", ""], facts)


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


__all__ = ["page", "write_page"]
