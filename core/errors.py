"""User-facing errors: one clear message that names the file, line or key, and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AlambicError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


class ConfigError(AlambicError):
    """The run configuration is invalid. Holds every problem found, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration ({len(problems)} problem(s)):\n{lines}")


class DataError(AlambicError):
    """A data file cannot be read as the config says."""


class PluginError(AlambicError):
    """A plugin is missing, duplicated, or failed to load."""


class StoreError(AlambicError):
    """An artifact is missing, incomplete or corrupted."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
