"""The tokenizer side: loading a tokenizer, its fingerprint, the tokenization cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict

from alambic.config import TokenizerConfig
from alambic.data import tokenize as tokenize_module
from alambic.data.dataset import column, describe_data
from alambic.data.report import DataReport
from alambic.data.tokenize import load_tokenizer, tokenize_data, tokenizer_fingerprint
from alambic.errors import DataError
from tests.core.data.test_dataset import CHARS, dataset

# --- tokenizer ------------------------------------------------------------------------------


def tiny_vocab(tmp_path: Path) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "abc", *CHARS]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_load_tokenizer_from_vocab_txt_lowercases(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(TokenizerConfig(name_or_path=str(tiny_vocab(tmp_path))))
    assert type(tokenizer).__name__ == "BertTokenizerFast"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("ABC的一")["input_ids"])
    assert tokens == ["[CLS]", "abc", "的", "一", "[SEP]"]


def test_load_tokenizer_from_saved_folder_matches(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(TokenizerConfig(name_or_path=str(tiny_vocab(tmp_path))))
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = load_tokenizer(TokenizerConfig(name_or_path=str(tmp_path / "saved")))
    assert reloaded("ABC的一是")["input_ids"] == tokenizer("ABC的一是")["input_ids"]
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tokenizer)


def test_load_tokenizer_missing_vocab_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vocab file not found: .*nope.txt"):
        load_tokenizer(TokenizerConfig(name_or_path=str(tmp_path / "nope.txt")))


def test_hub_id_offline_says_how_to_work_offline(hub_offline: None, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="hub could not be reached.*local folder.*vocab.txt"):
        load_tokenizer(TokenizerConfig(name_or_path="alambic-tests/no-such-tokenizer"))


def test_tokenizer_fingerprint_ignores_call_state_but_not_lowercasing(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    tokenizer = load_tokenizer(TokenizerConfig(name_or_path=str(tiny_vocab(tmp_path))))
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["的一是"], truncation=True, max_length=3, padding="max_length")  # sets backend state
    assert tokenizer_fingerprint(tokenizer) == before
    cased = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=False)
    assert tokenizer_fingerprint(cased) != before


# --- tokenization cache ---------------------------------------------------------------------


def test_tokenize_truncates_without_padding_and_caches(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = load_tokenizer(TokenizerConfig(name_or_path=str(tiny_vocab(tmp_path))))
    dsd = DatasetDict({"train": dataset(["的", CHARS[:20]], [0, 1], ["a", "b"]),
                       "test": dataset(["一是"], [1], ["a", "b"])})
    out = tokenize_data(dsd, tokenizer, 8, tmp_path / "cache", "fp")
    columns = {"input_ids", "attention_mask", "token_type_ids", "label", "length"}
    assert set(out["train"].column_names) == columns
    assert column(out["train"], "length") == [3, 8]  # [CLS] 的 [SEP]; cut to max_length
    assert [len(ids) for ids in column(out["train"], "input_ids")] == [3, 8]
    assert column(out["test"], "label") == [1]
    assert describe_data(out, DataReport())["splits"]["train"]["tokens"]["max"] == 8
    cached = list((tmp_path / "cache" / "tokenized").iterdir())
    assert len(cached) == 1

    def no_map(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cache hit must not tokenize again")

    monkeypatch.setattr(Dataset, "map", no_map)
    again = tokenize_data(dsd, tokenizer, 8, tmp_path / "cache", "fp")
    assert column(again["train"], "input_ids") == column(out["train"], "input_ids")
    monkeypatch.undo()
    tokenize_data(dsd, tokenizer, 16, tmp_path / "cache", "fp")
    tokenize_data(dsd, tokenizer, 8, tmp_path / "cache", "other data")
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 3


def test_failed_tokenization_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = load_tokenizer(TokenizerConfig(name_or_path=str(tiny_vocab(tmp_path))))
    dsd = DatasetDict({"train": dataset(["的"], [0], ["a"])})
    real_save = DatasetDict.save_to_disk

    def half_save(self: DatasetDict, path: str, **kwargs: Any) -> None:
        real_save(self, path, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", half_save)
    with pytest.raises(OSError, match="disk full"):
        tokenize_data(dsd, tokenizer, 8, tmp_path / "cache", "fp")
    assert os.listdir(tmp_path / "cache" / "tokenized") == []


def test_concurrent_writer_keeps_the_first_copy(tmp_path: Path) -> None:
    target = tmp_path / "tokenized" / "key"
    first = DatasetDict({"train": dataset(["first"], [0], ["a"])})
    tokenize_module._save_atomically(first, target)
    tokenize_module._save_atomically(DatasetDict({"train": dataset(["second"], [0], ["a"])}), target)
    assert os.listdir(target.parent) == ["key"]
    assert column(DatasetDict.load_from_disk(str(target))["train"], "text") == ["first"]
