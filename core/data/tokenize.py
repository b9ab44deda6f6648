"""The tokenizer side of the data phase: load (or train) the tokenizer, fingerprint it, and tokenize
the splits into an Arrow cache under ``<cache_dir>/tokenized``, warning about texts it cannot read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.data.dataset import CACHE_VERSION, column, progress_bars
from alambic.errors import DataError
from alambic.fingerprint import stable_hash

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict

    from alambic.config import TokenizerConfig

log = logging.getLogger(__name__)

#: the tokenizer outputs a model takes (a tokenized split also carries ``label`` and ``length``)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
