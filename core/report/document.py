"""What a report is made of: a :class:`Report` of titled :class:`Section` s, each a list of blocks
(paragraphs, :class:`Table`, :class:`Image`, :class:`Items`); built by :mod:`alambic.report.build`,
drawn by :mod:`alambic.report.html_page`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alambic.store import Store


@dataclass(frozen=True)
class Table:
    headers: list[str]  # all empty: a table of facts, shown without a header row
    rows: list[list[str]]
    caption: str = ""
    emphasis: tuple[int, ...] = ()  # rows to highlight (the selected candidate)


@dataclass(frozen=True)
class Image:
    name: str  # its file name beside report.md
    png: bytes
    alt: str


@dataclass(frozen=True)
class Items:
    lines: list[str]


@dataclass
class Section:
    """A titled list of blocks: str (a paragraph; `code` spans kept), Table, Image, Items."""

    id: str  # the page's anchor
    title: str
    blocks: list[Any] = field(default_factory=list)
    missing: str | None = None  # why its content is absent, said as its only paragraph


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]
    store: Store  # the run directory it is written to

    @property
    def missing(self) -> list[str]:
        return [f"{s.title}: {s.missing}" for s in self.sections if s.missing]


__all__ = ["Image", "Items", "Report", "Section", "Table"]
