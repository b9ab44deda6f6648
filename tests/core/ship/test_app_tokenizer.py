"""core/ship/app_tokenizer.py: the bundle's tokenizer files name what swift-transformers loads, and
its test vectors come back from ``tokenizers`` with the bundle's tokenizer.json alone, for a
WordPiece (bert-base-chinese's vocabulary) and a SentencePiece Unigram (XLM-R layout) tokenizer."""

from __future__ import annotations

import json

import pytest
from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizerFast

from alambic.ship.app_tokenizer import VECTOR_TEXTS, VECTORS_FILE, swift_check, vectors_check, write_vectors
from tests.conftest import VOCAB, needs_shared_data
from tests.plugins.test_vocabulary import headlines, trained_unigram  # noqa: F401  (fixture)

MAX_LENGTH = 32


def bundle(tokenizer, folder):
    tokenizer.save_pretrained(folder)
    write_vectors(tokenizer, folder, MAX_LENGTH)
    return json.loads((folder / VECTORS_FILE).read_text(encoding="utf-8"))["vectors"]


@needs_shared_data()
def test_a_wordpiece_tokenizer_ships_vectors_that_its_files_reproduce(tmp_path):
    tokenizer = BertTokenizerFast(vocab_file=str(VOCAB))
    vectors = bundle(tokenizer, tmp_path)
    assert [v["text"] for v in vectors] == list(VECTOR_TEXTS)
    ids = {v["text"]: v["ids"] for v in vectors}
    longest = ids[VECTOR_TEXTS[-1]]
    assert len(longest) == MAX_LENGTH and longest[0] == tokenizer.cls_token_id and longest[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id in ids["今天心情很好😀👍🎉"]  # emoji are not in bert-base-chinese's vocabulary
    assert vectors_check(tmp_path).ok is True
    check = swift_check(tmp_path)
    assert check.ok is True and check.value == "BertTokenizer / WordPiece", check


@needs_shared_data()
def test_a_unigram_tokenizer_ships_vectors_that_its_files_reproduce(headlines, tmp_path):  # noqa: F811
    tokenizer = trained_unigram(headlines)
    # SentencePieceUnigramTokenizer trains with an Nmt normalizer, which swift-transformers lacks (the
    # next test); the e5 teacher's converted tokenizer, like this one, uses normalizers it has
    tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()
    vectors = bundle(tokenizer, tmp_path)
    assert all(v["ids"][0] == tokenizer.bos_token_id and v["ids"][-1] == tokenizer.eos_token_id for v in vectors)
    assert vectors_check(tmp_path).ok is True
    check = swift_check(tmp_path)
    assert check.ok is True and check.value == "XLMRobertaTokenizerFast / Unigram", check


@needs_shared_data()
def test_an_altered_vector_is_caught_and_named(tmp_path):
    bundle(BertTokenizerFast(vocab_file=str(VOCAB)), tmp_path)
    path = tmp_path / VECTORS_FILE
    found = json.loads(path.read_text(encoding="utf-8"))
    found["vectors"][4]["ids"][1] += 1
    path.write_text(json.dumps(found, ensure_ascii=False), encoding="utf-8")
    check = vectors_check(tmp_path)
    assert check.ok is False and VECTOR_TEXTS[4] in check.value


@needs_shared_data()
def test_files_swift_transformers_cannot_load_are_named(headlines, tmp_path):  # noqa: F811
    tokenizer = trained_unigram(headlines)
    tokenizer.save_pretrained(tmp_path)
    assert swift_check(tmp_path).value.endswith("unsupported: normalizer Nmt")  # swift-transformers: fatalError
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))

    def with_class(name: str):
        config_path.write_text(json.dumps(config | {"tokenizer_class": name}), encoding="utf-8")
        return swift_check(tmp_path)

    assert "unsupported: tokenizer_class PreTrainedTokenizer," in with_class("PreTrainedTokenizerFast").value
    assert "BertTokenizer reads WordPiece, tokenizer.json holds Unigram" in with_class("BertTokenizerFast").value
    with_class("XLMRobertaTokenizerFast")
    tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.UnicodeScripts()
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    check = swift_check(tmp_path)
    assert check.ok is False and "pre_tokenizer UnicodeScripts" in check.value


@pytest.mark.parametrize("missing", ["tokenizer_config.json", "tokenizer.json"])
def test_a_bundle_without_both_files_fails_the_check(tmp_path, missing):
    (tmp_path / ({"tokenizer_config.json", "tokenizer.json"} - {missing}).pop()).write_text("{}", encoding="utf-8")
    assert swift_check(tmp_path).ok is False
