"""Data: load a labelled text dataset through a data-source plugin, split it, tokenize it, describe it.

The flow, and who does what::

    dsd, report = load_data(config.data, registry)   # source plugin reads; core splits and checks
    golden = load_golden(config.data, label_names)   # data.golden, or None: never split or trained on
    tokenizer = load_tokenizer(config.tokenizer)     # hub id, local folder, or a vocab.txt
    tokenized = tokenize_data(dsd, tokenizer, max_length, cache_dir, report.fingerprint)
    summary = describe_data(dsd, report, tokenizer, max_length)   # `alambic data inspect`

The tokenizer side (``load_tokenizer``, ``tokenize_data``) is in :mod:`alambic.data.tokenize`; the
row readers the sources share in :mod:`alambic.data.readers`.

A data source is a class with an ``id`` and ``load(config, report) -> DatasetDict`` returning at
least ``train`` with columns ``text`` (string) and ``label`` (ClassLabel with names). It reports a
bad row with ``report.bad_row(file, line, reason)`` (:mod:`alambic.data.report`), which raises
:class:`DataError` or records the row, as ``data.bad_rows`` says. A source that reads something
other than the files named in the config (a hub dataset) sets ``report.source_fingerprint`` to
identify what it read.

``datasets`` and ``numpy`` are imported inside the functions: ``import alambic.data.dataset`` stays
light for the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.data.readers import LabelSet, read_rows
from alambic.data.report import DataReport
from alambic.errors import DataError
from alambic.fingerprint import file_sha256, stable_hash

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from alambic.config import DataConfig, SplitFractions
    from alambic.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: bump when parsing or tokenizing changes what ends up in a cache built from the same inputs
CACHE_VERSION = 1


# --- loading --------------------------------------------------------------------------------


def load_data(config: DataConfig, registry: Registry) -> tuple[DatasetDict, DataReport]:
    """Read the data with the configured source; return exactly train/validation/test and a report.

    Missing validation/test splits are split off train (stratified, ``config.split.seed``), then
    ``config.subsample`` is applied. Warns about classes absent from a split and about texts that
    occur in more than one split.
    """
    source = registry["datasets"].get(config.source)()
    report = DataReport(on_bad_row=config.bad_rows)
    with progress_bars(False):
        raw = _checked(source.load(config, report), config.source, report)
        report.fingerprint = data_fingerprint(config, report.source_fingerprint)
        dsd = _complete_splits(raw, config.split, report)
        dsd = _subsample(dsd, config.subsample, config.split.seed)
    if report.skipped_warning:
        report.warn(report.skipped_warning)
    _warn_empty_classes(dsd, report)
    _warn_cross_split_duplicates(dsd, report)
    return dsd, report


def load_golden(config: DataConfig, label_names: list[str]) -> Dataset | None:
    """``data.golden``: the user's hand-checked rows (``text``, ``label``), read as the files
    source reads a train file (same format and columns) and labelled with the run's label names;
    None when no golden file is configured. It is never split, subsampled or trained on."""
    if config.golden is None:
        return None
    report = DataReport(on_bad_row=config.bad_rows)
    # the files source's own reader and label mapping: a golden file reads exactly as train does
    rows = read_rows(Path(config.golden), config, report)
    labels = LabelSet.decide(config, list(label_names), rows, config.golden, header_hint=False)
    if labels.kind == "id" and config.label_names is None:  # the run's names are train's ids, as text
        labels.index = {int(n): i for i, n in enumerate(labels.names) if n.isdigit()}
    with progress_bars(False):
        golden = labels.dataset(rows, config.golden, report)
    if report.skipped:
        log.warning("data.golden: skipped %d bad row(s), first: %s", report.skipped, report.bad_rows[0])
    if len(golden) == 0:
        raise DataError(f"data.golden: {config.golden} has no usable rows")
    return golden


def _checked(raw: Any, source_id: str, report: DataReport) -> DatasetDict:
    """The source's output, reduced to text/label; a clear error when it breaks the contract."""
    from datasets import ClassLabel, DatasetDict

    where = f"data source '{source_id}'"
    if not isinstance(raw, DatasetDict) or "train" not in raw:
        raise DataError(f"{where} returned {type(raw).__name__} without a 'train' split")
    names = None
    for split, ds in raw.items():
        missing = {"text", "label"} - set(ds.column_names)
        if missing:
            raise DataError(f"{where}: split '{split}' lacks column(s) {sorted(missing)}")
        label = ds.features["label"]
        if not isinstance(label, ClassLabel):
            raise DataError(f"{where}: split '{split}' label is {label}, not a ClassLabel")
        if names is not None and label.names != names:
            raise DataError(f"{where}: split '{split}' has other label names than train")
        names = label.names
        if len(ds) == 0:
            # which file a split came from is the source's to know: name the first bad row of all
            why = (f"; {report.skipped} bad row(s) were skipped, the first: {report.bad_rows[0]}"
                   if report.skipped else "")
            raise DataError(f"{where}: split '{split}' has no usable rows{why}")
    return DatasetDict({s: raw[s].select_columns(["text", "label"]) for s in SPLITS if s in raw})


