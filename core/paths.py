"""Paths that must stay where they belong: store-relative paths, and paths read back from records.

``safe_rel(rel)`` normalizes a store-relative path and refuses one that could leave the store;
``inside(folder, value, source=, key=)`` joins a path read from a stored record (record.json, a
results row) to its folder, or raises :class:`UnsafePathError` naming the file, the key and the value.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from alambic.errors import StoreError


def safe_rel(rel: str) -> str:
    """Normalize a store-relative path; refuse anything that could leave the store."""
    path = PurePosixPath(rel)
    if path.is_absolute() or "\\" in rel or ".." in path.parts or ":" in rel.split("/")[0]:
        raise StoreError(f"unsafe path {rel!r}: must be relative, without '..'")
    return "/".join(p for p in path.parts if p != ".")


class UnsafePathError(StoreError):
    """A path read from a stored record (record.json, a results row) that would leave its folder."""


def inside(folder: str | os.PathLike[str], value: Any, *, source: str, key: str) -> Path:
    """``folder / value`` for a path read from a stored record, as manifest paths are checked: it
    must be relative, without '..', and still inside ``folder`` once symlinks are resolved.

    A record is data anyone who can write the store may have changed: joined unchecked, an absolute
    or '..' path would make export copy, or the report load, any file on the machine.

    :param source: the file the path was read from (``.../record.json``), named in the error
    :param key: where in it (``artifact``, ``quantization.source``)
    """
    base = Path(folder).resolve()
    rel = record_rel(value, source, key, base)
    path = base / rel
    if not path.resolve().is_relative_to(base):  # a symlink inside the folder leading out of it
        raise UnsafePathError(f"{source}: {key} {value!r} leads outside {base} (through a symbolic link); "
                              f"expected a path inside that folder")
    return path


def record_rel(value: Any, source: str, key: str, base: Any) -> str:
    """``value`` as a normalized relative path, or UnsafePathError naming ``source``, ``key`` and ``value``."""
    expected = f"expected a path relative to {base}, inside it (as alambic writes it)"
    if not isinstance(value, str) or not value.strip():
        raise UnsafePathError(f"{source}: {key} is {value!r}; {expected}")
    try:
        rel = safe_rel(value)
    except StoreError:
        raise UnsafePathError(f"{source}: {key} {value!r} is absolute or climbs out with '..'; {expected}") from None
    if not rel:
        raise UnsafePathError(f"{source}: {key} {value!r} names the folder itself; {expected}")
    return rel
