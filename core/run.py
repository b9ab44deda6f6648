"""The run context: one config, its plugins, its store, and its data prepared once.

Every command that works on a run (teacher, distill, compare, search, ...) starts here::

    ctx = RunContext.open("examples/thucnews.yaml")
    prepared = ctx.prepared          # data loaded, tokenizer ready, splits tokenized (cached)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from alambic.config import RunConfig, load_config
from alambic.config_problems import check_plugin_ids
from alambic.data.dataset import column, load_data
from alambic.data.tokenize import load_tokenizer, tokenize_data, tokenized_key, train_tokenizer
from alambic.errors import ConfigError
from alambic.fingerprint import stable_hash
from alambic.manager import build_registry, get_plugin_manager
from alambic.registry import Registry
from alambic.store import Store

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The run's data, ready to train on."""

    raw: Any  # DatasetDict: text, label
    report: Any  # DataReport
    tokenizer: Any
    tokenized: Any  # DatasetDict: input_ids, attention_mask, token_type_ids, label, length
    tokenized_key: str  # fingerprint of (data, tokenizer, max_length): keys every later stage
    label_names: list[str]
    tokenizer_path: Path | None = None  # a folder with the tokenizer, to ship beside models


@dataclass
class RunContext:
    config: RunConfig
    registry: Registry
    pm: Any  # the plugin manager: lifecycle hooks are called through pm.hook
    root: Store  # the store (artifacts/ or a URI)
    store: Store  # this run's directory in it
    quiet: bool = False

    @classmethod
    def open(cls, config_path: str | Path, quiet: bool = False) -> RunContext:
        return cls.from_config(load_config(config_path), quiet=quiet, config_path=config_path)

    @classmethod
    def from_config(cls, config: RunConfig, quiet: bool = False, config_path: str | Path = "config") -> RunContext:
        """Plugins are loaded and the config's plugin ids checked against them."""
        pm = get_plugin_manager()
        registry = build_registry(pm)
        problems = check_plugin_ids(config.model_dump(exclude_defaults=True), registry)
        if problems:
            raise ConfigError(str(config_path), problems)
        root = Store.open(config.store)
        return cls(config=config, registry=registry, pm=pm, root=root, store=root.run(config.name), quiet=quiet)

    @property
    def cache_dir(self) -> Path:
        """Local scratch shared by runs: the store's own folder when local, else the user cache."""
        return Path(self.root.base) / "cache" if self.root.is_local else Path(self.root.cache_dir)

    @cached_property
    def prepared(self) -> PreparedData:
        dsd, report = load_data(self.config.data, self.registry)
        tokenizer, tokenizer_path = self._tokenizer(dsd, report.fingerprint)
        tokenized = tokenize_data(dsd, tokenizer, self.config.tokenizer.max_length, self.cache_dir,
                                  report.fingerprint, progress=not self.quiet)

        return PreparedData(
            raw=dsd, report=report, tokenizer=tokenizer, tokenized=tokenized,
            tokenized_key=tokenized_key(report.fingerprint, tokenizer, self.config.tokenizer.max_length),
            label_names=list(dsd["train"].features["label"].names), tokenizer_path=tokenizer_path,
        )

    def tokenize(self, tokenizer: Any) -> tuple[Any, str]:
        """The run's splits tokenized by ``tokenizer`` (a model's own), cached like the run's; and
        their key. Row ``i`` of each split is the same text whichever tokenizer made it, so
        per-row teacher logits serve students that tokenize differently."""
        data = self.prepared
        if tokenizer is data.tokenizer:
            return data.tokenized, data.tokenized_key
        max_length = self.config.tokenizer.max_length
        tokenized = tokenize_data(data.raw, tokenizer, max_length, self.cache_dir, data.report.fingerprint,
                                  progress=not self.quiet)
        return tokenized, tokenized_key(data.report.fingerprint, tokenizer, max_length)

    def _tokenizer(self, dsd: Any, data_fp: str) -> tuple[Any, Path | None]:
        """The configured tokenizer; a trained one is saved as a stage so every step shares it."""
        settings = self.config.tokenizer
        if settings.name_or_path is not None:
            tokenizer = load_tokenizer(settings)
            return tokenizer, None
        key = stable_hash({"kind": "tokenizer", "data": data_fp, "vocab_size": settings.vocab_size,
                           "min_frequency": settings.min_frequency})[:32]

        def build(folder: Path) -> dict[str, Any]:
            trained = train_tokenizer(column(dsd["train"], "text"), settings.vocab_size, settings.min_frequency)
            trained.save_pretrained(folder)
            return {"vocab_size": len(trained)}

        _, reused = self.store.get_or_build_stage(key, "tokenizer", build)
        log.info("tokenizer %s (%s)", key, "reused" if reused else "trained on the train split")
        path = self.store.local_path(self.store.stage_path(key))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path)), path