def _complete_splits(raw: DatasetDict, fractions: SplitFractions, report: DataReport) -> DatasetDict:
    from datasets import DatasetDict

    train = raw["train"]
    out = {s: raw[s] for s in ("validation", "test") if s in raw}
    if "test" not in out:
        train, out["test"] = _split_off(train, fractions.test, fractions.seed, "test", report)
    if "validation" not in raw:
        # the fraction is of the original train: scale it to what is left after test went
        share = fractions.validation / (1 - (fractions.test if "test" not in raw else 0))
        train, out["validation"] = _split_off(train, share, fractions.seed, "validation", report)
    return DatasetDict({"train": train, "validation": out["validation"], "test": out["test"]})


def _split_off(ds: Dataset, fraction: float, seed: int, name: str,
               report: DataReport) -> tuple[Dataset, Dataset]:
    try:
        parts = ds.train_test_split(test_size=fraction, stratify_by_column="label", seed=seed)
    except ValueError as exc:  # a class with a single example cannot be stratified
        report.warn(f"{name} split off train without stratification: {exc}")
        try:
            parts = ds.train_test_split(test_size=fraction, seed=seed)
        except ValueError as exc2:
            raise DataError(
                f"cannot split {fraction:.0%} of {len(ds)} train rows off as {name}: {exc2}; "
                f"give a data.{name} file"
            ) from None
    return parts["train"], parts["test"]


def _subsample(dsd: DatasetDict, sizes: dict[str, int], seed: int) -> DatasetDict:
    from datasets import DatasetDict

    out = dict(dsd)
    for split, n in sizes.items():
        ds = out[split]
        if n >= len(ds):
            continue
        try:
            out[split] = ds.train_test_split(train_size=n, stratify_by_column="label", seed=seed)["train"]
        except ValueError:  # fewer rows asked than classes, or a singleton class
            out[split] = ds.shuffle(seed=seed).select(range(n))
    return DatasetDict(out)


def column(ds: Dataset, name: str) -> list[Any]:
    """A column as a Python list (through Arrow: fast, and honours an indices mapping)."""
    return ds.with_format("arrow")[name].to_pylist()


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Turn datasets' progress bars on or off for a block, then restore the previous setting."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


def _warn_empty_classes(dsd: DatasetDict, report: DataReport) -> None:
    names = dsd["train"].features["label"].names
    for split, ds in dsd.items():
        seen = set(column(ds, "label"))
        empty = [n for i, n in enumerate(names) if i not in seen]
        if empty:
            report.warn(f"split '{split}' has no examples of {len(empty)} label(s): {', '.join(empty)}")


