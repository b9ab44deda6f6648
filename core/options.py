"""Plugin options: the ``Options`` of a plugin without any, the check of given options against a
plugin's ``Options`` dataclass, helpers for an ``Options.__post_init__``, and ``key=value`` pairs from
the command line (``--set``, ``--quant-option``, ``--option``) read into a mapping."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import yaml

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


def choice(who: str, name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise unless ``value`` is one of ``allowed`` (for Options.__post_init__)."""
    if value not in allowed:
        names = tuple(map(str, allowed))
        raise AlambicError(f"{who}: {name} must be one of {', '.join(names)}, got {value!r}"
                           f"{did_you_mean(str(value), names)}")


def set_fields(options: Any, **values: Any) -> None:
    """Set fields of a frozen dataclass: to normalise them in its ``__post_init__``."""
    for key, value in values.items():
        object.__setattr__(options, key, value)


def parse_set(pairs: Sequence[str], flag: str = "--set", example: str = "temperature=2") -> dict[str, Any]:
    """``["temperature=2", "losses=[kd, hidden-mse]"]`` -> a dict; values are read as YAML.

    :param flag: the command-line option the pairs came from, named in errors (with ``example``).
    """
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AlambicError(f"{flag} {pair!r}: expected key=value, e.g. {flag} {example}")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise AlambicError(f"{flag} {pair!r}: cannot read the value {value!r}") from None
    return overrides
