"""core/train/models.py: size overrides, labels, the teacher's architecture, the loader, check_vocab."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizerFast,
)

from alambic.errors import AlambicError
from alambic.train.models import (
    BERT_BASE_CHINESE,
    Size,
    check_vocab,
    label_maps,
    load_pretrained,
    params,
    teacher_config,
)
from tests.conftest import VOCAB  # noqa: E402

TINY = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}


def tiny_bert(num_labels: int = 3, vocab_size: int = 21128) -> BertForSequenceClassification:
    config = teacher_config(num_labels, overrides=TINY)
    config.vocab_size = vocab_size
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[BertForSequenceClassification, Path]:
    model = tiny_bert()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 21128, (2, 12))  # (B, T)


# --- sizes and labels -------------------------------------------------------------------------


def test_override_keeps_ffn_ratio_and_ignores_none():
    base = Size(layers=4, hidden=512, heads=8, ffn=2048)
    assert base.override({"hidden": 128, "layers": None}, "x") == Size(4, 128, 8, 512)
    assert base.override({"hidden": 128, "ffn": 100}, "x") == Size(4, 128, 8, 100)
    assert base.override(None, "x") == base


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hiden": 64}, "unknown size override 'hiden' (did you mean 'hidden'?)"),
        ({"layers": 0}, "layers must be a positive integer"),
        ({"heads": 2.5}, "heads must be a positive integer"),
        ({"heads": True}, "heads must be a positive integer"),
    ],
)
def test_override_rejects_bad_keys_and_values(overrides, message):
    with pytest.raises(AlambicError, match=re.escape(message)):
        BERT_BASE_CHINESE.override(overrides, "teacher.architecture")


def test_label_maps_accept_list_or_dict_and_check_ids():
    maps = label_maps(2, ["neg", "pos"])
    assert maps["id2label"] == {0: "neg", 1: "pos"}
    assert maps["label2id"] == {"neg": 0, "pos": 1}
    assert label_maps(2, {"1": "pos", "0": "neg"})["id2label"] == {0: "neg", 1: "pos"}
    with pytest.raises(AlambicError, match="labels 0..2 exactly once"):
        label_maps(3, ["a", "b"])
    with pytest.raises(AlambicError, match="num_labels >= 2"):
        label_maps(1)


# --- teacher ----------------------------------------------------------------------------------


def test_teacher_config_is_bert_base_chinese():
    config = teacher_config(2)
    shape = (
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
        config.intermediate_size, config.vocab_size, config.max_position_embeddings,
        config.type_vocab_size,
    )
    assert shape == (12, 768, 12, 3072, 21128, 512, 2)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = BertForSequenceClassification(config)
    # bert-base-chinese's encoder + pooler is 102,267,648; the 2-label head adds 768*2 + 2
    assert params(model) == 102_267_648 + 1_538


def test_teacher_config_overrides_and_inconsistency():
    config = teacher_config(3, ["a", "b", "c"], TINY)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 2)
    assert config.intermediate_size == 128 and config.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(AlambicError, match="hidden size 100 is not divisible by heads=12"):
        teacher_config(2, overrides={"hidden": 100})


# --- load_pretrained --------------------------------------------------------------------------


def test_local_directory_round_trip_uses_safetensors(saved):
    model, path = saved
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    loaded = load_pretrained(path, BertForSequenceClassification, num_labels=3).eval()
    x = batch()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_new_head_only_when_label_count_differs(saved, monkeypatch):
    model, path = saved
    seen: list[bool] = []

    class Spy(BertForSequenceClassification):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            seen.append(kwargs["ignore_mismatched_sizes"])
            return super().from_pretrained(*args, **kwargs)

    same = load_pretrained(path, Spy, num_labels=3)
    other = load_pretrained(path, Spy, num_labels=5, id2label=list("abcde"))
    assert seen == [False, True]
    assert torch.equal(same.classifier.weight, model.classifier.weight)
    assert other.classifier.weight.shape == (5, 64) and other.config.id2label[4] == "e"
    words = model.bert.embeddings.word_embeddings.weight
    assert torch.equal(other.bert.embeddings.word_embeddings.weight, words)


def test_encoder_only_checkpoint_gets_a_new_head(tmp_path):
    # hub students (uer/chinese_roberta_L-4_H-512) are pretraining checkpoints without a classifier
    torch.manual_seed(0)
    encoder = BertForMaskedLM(BertConfig(**teacher_config(2, overrides=TINY).to_diff_dict()))
    encoder.save_pretrained(tmp_path / "mlm")
    model = load_pretrained(tmp_path / "mlm", BertForSequenceClassification, num_labels=4)
    assert model.classifier.out_features == 4
    kept = encoder.bert.encoder.layer[1].output.dense.weight
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, kept)


def test_legacy_bin_loads_with_weights_only(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    loaded = load_pretrained(tmp_path / "bin", BertForSequenceClassification).eval()
    with torch.no_grad():
        assert torch.equal(model(batch()).logits, loaded(batch()).logits)


class _Payload:
    ran: list[str] = []

    def __reduce__(self):
        return (_Payload.ran.append, ("code ran",))


def test_pickled_code_in_a_bin_is_refused(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "evil", safe_serialization=False)
    torch.save({"bert.pooler.dense.weight": _Payload()}, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(AlambicError, match="could not load the model in"):
        load_pretrained(tmp_path / "evil", BertForSequenceClassification)
    assert _Payload.ran == []


def test_auto_class_without_remote_code(saved):
    _, path = saved
    model = load_pretrained(path, AutoModelForSequenceClassification, num_labels=3)
    assert isinstance(model, BertForSequenceClassification)


def test_hub_id_offline_raises_clear_error(no_network, tmp_path):
    with pytest.raises(AlambicError) as err:
        load_pretrained(
            "bert-base-chinese", BertForSequenceClassification, num_labels=2,
            config_key="teacher.model", cache_dir=tmp_path,  # an empty cache: nothing to fall back on
        )
    message = str(err.value)
    assert message.startswith(
        "could not download 'bert-base-chinese' from the Hugging Face hub (no network?)"
    )
    assert "huggingface-cli download bert-base-chinese" in message and "save_pretrained" in message
    assert "set teacher.model to that local directory" in message
    assert no_network == []


def test_bad_local_paths(tmp_path):
    with pytest.raises(AlambicError, match="model directory not found"):
        load_pretrained(tmp_path / "missing", BertForSequenceClassification)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlambicError, match="no config.json"):
        load_pretrained(tmp_path / "empty", BertForSequenceClassification)
    teacher_config(2, overrides=TINY).save_pretrained(tmp_path / "config-only")
    with pytest.raises(AlambicError, match="has no weights"):
        load_pretrained(tmp_path / "config-only", BertForSequenceClassification)


def test_other_model_type_is_named(saved):
    from transformers import MobileBertForSequenceClassification

    _, path = saved
    with pytest.raises(AlambicError, match="is a bert checkpoint, not mobilebert"):
        load_pretrained(path, MobileBertForSequenceClassification, num_labels=3)


# --- check_vocab ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese_tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab_file=str(VOCAB))


def test_check_vocab_accepts_matching_sizes(chinese_tokenizer):
    assert len(chinese_tokenizer) == 21128
    check_vocab(tiny_bert(), chinese_tokenizer)


def test_check_vocab_catches_english_model_with_chinese_tokenizer(chinese_tokenizer):
    english = tiny_bert(vocab_size=30522)  # like huawei-noah/TinyBERT_General_4L_312D
    with pytest.raises(AlambicError) as err:
        check_vocab(english, chinese_tokenizer)
    message = str(err.value)
    assert "30522" in message and "21128" in message and "huawei-noah/TinyBERT_4L_zh" in message
