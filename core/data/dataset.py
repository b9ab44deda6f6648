"""Data: load a labelled text dataset through a data-source plugin, split it, tokenize it, describe it.

The flow, and who does what::

    dsd, report = load_data(config.data, registry)   # source plugin reads; core splits and checks
    golden = load_golden(config.data, label_names)   # data.golden, or None: never split or trained on
    tokenizer = load_tokenizer(config.tokenizer)     # hub id, local folder, or a vocab.txt
    tokenized = tokenize_data(dsd, tokenizer, max_length, cache_dir, report.fingerprint)
    summary = describe_data(dsd, report, tokenizer, max_length)   # `alambic data inspect`

A data source is a class with an ``id`` and ``load(config, report) -> DatasetDict`` returning at
least ``train`` with columns ``text`` (string) and ``label`` (ClassLabel with names). It reports a
bad row with ``report.bad_row(file, line, reason)``, which raises :class:`DataError` or records the
row, as ``data.bad_rows`` says. A source that reads something other than the files named in the
config (a hub dataset) sets ``report.source_fingerprint`` to identify what it read.

``datasets`` and ``transformers`` are imported inside the functions: ``import alambic.data.dataset`` stays
light for the CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from alambic.errors import DataError
from alambic.store import stable_hash

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict

    from alambic.config import DataConfig, SplitFractions, TokenizerConfig
    from alambic.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: bump when parsing or tokenizing changes what ends up in a cache built from the same inputs
CACHE_VERSION = 1
MAX_BAD_ROWS_KEPT = 1000  # skip mode keeps the count of all, the details of the first ones only


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used. ``line`` is 1-based (the row number for Parquet and hub data)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class DataReport:
    """What loading found besides the data: bad rows, warnings, and the data's fingerprint."""

    on_bad_row: Literal["error", "skip"] = "error"
    bad_rows: list[BadRow] = field(default_factory=list)  # the first MAX_BAD_ROWS_KEPT
    skipped: int = 0
    skipped_in: dict[str, int] = field(default_factory=dict)  # file (or hub split) -> its skipped rows
    warnings: list[str] = field(default_factory=list)
    source_fingerprint: str | None = None  # set by sources whose data is not in config files
    fingerprint: str = ""  # data_fingerprint(), set by load_data

    def bad_row(self, file: str | os.PathLike[str], line: int, reason: str) -> None:
        """Stop at a bad row (``error``), or count it and go on (``skip``)."""
        row = BadRow(str(file), line, reason)
        if self.on_bad_row == "error":
            raise DataError(f"{row} (set data.bad_rows: skip to drop such rows)")
        self.skipped += 1
        self.skipped_in[row.file] = self.skipped_in.get(row.file, 0) + 1
        if len(self.bad_rows) < MAX_BAD_ROWS_KEPT:
            self.bad_rows.append(row)

    def all_bad(self, file: str | os.PathLike[str]) -> DataError:
        """The error for a file (or hub split) whose every row was skipped: how many, and the first as
        error mode names it, so the user learns why without switching modes."""
        file = str(file)
        first = next((r for r in self.bad_rows if r.file == file), None)
        named = f"; the first: {first}" if first else ""  # None past MAX_BAD_ROWS_KEPT
        return DataError(f"{file}: all {self.skipped_in.get(file, 0)} row(s) are bad{named}")

    @property
    def skipped_warning(self) -> str | None:
        """The warning a load gives about skipped rows; None when none was skipped."""
        if not self.skipped:
            return None
        return f"skipped {self.skipped} bad row(s), first: {self.bad_rows[0]}"

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)


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
    # the files source's own reader and label mapping: a golden file reads exactly as train does
    from alambic.plugins.data_sources import LabelSet, read_rows

    report = DataReport(on_bad_row=config.bad_rows)
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's output: class, vocabulary/pipeline, lower-casing."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # transformers sets truncation/padding on the backend per call: not part of its identity
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = sorted(tokenizer.get_vocab().items())
    return stable_hash({
        "class": type(tokenizer).__name__,
        "lower": getattr(tokenizer, "do_lower_case", None),
        "inputs": list(tokenizer.model_input_names),
        "state": state,
    })


# --- tokenizer and tokenization -------------------------------------------------------------


def prepare_tokenizer(config: TokenizerConfig, dsd: DatasetDict) -> Any:
    """The configured tokenizer, or one trained on the train split when none is named."""
    if config.name_or_path is None:
        return train_tokenizer(column(dsd["train"], "text"), config.vocab_size, config.min_frequency)
    return load_tokenizer(config)


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """A WordPiece vocabulary learnt from ``texts``, tokenizing as bert-base-chinese does.

    Chinese characters are split one per token (``handle_chinese_chars``), so the vocabulary is
    mostly characters; other scripts get word pieces. Used when no pretrained vocabulary can be
    downloaded (the quickstart).
    """
    import tempfile

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trainer = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True,
                                     strip_accents=False, lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                show_progress=False)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = trainer.save_model(folder)[0]
        return BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)


