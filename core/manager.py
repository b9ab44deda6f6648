"""Build the plugin manager and the registry of plugin classes.

Built-in plugins are declared as entry points of the ``alambic`` distribution (group ``alambic``)
and load exactly like a third-party package's: core never imports a plugin module by name.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

import pluggy

from alambic import hookspecs
from alambic.errors import PluginError
from alambic.registry import KINDS, KindRegistry, PluginSource, Registry

ENTRY_POINT_GROUP = "alambic"
DISABLE_ENV = "ALAMBIC_DISABLE_PLUGINS"

log = logging.getLogger(__name__)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus where each plugin came from and which ones failed to load."""

    def __init__(self) -> None:
        super().__init__("alambic")
        self.sources: dict[str, PluginSource] = {}
        self.failures: list[tuple[PluginSource, str]] = []


def disabled_plugins(env: dict[str, str] | None = None) -> set[str]:
    """Names (entry-point names or distribution names) listed in ``ALAMBIC_DISABLE_PLUGINS``."""
    raw = (env if env is not None else os.environ).get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def get_plugin_manager(env: dict[str, str] | None = None) -> PluginManager:
    """A fresh manager: specs added, entry points loaded (blocklist applied), specs checked."""
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    blocked = disabled_plugins(env)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = _source_of(ep)
        if ep.name in blocked or source.package in blocked:
            log.info("plugin %s disabled by %s", source, DISABLE_ENV)
            continue
        _load(pm, ep, source)
    _check_pending(pm)
    return pm


def _check_pending(pm: PluginManager) -> None:
    """A plugin implementing a hook that does not exist (a typo) is reported and dropped."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            pm.unregister(exc.plugin)
            source = pm.sources.pop(name, PluginSource(name))
            pm.failures.append((source, f"PluginValidationError: {exc}"))
            log.warning("plugin %s dropped: %s", source, exc)


def _source_of(ep: importlib.metadata.EntryPoint) -> PluginSource:
    dist = ep.dist
    return PluginSource(
        name=ep.name,
        package=dist.name if dist else "?",
        version=dist.version if dist else "",
        module=ep.value,
    )


def _load(pm: PluginManager, ep: importlib.metadata.EntryPoint, source: PluginSource) -> None:
    """Import one plugin; an import error is recorded and reported, and the others still load."""
    if ep.name in pm.sources:
        raise PluginError(
            f"two plugins are named '{ep.name}': {pm.sources[ep.name]} and {source}; "
            f"entry-point names in group '{ENTRY_POINT_GROUP}' must be unique"
        )
    try:
        plugin = ep.load()
    except Exception as exc:  # a broken plugin must not break the others
        message = f"{type(exc).__name__}: {exc}"
        log.warning("plugin %s failed to load: %s", source, message)
        pm.failures.append((source, message))
        return
    pm.register(plugin, name=ep.name)
    pm.sources[ep.name] = source


def build_registry(pm: PluginManager | None = None) -> Registry:
    """Call every registrar hook, one plugin at a time so each class knows its source."""
    pm = pm or get_plugin_manager()
    registry = Registry(failures=list(pm.failures))
    for kind, hook_name in KINDS.items():
        kind_registry: KindRegistry = registry[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            kind_registry._source = pm.sources.get(impl.plugin_name, PluginSource(impl.plugin_name))
            impl.function(register=kind_registry)
        kind_registry._source = None
    return registry
