"""How the report looks: report.md, report.html (one self-contained page), its pictures; the blocks
it draws are :mod:`alambic.report.document`'s.

::

    Section("front", "Pareto front", ["a paragraph, `code` kept", Table(headers, rows), Image(name, png, alt)])
    render_markdown(report, "report_images")       # pictures as files beside report.md
    render_html(report)                            # an alambic.report.document.Report, as one page
    png = confusion_png(confusion, label_names)    # rows = true labels, columns = predictions
    png = distribution_png({"teacher": [...], "selected": [...]}, label_names)

The page holds everything it shows: its CSS inline, every picture a ``data:image/png;base64,``
URI, no script, no link to anything outside it, so it opens offline and travels by mail.
matplotlib draws without pyplot (no global state); Chinese label names are drawn with a CJK font
when one is installed, else as their ids (the tables beside the pictures name them).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from alambic.report.document import Image, Items, Report, Section, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: fonts that draw Chinese label names in the pictures; the first one installed is used
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")
_NUMBER = re.compile(r"^[-+]?[\d,.]+\s*(%|×|MB|ms| MB| ms)?$")
_CODE = re.compile(r"`([^`]+)`")

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "PingFang SC", sans-serif;
       color: #1d2330; background: #f6f7f9; margin: 0; }
header { background: #1d2330; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; color: #c9cfdb; }
nav { padding: 8px 32px; background: #fff; border-bottom: 1px solid #dde1e8; position: sticky; top: 0; }
nav a { margin-right: 16px; color: #2b5fb4; text-decoration: none; font-size: 14px; }
main { padding: 8px 32px 48px; max-width: 1400px; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 4px 20px 16px; margin: 16px 0; }
section.missing { color: #6b7385; }
h2 { font-size: 19px; border-bottom: 1px solid #eceff3; padding-bottom: 6px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #dde1e8; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.emphasis td { background: #fff6d6; font-weight: 600; }
caption { caption-side: bottom; text-align: left; color: #6b7385; font-size: 12px; padding-top: 4px; }
code { background: #eef1f6; padding: 0 4px; border-radius: 3px; font-size: 90%; }
img { max-width: 100%; height: auto; display: block; margin: 10px 0; }
"""


# --- report.md ------------------------------------------------------------------------------


def render_markdown(report: Report, images_dir: str) -> str:
    """The sections as GitHub markdown; pictures are files under ``images_dir`` beside it."""
    lines = [f"# {report.title}", "", report.subtitle, ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [*_markdown(block, images_dir), ""]
    return "\n".join(lines)


def _markdown(block: Any, images_dir: str) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    if isinstance(block, Table):
        out = ["| " + " | ".join(map(cell, block.headers)) + " |", "|" + " --- |" * len(block.headers)]
        out += ["| " + " | ".join(map(cell, row)) + " |" for row in block.rows]
        return out + (["", f"*{block.caption}*"] if block.caption else [])
    if isinstance(block, Image):
        return [f"![{block.alt}]({images_dir}/{block.name})"]
    if isinstance(block, Items):
        return [f"- {line}" for line in block.lines]
    return [str(block)]


# --- report.html ----------------------------------------------------------------------------


def render_html(report: Report) -> str:
    """The whole page as one string (UTF-8)."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in report.sections)
    body = "\n".join(_section(s) for s in report.sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{html.escape(report.title)}</h1><p>{_inline(report.subtitle)}</p></header>\n"
            f"<nav>{nav}</nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _section(section: Section) -> str:
    parts = []
    for block in section.blocks:
        if isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">')
        elif isinstance(block, Items):
            parts.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in block.lines) + "</ul>")
        else:
            parts.append(f"<p>{_inline(str(block))}</p>")
    kind = ' class="missing"' if section.missing else ""
    title = f"<h2>{html.escape(section.title)}</h2>"
    return f'<section id="{section.id}"{kind}>\n{title}\n' + "\n".join(parts) + "\n</section>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) if any(table.headers) else ""
    rows = []
    for i, row in enumerate(table.rows):
        cells = "".join(f'<td class="num">{_inline(c)}</td>' if _NUMBER.match(c) else f"<td>{_inline(c)}</td>"
                        for c in row)
        rows.append(f'<tr class="emphasis">{cells}</tr>' if i in table.emphasis else f"<tr>{cells}</tr>")
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{caption}{thead}<tbody>{''.join(rows)}</tbody></table>"


def _inline(text: str) -> str:
    """Escaped text; `code` spans become <code>."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


# --- the pictures ---------------------------------------------------------------------------


def shares(confusion: Sequence[Sequence[int]], axis: int) -> list[float]:
    """Per label, the share of rows: ``axis=1`` true labels, ``axis=0`` predictions."""
    import numpy as np

    counts = np.asarray(confusion, dtype=float).sum(axis=axis)
    return (counts / max(counts.sum(), 1.0)).tolist()


def _cjk_font() -> str | None:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((f for f in CJK_FONTS if f in installed), None)


def draws_names(names: Sequence[str]) -> bool:
    """Whether the pictures can write these label names (else they show ids)."""
    return all(n.isascii() for n in names) or _cjk_font() is not None


def _labels(names: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """(tick labels, rc settings): the names when a font can draw them, else their ids."""
    if all(n.isascii() for n in names):
        return list(names), {}
    font = _cjk_font()
    if font is None:  # DejaVu has no Chinese glyphs: boxes, and a warning per glyph
        return [str(i) for i in range(len(names))], {}
    return list(names), {"font.family": [font, "DejaVu Sans"]}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def confusion_png(confusion: Sequence[Sequence[int]], names: Sequence[str]) -> bytes:
    """The confusion matrix, each row shaded by its share of the true label; counts written in."""
    import numpy as np
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=float)  # (true, predicted)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    ticks, rc = _labels(names)
    n, side = len(names), min(11.0, 3.5 + 0.45 * len(names))
    with rc_context(rc):
        fig = Figure(figsize=(side + 1.5, side), dpi=110, layout="constrained")
        ax = fig.add_subplot()
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, label="share of the true label's rows")
        turn = n > 4 and max(map(len, ticks)) > 2  # long names slant; ids stand upright
        ax.set_xticks(range(n), ticks, rotation=45 if turn else 0, ha="right" if turn else "center")
        ax.set_yticks(range(n), ticks)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion matrix on the test split ({int(counts.sum()):,} rows)", fontsize=10)
        if n <= 20:
            for i, j in np.ndindex(n, n):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        return _png(fig)


def distribution_png(series: Mapping[str, Sequence[float]], names: Sequence[str]) -> bytes:
    """Grouped bars: per label, the share of rows each series gives it (true labels, predictions)."""
    import numpy as np
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    ticks, rc = _labels(names)
    x, width = np.arange(len(names)), 0.8 / max(len(series), 1)
    with rc_context(rc):
        fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2), 4.2), dpi=110, layout="constrained")
        ax = fig.add_subplot()
        for k, (label, values) in enumerate(series.items()):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x, ticks, rotation=45 if len(names) > 6 and max(map(len, ticks)) > 2 else 0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel("share of the test rows")
        ax.set_title("prediction distribution per label on the test split", fontsize=10)
        ax.set_ylim(0, 1.25 * max((max(v, default=0) for v in series.values()), default=1) or 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(ncols=len(series), loc="upper center")  # above the bars: the headroom set_ylim left
        return _png(fig)


__all__ = ["confusion_png", "distribution_png", "draws_names", "render_html", "render_markdown", "shares"]
