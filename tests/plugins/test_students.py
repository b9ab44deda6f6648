"""plugins/students.py: every registered student through the same contract, plus each one's shape."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.train.models import Student, params

STUDENTS = build_registry()["students"]
IDS = STUDENTS.ids()
TINY = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}
LABELS = ["体育", "财经", "科技"]


def bert_params(vocab: int, hidden: int, layers: int, ffn: int, labels: int) -> int:
    """BERT's parameter count, by hand: embeddings, blocks, pooler, classifier."""
    embeddings = (vocab + 512 + 2) * hidden + 2 * hidden  # word + position + segment, LayerNorm
    block = 4 * (hidden * hidden + hidden) + hidden * ffn + ffn + ffn * hidden + hidden + 4 * hidden
    return embeddings + layers * block + (hidden * hidden + hidden) + (hidden * labels + labels)


# (layers, hidden, heads, ffn), parameters with 2 labels, and a sanity range around it
FULL_SIZE = {
    "roberta-l4": ((4, 512, 8, 2048), bert_params(21128, 512, 4, 2048, 2), (23.5e6, 24.5e6)),
    "tinybert-4l": ((4, 312, 12, 1200), bert_params(21128, 312, 4, 1200, 2), (11.2e6, 11.6e6)),
    "mobilebert-adapter": ((4, 512, 4, 512), 6_798_338, (6.5e6, 7.2e6)),
    # from config only (its fallback): bert-base-chinese's width at 4 layers; from a teacher, the teacher's
    "teacher-layers": ((4, 768, 12, 3072), bert_params(21128, 768, 4, 3072, 2), (45e6, 46e6)),
}


def test_registry_lists_the_builtin_students():
    assert IDS == ["mobilebert-adapter", "roberta-l4", "teacher-layers", "tinybert-4l"]
    for student_id in IDS:
        assert STUDENTS.entries[student_id].description  # the docstring's first line
        assert issubclass(STUDENTS.get(student_id), Student)


def test_importing_the_plugin_stays_light():
    code = (
        "import sys, alambic.plugins.students; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("student_id", IDS)
def test_full_size_shape_and_parameters(student_id):
    shape, expected, (low, high) = FULL_SIZE[student_id]
    config = STUDENTS.get(student_id).config(2)
    got = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    assert got + (config.intermediate_size,) == shape
    tables = (config.vocab_size, config.max_position_embeddings, config.type_vocab_size)
    assert tables == (21128, 512, 2)
    model = STUDENTS.get(student_id).build(2)
    assert params(model) == expected and low < expected < high
    assert model.get_input_embeddings().num_embeddings == 21128


def test_mobilebert_is_bottlenecked_relu_without_layernorm():
    config = STUDENTS.get("mobilebert-adapter").config(2)
    assert config.model_type == "mobilebert"
    widths = (config.intra_bottleneck_size, config.embedding_size, config.num_feedforward_networks)
    assert widths == (128, 128, 4)
    assert config.use_bottleneck and config.key_query_shared_bottleneck and config.trigram_input
    assert (config.hidden_act, config.normalization_type) == ("relu", "no_norm")
    tiny = STUDENTS.get("mobilebert-adapter").config(2, overrides=TINY)
    assert (tiny.hidden_size, tiny.intra_bottleneck_size, tiny.intermediate_size) == (64, 16, 128)


@pytest.mark.parametrize("student_id", IDS)
def test_tiny_build_gives_logits(student_id):
    torch.manual_seed(0)
    model = STUDENTS.get(student_id).build(3, LABELS, **TINY).eval()
    ids = torch.randint(0, 21128, (4, 16))  # (B, T)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (4, 3)  # (B, num_labels)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64


@pytest.mark.parametrize("student_id", IDS)
def test_save_and_load_round_trip(student_id, tmp_path):
    Student_ = STUDENTS.get(student_id)
    torch.manual_seed(0)
    model = Student_.build(3, LABELS, **TINY).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = Student_.from_pretrained(tmp_path, 3, LABELS).eval()
    assert type(loaded) is type(model)
    ids = torch.randint(0, 21128, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("student_id", IDS)
def test_hub_weights_offline_raise_a_clear_error(student_id, tmp_path, no_network):
    touched = no_network
    Student_ = STUDENTS.get(student_id)
    if Student_.hub_id is None:
        with pytest.raises(AlambicError, match="has no published weights"):
            Student_.from_pretrained(None, 3)
    else:
        with pytest.raises(AlambicError, match=f"could not download '{Student_.hub_id}' .*no network"):
            Student_.from_pretrained(None, 3, cache_dir=tmp_path)
    assert touched == []


def test_hub_ids_are_the_chinese_checkpoints():
    assert STUDENTS.get("roberta-l4").hub_id == "uer/chinese_roberta_L-4_H-512"
    assert STUDENTS.get("tinybert-4l").hub_id == "huawei-noah/TinyBERT_4L_zh"
    assert STUDENTS.get("mobilebert-adapter").hub_id is None


@pytest.mark.parametrize(
    ("student_id", "overrides", "message"),
    [
        ("tinybert-4l", {"hidden": 64}, "hidden size 64 is not divisible by heads=12"),
        ("roberta-l4", {"hidden": 96, "heads": 5}, "hidden size 96 is not divisible by heads=5"),
        ("mobilebert-adapter", {"hidden": 66}, "hidden=66 must be divisible by 4"),
        (
            "mobilebert-adapter",
            {"hidden": 64, "heads": 3},
            "bottleneck (hidden // 4) size 16 is not divisible by heads=3",
        ),
        ("roberta-l4", {"width": 64}, "unknown size override 'width'"),
    ],
)
def test_inconsistent_overrides_are_refused(student_id, overrides, message):
    with pytest.raises(AlambicError, match=f"student '{student_id}'") as err:
        STUDENTS.get(student_id).build(2, **overrides)
    assert message in str(err.value)
