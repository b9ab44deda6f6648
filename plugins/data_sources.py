"""Built-in data sources: ``files`` (CSV, TSV, JSON Lines, Parquet) and ``hf`` (``load_dataset``).

Both return a ``DatasetDict`` whose splits have ``text`` (string) and ``label`` (ClassLabel with
names); core (:func:`alambic.data.dataset.load_data`) splits off what is missing and checks the result.
Every bad row is reported as ``file:line: reason`` through ``report.bad_row``; the row readers and the
label mapping both sources use are core's (:mod:`alambic.data.readers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import alambic
from alambic.data.dataset import SPLITS
from alambic.data.readers import (
    COLUMN_KEYS,
    LabelSet,
    Row,
    checked_rows,
    file_format,
    named_column,
    read_label_names,
    read_rows,
)
from alambic.data.report import DataReport
from alambic.errors import DataError
from alambic.fingerprint import stable_hash

if TYPE_CHECKING:
    from datasets import DatasetDict

    from alambic.config import DataConfig


class FilesSource:
    """Local files, one per split: CSV, TSV (with or without header), JSON Lines or Parquet."""

    id = "files"

    def load(self, config: DataConfig, report: DataReport) -> DatasetDict:
        from datasets import DatasetDict

        if config.train is None:
            raise DataError("data.train: required when data.source is 'files'")
        fixed = read_label_names(config)
        paths = {s: Path(getattr(config, s)) for s in SPLITS if getattr(config, s)}
        rows = {s: read_rows(p, config, report) for s, p in paths.items()}
        # line 1 read as data may be a header the config did not announce: say so on a bad label
        hint = config.header is not True and file_format(paths["train"], config) in ("csv", "tsv")
        labels = LabelSet.decide(config, fixed, rows["train"], str(paths["train"]), hint)
        return DatasetDict({s: labels.dataset(rows[s], str(paths[s]), report) for s in rows})


class HFSource:
    """Any ``datasets.load_dataset`` id (needs the network, or the dataset in the local cache)."""

    id = "hf"

    def load(self, config: DataConfig, report: DataReport) -> DatasetDict:
        from datasets import DatasetDict

        raw = _load_hub(config)
        # the datasets' own fingerprints derive from their cached files: stable between runs
        report.source_fingerprint = stable_hash({k: ds._fingerprint for k, ds in raw.items()})
        picked = _hub_splits(raw, config)
        rows = {s: _hub_rows(ds, where, config, report) for s, (where, ds) in picked.items()}
        train_where, train = picked["train"]
        fixed = read_label_names(config) or _hub_label_names(train, config)
        labels = LabelSet.decide(config, fixed, rows["train"], train_where, header_hint=False)
        return DatasetDict({s: labels.dataset(rows[s], picked[s][0], report) for s in rows})


@alambic.hookimpl
def alambic_register_datasets(register: Any) -> None:
    register.add(FilesSource)
    register.add(HFSource)


# --- hub datasets ---------------------------------------------------------------------------


def _load_hub(config: DataConfig) -> Any:
    import datasets

    if not config.dataset:
        raise DataError("data.dataset: required when data.source is 'hf'")
    try:
        return datasets.load_dataset(config.dataset, config.dataset_config)
    except (OSError, ValueError) as exc:  # ConnectionError and DatasetNotFoundError are OSErrors
        raise DataError(
            f"data.dataset: could not load '{config.dataset}' with datasets.load_dataset: the "
            f"Hugging Face hub could not be reached or has no such dataset ({exc}). Offline, "
            "use `source: files` with local CSV, TSV, JSON Lines or Parquet files"
        ) from None


def _hub_splits(raw: Any, config: DataConfig) -> dict[str, tuple[str, Any]]:
    """Our split name -> (its display name, the dataset's split), through data.split_names."""
    picked = {}
    for ours in SPLITS:
        theirs = config.split_names.get(ours, ours)
        if theirs in raw:
            picked[ours] = (f"{config.dataset}[{theirs}]", raw[theirs])
        elif ours in config.split_names or ours == "train":
            raise DataError(f"data.split_names.{ours}: '{config.dataset}' has no split '{theirs}'; "
                            f"splits: {', '.join(raw)}")
    return picked


def _hub_rows(ds: Any, where: str, config: DataConfig, report: DataReport) -> list[Row]:
    names = ds.column_names
    texts, labels = (ds.with_format("arrow")[named_column(getattr(config, key), names, where, key)]
                     .to_pylist() for key in COLUMN_KEYS)
    return checked_rows(where, texts, labels, report)


def _hub_label_names(ds: Any, config: DataConfig) -> list[str] | None:
    """The names a ClassLabel column already carries (its ids are then the labels)."""
    feature = ds.features[named_column(config.label_column, ds.column_names, "train", "label_column")]
    return list(feature.names) if hasattr(feature, "names") else None