def load_tokenizer(config: TokenizerConfig) -> Any:
    """A vocab.txt gives a ``BertTokenizerFast``; a folder or hub id goes through ``AutoTokenizer``."""
    from transformers import AutoTokenizer, BertTokenizerFast

    name = config.name_or_path
    if name is None:
        raise DataError("tokenizer.name_or_path is null: the tokenizer is trained on the data "
                        "(use prepare_tokenizer)")
    path = Path(name).expanduser()
    if config.trust_remote_code:
        log.warning("tokenizer.trust_remote_code is on: code shipped with %s will run on this machine",
                    name)
    if name.endswith(".txt"):
        if not path.is_file():
            raise DataError(f"tokenizer.name_or_path: vocab file not found: {name}")
        # lower-casing as bert-base-chinese does (its tokenizer_config sets do_lower_case: true)
        return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise DataError(f"tokenizer.name_or_path: {path} is not a tokenizer folder: {exc}") from None
    if path.exists():
        raise DataError(f"tokenizer.name_or_path: {path} is a file but not a vocab.txt")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"tokenizer.name_or_path: '{name}' is not a local folder or vocab.txt, and the "
            f"Hugging Face hub could not be reached or has no such tokenizer ({first}). Offline, "
            "point tokenizer.name_or_path at a local folder saved with save_pretrained, or at a "
            "vocab.txt (e.g. ../shared/data/bert-base-chinese/vocab.txt)"
        ) from None


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


def tokenized_key(data_fp: str, tokenizer: Any, max_length: int) -> str:
    """The cache key of a tokenized dataset (the folder name under ``<cache_dir>/tokenized``)."""
    return stable_hash({
        "version": CACHE_VERSION, "data": data_fp,
        "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length,
    })[:32]


def tokenize_data(dsd: DatasetDict, tokenizer: Any, max_length: int, cache_dir: Path,
                  data_fp: str, progress: bool = False) -> DatasetDict:
    """Tokenize (truncate, no padding) and cache as Arrow; columns: model inputs, label, length.

    The cache lives in ``cache_dir/tokenized/<key>``, written into a scratch sibling and renamed
    into place, so a folder under its real name is always complete; a hit is memory-mapped.
    """
    from datasets import DatasetDict, load_from_disk

    key = tokenized_key(data_fp, tokenizer, max_length)
    target = Path(cache_dir) / "tokenized" / key
    if not target.is_dir():
        with progress_bars(progress):
            encoded = DatasetDict({
                split: _encode(ds, tokenizer, max_length, f"{key}-{split}")
                for split, ds in dsd.items()
            })
            _save_atomically(encoded, target)
    tokenized = load_from_disk(str(target))
    for split, ds in tokenized.items():
        _warn_unknown_only(split, ds, dsd[split], tokenizer)
    return tokenized


def unknown_only_rows(ds: Dataset, tokenizer: Any) -> np.ndarray:
    """Rows whose tokens, special ones aside, are all the unknown token (e.g. texts of emoji only):
    the model sees nothing of them but their length."""
    import numpy as np

    unk = tokenizer.unk_token_id
    ids = ds.data.column("input_ids").combine_chunks()
    if unk is None or len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    values, offsets = ids.flatten().to_numpy(), ids.offsets.to_numpy()
    row_of = np.repeat(np.arange(len(ids)), np.diff(offsets))  # the row each token belongs to
    special = np.isin(values, [i for i in tokenizer.all_special_ids if i != unk])
    known = np.bincount(row_of, weights=~special & (values != unk), minlength=len(ids))
    unknown = np.bincount(row_of, weights=values == unk, minlength=len(ids))
    return np.flatnonzero((unknown > 0) & (known == 0))


def _warn_unknown_only(split: str, ds: Dataset, raw: Dataset, tokenizer: Any) -> None:
    rows = unknown_only_rows(ds, tokenizer)
    if len(rows):
        examples = ", ".join(repr(raw[int(i)]["text"][:20]) for i in rows[:3])
        log.warning("split '%s': %d text(s) have no character in the tokenizer's vocabulary and read as "
                    "%s only (rows %s; e.g. %s): the model learns nothing from them", split, len(rows),
                    tokenizer.unk_token, ", ".join(str(i) for i in rows[:5]), examples)


def _encode(ds: Dataset, tokenizer: Any, max_length: int, fingerprint: str) -> Dataset:
    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        return out

    # an explicit fingerprint spares datasets from hashing the tokenizer inside the closure
    return ds.map(encode, batched=True, remove_columns=["text"], new_fingerprint=fingerprint,
                  desc="tokenizing")


def _save_atomically(dsd: DatasetDict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        dsd.save_to_disk(str(scratch))
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
            # another process finished the same cache first: its copy is equal, keep it
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
