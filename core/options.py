"""Plugin options: the ``Options`` of a plugin without any, the check of given options against a
plugin's ``Options`` dataclass, and helpers for an ``Options.__post_init__``."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from alambic.errors import AlambicError, did_you_mean


@dataclass(frozen=True)
class NoOptions:
    """A plugin without options."""


def check_names(who: str, Options: type, given: Collection[str], removed: Mapping[str, str] | None = None) -> None:
    """Raise unless every name in ``given`` is a field of ``Options`` (``who``: "pruner 'heads'").

    :param removed: options a former version had: name -> why it went, so that an old config
        fails with the reason rather than "unknown option".
    """
    removed = removed or {}
    allowed = [f.name for f in fields(Options)]
    for key in given:
        if key in removed:
            raise AlambicError(f"{who}: option '{key}' was removed: {removed[key]}")
        if key not in allowed:
            raise AlambicError(
                f"{who}: unknown option '{key}'{did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )


def validated(who: str, Options: type, given: Any = None, removed: Mapping[str, str] | None = None) -> Any:
    """``given`` (None, a mapping of option names, or an ``Options``) as a validated ``Options``."""
    if isinstance(given, Options):
        return given
    given = dict(given or {})
    check_names(who, Options, given, removed)
    return Options(**given)


def choice(who: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of ``allowed`` (for Options.__post_init__)."""
    if value not in allowed:
        raise AlambicError(f"{who}: {name} must be one of {', '.join(allowed)}, got {value!r}"
                           f"{did_you_mean(str(value), allowed)}")


def set_fields(options: Any, **values: Any) -> None:
    """Set fields of a frozen dataclass: to normalise them in its ``__post_init__``."""
    for key, value in values.items():
        object.__setattr__(options, key, value)
