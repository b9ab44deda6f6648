"""A run config's problems, one line each naming its key path: pydantic's validation errors
described (the bad value, what is allowed), and plugin ids that no plugin registered."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from alambic.errors import did_you_mean
from alambic.model_sources import parse_packaged

if TYPE_CHECKING:
    from alambic.registry import Registry


# --- validation errors ----------------------------------------------------------------------


def key_path(loc: tuple[Any, ...]) -> str:
    """('search', 'students', 1) -> 'search.students[1]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe_errors(errs: list[dict[str, Any]], root: type[BaseModel]) -> list[str]:
    """One line per key (relative to ``root``: the whole run config, or the section validated);
    the members of a union that all failed are merged into one message."""
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in errs:
        by_key.setdefault(tuple(p for p in err["loc"] if not _is_union_tag(p)), []).append(err)
    lines = []
    for loc, group in by_key.items():
        if len(group) == 1:
            lines.append(_describe(loc, group[0], root))
        else:
            wanted = " or ".join(e["msg"].removeprefix("Input should be ") for e in group)
            lines.append(f"{key_path(loc)}: Input should be {wanted}; got {group[0]['input']!r}")
    return lines


def _describe(loc: tuple[Any, ...], err: dict[str, Any], root: type[BaseModel]) -> str:
    where = key_path(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], root)
        return (
            f"{where}: unknown key{did_you_mean(str(loc[-1]), allowed)}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    if err["type"] == "value_error":  # our own validators already quote the bad value
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    message = err["msg"]
    if err["type"] == "literal_error":
        choices = err.get("ctx", {}).get("expected", "")
        message += did_you_mean(str(err["input"]), [c.strip(" '") for c in choices.replace(" or ", ",").split(",")])
    return f"{where}: {message}; got {err['input']!r}"


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member tried (e.g. 'str', 'int', 'list[str]') in the location
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part
                                      or part.startswith(("literal", "constrained-")))


def _allowed_keys(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """The field names of the section at ``loc`` (for unknown-key messages)."""
    model: Any = root
    keyed = False  # the previous field is a dict of sections: this part is one of its keys
    for part in loc:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
        keyed = getattr(field.annotation, "__origin__", None) is dict
    return list(model.model_fields)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a config section
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


# --- plugin ids -----------------------------------------------------------------------------


def check_plugin_ids(raw: dict[str, Any], registry: Registry) -> list[str]:
    """Every plugin id the config file names must be registered; one problem per unknown id.

    Works on the raw mapping, so unknown ids are reported together with structural problems,
    and ids left to their defaults (built-ins of later stages) are not checked.
    """
    problems = []
    for where, kind, plugin_id in _named_plugin_ids(raw):
        known = registry[kind].ids()
        if plugin_id not in known:
            allowed = ", ".join(known) or "(none registered)"
            problems.append(
                f"{where}: unknown {kind} id {plugin_id!r}{did_you_mean(plugin_id, known)}; "
                f"allowed: {allowed}"
            )
    return problems


def unmeasured_choices(config: Any, golden_limits: tuple[str, ...]) -> list[str]:
    """Choices on a figure nothing will measure: a golden limit without data.golden, an objective on
    ExecuTorch latency without ``search.measure.runtimes: [executorch]``."""
    problems = [f"select.{key}: set to {getattr(config.select, key)!r} but data.golden is not: the golden gate is "
                f"judged on hand-checked rows; set data.golden or remove select.{key}" for key in golden_limits
                if config.data.golden is None and getattr(config.select, key) is not None]
    search = config.search
    if search is not None and "executorch" not in search.measure.runtimes:
        problems += [f"search.objectives: {o.metric} is measured only with search.measure.runtimes: [executorch]"
                     for o in search.objectives if o.metric.startswith("executorch_")]
    return problems


def _packaged_names(teacher_model: Any, inits: Any) -> list[tuple[str, str]]:
    """(key, name) for each ``<source>:<model>`` the config names as weights."""
    inits = inits if isinstance(inits, dict) else {}
    named = [("teacher.model", teacher_model)] + [(f"search.student_init.{k}", v) for k, v in inits.items()]
    return [(where, name) for where, name in named
            if isinstance(name, str) and parse_packaged(name) and not Path(name).expanduser().exists()]


def _named_plugin_ids(raw: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key path, kind, id) for every plugin id written in the config; wrong shapes are skipped
    (the structural validation reports them)."""

    def section(*keys: str) -> Any:
        value: Any = raw
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def strings(where: str, kind: str, value: Any, skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
        items = value if isinstance(value, list) else []
        return [(f"{where}[{i}]", kind, v) for i, v in enumerate(items) if isinstance(v, str) and v not in skip]

    found = []
    if isinstance(section("data", "source"), str):
        found.append(("data.source", "datasets", section("data", "source")))
    if isinstance(section("select", "policy"), str):
        found.append(("select.policy", "selection_policies", section("select", "policy")))
    found += strings("export.formats", "exporters", section("export", "formats"))
    found += strings("search.students", "students", section("search", "students"))
    sizes = section("search", "student_sizes")
    found += [(f"search.student_sizes.{s}", "students", s) for s in sizes or {} if isinstance(s, str)]
    inits = section("search", "student_init")
    found += [(f"search.student_init.{s}", "students", s) for s in (inits if isinstance(inits, dict) else {})
              if isinstance(s, str)]
    found += [(f"{where}: {name}", "model_sources", name.split(":", 1)[0])
              for where, name in _packaged_names(section("teacher", "model"), inits)]
    found += strings("search.quantization", "quantizers", section("search", "quantization"), skip=("none",))
    for i, steps in enumerate(section("search", "pruning") or []):
        for j, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict) and isinstance(step.get("pruner"), str):
                found.append((f"search.pruning[{i}][{j}].pruner", "pruners", step["pruner"]))
    found += strings("distill.losses", "distill_losses", section("distill", "losses"))
    losses = _domain_values(section("search", "space", "losses") or [])
    found += [(f"search.space.losses[{i}]", "distill_losses", loss) for i, loss in enumerate(losses)]
    return found


def _domain_values(value: Any) -> list[str]:
    """The plugin ids named by a setting, whether given plainly or as a choice/grid domain."""
    if isinstance(value, dict):
        value = next(iter(value.values()), [])
    flat: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        flat += item if isinstance(item, list) else [item]
    return [str(v) for v in flat]