def _warn_cross_split_duplicates(dsd: DatasetDict, report: DataReport) -> None:
    """Texts shared between splits inflate validation/test scores: count them, pair by pair."""
    texts = {split: column(dsd[split], "text") for split in SPLITS}
    sets = {split: set(t) for split, t in texts.items()}
    pairs = [("validation", "train"), ("test", "train"), ("test", "validation")]
    counts = {f"{a}/{b}": sum(t in sets[b] for t in texts[a]) for a, b in pairs}
    total = sum(t in sets["train"] for t in texts["validation"])
    total += sum(t in sets["train"] or t in sets["validation"] for t in texts["test"])
    if total:
        detail = ", ".join(f"{pair} {n}" for pair, n in counts.items())
        report.warn(f"{total} validation/test row(s) repeat a text of an earlier split ({detail})")


# --- fingerprints ---------------------------------------------------------------------------


def data_fingerprint(config: DataConfig, source_fingerprint: str | None = None) -> str:
    """sha256 of what determines the loaded data: file contents and every option but the paths.

    Paths are left out so that moving or renaming files keeps the cache. A source that reads no
    file named in the config passes ``source_fingerprint``; when nothing identifies the data, the
    fingerprint is random, so a cache built from it is never wrongly reused.
    """
    options = config.model_dump(mode="json", exclude=set(SPLITS) | {"golden"})
    files = {k: file_sha256(getattr(config, k)) for k in SPLITS if getattr(config, k)}
    if isinstance(config.label_names, str):
        options["label_names"] = file_sha256(config.label_names)
    if not files and source_fingerprint is None:
        return uuid.uuid4().hex + uuid.uuid4().hex
    parts = {"version": CACHE_VERSION, "options": options, "files": files, "source": source_fingerprint}
    return stable_hash(parts)


# --- describe -------------------------------------------------------------------------------


def describe_data(dsd: DatasetDict, report: DataReport, tokenizer: Any = None,
                  max_length: int | None = None) -> dict[str, Any]:
    """A JSON-serializable summary: rows and label counts per split, token lengths, bad rows."""
    names = list(dsd["train"].features["label"].names)
    splits = {}
    for split, ds in dsd.items():
        counts = [0] * len(names)
        for label in column(ds, "label"):
            counts[label] += 1
        entry: dict[str, Any] = {"rows": len(ds), "labels": dict(zip(names, counts, strict=True))}
        if tokenizer is not None and "text" in ds.column_names:
            entry["tokens"] = _length_stats(_token_lengths(column(ds, "text"), tokenizer), max_length)
        elif "length" in ds.column_names:  # already tokenized (and truncated)
            entry["tokens"] = _length_stats(column(ds, "length"), max_length)
        splits[split] = entry
    return {
        "splits": splits,
        "label_names": names,
        "bad_rows": {"count": report.skipped, "first": [str(r) for r in report.bad_rows[:20]]},
        # bad rows have their entry above, worded by data.bad_rows where shown: not a warning too
        "warnings": [w for w in report.warnings if w != report.skipped_warning],
        "fingerprint": report.fingerprint,
    }


def _token_lengths(texts: list[str], tokenizer: Any) -> list[int]:
    lengths: list[int] = []
    for start in range(0, len(texts), 10_000):  # chunks bound the memory of the encodings
        enc = tokenizer(texts[start:start + 10_000], return_attention_mask=False,
                        return_token_type_ids=False)
        lengths += [len(ids) for ids in enc["input_ids"]]
    return lengths


def _length_stats(lengths: list[int], max_length: int | None) -> dict[str, Any]:
    """Percentiles in tokens ([CLS] and [SEP] included), rounded up to a whole token."""
    import numpy as np

    if not lengths:
        return {}
    arr = np.asarray(lengths)
    qs = np.percentile(arr, [50, 90, 95, 99], method="higher")
    stats: dict[str, Any] = {f"p{q}": int(v) for q, v in zip((50, 90, 95, 99), qs, strict=True)}
    stats["max"] = int(arr.max())
    stats["mean"] = round(float(arr.mean()), 2)
    if max_length is not None:
        stats["over_max_length"] = round(float((arr > max_length).mean()), 4)
    return stats
