"""Plugin classes by kind, keyed by their stable ``id``.

Each registrar hook is handed a :class:`KindRegistry` for its kind; the registry remembers which
plugin added which class, so that two plugins claiming the same id are named in the error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from alambic.errors import PluginError, did_you_mean

#: kind -> the registrar hook that fills it. The order is the order of a run.
KINDS: dict[str, str] = {
    "datasets": "alambic_register_datasets",
    "model_sources": "alambic_register_model_sources",
    "students": "alambic_register_students",
    "distill_losses": "alambic_register_distill_losses",
    "pruners": "alambic_register_pruners",
    "quantizers": "alambic_register_quantizers",
    "selection_policies": "alambic_register_selection_policies",
    "exporters": "alambic_register_exporters",
}

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin came from: its entry-point name and the distribution that ships it."""

    name: str
    package: str = "alambic"
    version: str = ""
    module: str = ""

    def __str__(self) -> str:
        pkg = f"{self.package} {self.version}".strip()
        return f"'{self.name}' ({pkg})"


@dataclass(frozen=True)
class Entry:
    id: str
    cls: type
    source: PluginSource

    @property
    def description(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass
class KindRegistry:
    """What a registrar hook receives: ``register.add(Cls)`` adds ``Cls`` under ``Cls.id``."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    _source: PluginSource | None = None

    def add(self, cls: type) -> type:
        plugin_id = getattr(cls, "id", None)
        if not isinstance(plugin_id, str) or not _ID.match(plugin_id):
            raise PluginError(
                f"{self._source}: {self.kind} class {cls.__qualname__} needs a class attribute "
                f"`id` made of lowercase letters, digits, '-', '_' or '.', got {plugin_id!r}"
            )
        if plugin_id in self.entries:
            first = self.entries[plugin_id].source
            raise PluginError(
                f"{self.kind} id '{plugin_id}' is registered twice: by plugin {first} "
                f"and by plugin {self._source}; disable one with ALAMBIC_DISABLE_PLUGINS"
            )
        self.entries[plugin_id] = Entry(plugin_id, cls, self._source or PluginSource("?"))
        return cls

    def ids(self) -> list[str]:
        return sorted(self.entries)

    def get(self, plugin_id: str) -> type:
        """The class registered under ``plugin_id``; a clear error (with did-you-mean) if none."""
        try:
            return self.entries[plugin_id].cls
        except KeyError:
            allowed = ", ".join(self.ids()) or "(none registered)"
            hint = did_you_mean(plugin_id, self.entries)
            raise PluginError(
                f"unknown {self.kind} id '{plugin_id}'{hint}; registered: {allowed}"
            ) from None


@dataclass
class Registry:
    """All kinds together, plus the plugins that failed to load (reported, never fatal)."""

    kinds: dict[str, KindRegistry] = field(
        default_factory=lambda: {kind: KindRegistry(kind) for kind in KINDS}
    )
    failures: list[tuple[PluginSource, str]] = field(default_factory=list)

    def __getitem__(self, kind: str) -> KindRegistry:
        return self.kinds[kind]

    def ids(self) -> dict[str, list[str]]:
        return {kind: reg.ids() for kind, reg in self.kinds.items()}
