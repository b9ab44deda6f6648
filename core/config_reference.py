"""The run config's reference: its JSON schema (``alambic config schema``) and every key as the
Markdown table README shows (``alambic config schema --markdown``)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

from alambic.config import RunConfig, Section


def config_schema() -> dict[str, Any]:
    """The JSON schema of a run config (``alambic config schema``)."""
    return RunConfig.model_json_schema()


def config_reference() -> str:
    """Every key of a run config as a Markdown table (key, type, default, description), from the
    schema: README's configuration reference is this text (``alambic config schema --markdown``)."""
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            nested, container = _reference_section(info.annotation)
            if nested is not None:
                walk(nested, f"{key}{container}.")
                continue
            default = "required" if info.is_required() else _show(info.get_default(call_default_factory=True))
            kind = _type_name(info.annotation).replace("|", "\\|")
            description = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {default} | {description} |")

    walk(RunConfig, "")
    return "\n".join(lines) + "\n"


def _reference_section(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The Section class of a field whose type is a section, an optional one, or a list or dict of
    them; and how its keys read in a path ("", "[]" or ".<id>")."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            suffix = "[]" if origin is list else ".<id>" if origin is dict else ""
            return candidate, suffix
    return None, ""


def _type_name(annotation: Any) -> str:
    """A field's type as a reader wants it: ``float | "auto"``, ``list[str]``, ``null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(json_repr(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def json_repr(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"
