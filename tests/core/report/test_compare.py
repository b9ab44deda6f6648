"""core/report/compare.py: linear CKA, attention KL, the layer map, prediction scores, model and folder
comparison, the report tables."""

from __future__ import annotations

import copy
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from rich.console import Console

from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.report.compare import (
    attention_kl,
    compare_dirs,
    compare_models,
    compare_predictions,
    format_report,
    layer_pairs,
    linear_cka,
    mean_pool,
)
from tests.conftest import VOCAB  # noqa: E402

needs_vocab = pytest.mark.skipif(not VOCAB.is_file(), reason=f"shared data not found at {VOCAB}")
BERT_TINY = {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64}
ADAPTER_TINY = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}
FAST = {"latency_runs": 3, "latency_warmup": 1}  # latency is measured, not tested for speed


def student(student_id: str, size: dict, num_labels: int = 3, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_registry()["students"].get(student_id).build(num_labels=num_labels, **size, **kw).eval()


@pytest.fixture(scope="module")
def bert():
    return student("roberta-l4", BERT_TINY)


@pytest.fixture(scope="module")
def adapter():
    return student("mobilebert-adapter", ADAPTER_TINY, seed=1)


@pytest.fixture(scope="module")
def tokenized() -> Dataset:
    """48 examples of 4..14 tokens ([CLS] ... [SEP]), labels 0: 24, 1: 12, 2: 12."""
    gen = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "label": []}
    for i in range(48):
        n = 2 + i % 11
        ids = [101, *torch.randint(670, 7000, (n,), generator=gen).tolist(), 102]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["token_type_ids"].append([0] * len(ids))
        rows["label"].append(0 if i % 2 == 0 else 1 + (i // 2) % 2)
    return Dataset.from_dict(rows)


# --- linear CKA -------------------------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_rotation_and_isotropic_scaling():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=gen)
    y = torch.randn(300, 8, generator=gen) + x[:, :8]  # related to x, not equal
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    rotated = (x.double() @ rotation) * 7.5 + 3.0  # rotate, scale, shift (centring removes it)
    assert linear_cka(rotated, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(rotated, y) == pytest.approx(linear_cka(x, y), abs=1e-9)
    assert 0.1 < linear_cka(x, y) < 0.99


def test_cka_of_independent_features_is_near_zero_and_widths_may_differ():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(20_000, 6, generator=gen), torch.randn(20_000, 10, generator=gen)
    value = linear_cka(x, y)
    assert 0 <= value < 0.01
    assert linear_cka(x, torch.cat([x, y], dim=1)) > 0.3  # one shares x's directions


def test_cka_rejects_mismatched_examples_and_is_nan_for_constant_features():
    with pytest.raises(ValueError, match="linear_cka needs"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    assert math.isnan(linear_cka(torch.ones(5, 3), torch.randn(5, 3)))


# --- attention KL -----------------------------------------------------------------------------


def softmax_maps(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).softmax(dim=-1)


def test_attention_kl_is_zero_for_identical_maps_and_positive_otherwise():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    p, q = softmax_maps((2, 2, 6, 6), 0), softmax_maps((2, 2, 6, 6), 1)
    assert attention_kl(p, p, mask) == pytest.approx(0.0, abs=1e-12)
    assert attention_kl(p, q, mask) > 0.01


def test_attention_kl_has_the_textbook_value_on_one_row():
    p = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])  # (B=1, T=2, T=2), second token is padding
    q = torch.tensor([[[0.25, 0.75], [0.0, 1.0]]])
    mask = torch.tensor([[1, 1]])
    expected_row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    # row 1 puts all mass on different keys: KL is large but finite (epsilon clamp)
    assert math.isfinite(attention_kl(p, q, mask))
    assert attention_kl(p, q, torch.tensor([[1, 0]])) == pytest.approx(0.0, abs=1e-9)  # one real key
    p3, q3 = torch.tensor([[[0.5, 0.5, 0.0]] * 3]), torch.tensor([[[0.25, 0.75, 0.0]] * 3])
    assert attention_kl(p3, q3, torch.tensor([[1, 1, 0]])) == pytest.approx(expected_row0, rel=1e-9)


def test_attention_kl_ignores_padding_and_averages_heads():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    p, q = softmax_maps((2, 2, 6, 6), 2), softmax_maps((2, 4, 6, 6), 3)  # head counts differ
    before = attention_kl(p, q, mask)
    p2, q2 = p.clone(), q.clone()
    p2[1, :, 4:, :] = torch.rand(2, 2, 6)  # padded query rows
    q2[1, :, :, 4:] = 5.0  # padded keys (rows are renormalized over real keys)
    assert attention_kl(p2, q2, mask) == pytest.approx(before, rel=1e-12)
    assert attention_kl(p, q, mask) == pytest.approx(attention_kl(p.mean(1), q.mean(1), mask), rel=1e-12)


def test_mean_pool_leaves_out_cls_and_padding():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # (B, T, D)
    hidden[:, 0] = 1e6  # [CLS]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    hidden[1, 3:] = -1e6  # padding
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, 1:].mean(0))
    assert torch.allclose(pooled[1], hidden[1, 1:3].mean(0))
    only_cls = mean_pool(hidden[:, :1], mask[:, :1])  # nothing after [CLS]: keep it
    assert torch.equal(only_cls, hidden[:, 0])


# --- layer map and predictions ----------------------------------------------------------------


def test_layer_pairs_use_the_uniform_map():
    assert layer_pairs(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    assert layer_pairs(2, 4) == [(0, 0), (1, 2), (2, 4)]
    assert layer_pairs(4, 6) == [(0, 0), (1, 2), (2, 3), (3, 5), (4, 6)]  # halves round up
    assert layer_pairs(6, 4) == [(0, 0), (2, 1), (3, 2), (5, 3), (6, 4)]
    assert layer_pairs(12, 4) == [(0, 0), (3, 1), (6, 2), (9, 3), (12, 4)]


@pytest.mark.parametrize(("extra_right", "flag"), [(10, False), (11, True), (-11, True), (0, False)])
def test_the_accuracy_flag_triggers_above_one_point(extra_right, flag):
    labels = [i % 3 for i in range(1000)]
    preds_a = [(y + 1) % 3 if i < 500 else y for i, y in enumerate(labels)]  # 50 % right
    if extra_right >= 0:  # B gets the first extra_right of A's mistakes right
        preds_b = [y if i < extra_right else p for i, (y, p) in enumerate(zip(labels, preds_a))]
    else:  # B gets some of A's right answers wrong
        preds_b = [(y + 1) % 3 if 500 <= i < 500 - extra_right else p
                   for i, (y, p) in enumerate(zip(labels, preds_a))]
    out = compare_predictions(labels, preds_a, preds_b)
    assert out["accuracy_diff"]["points"] == pytest.approx(extra_right / 10)
    assert out["accuracy_diff"]["flag"] is flag
    assert out["agreement"] == pytest.approx(1 - abs(extra_right) / 1000)


# --- compare_models ---------------------------------------------------------------------------


def test_a_model_compared_with_itself_is_identical(bert, tokenized):
    result = compare_models(bert, bert, tokenized, batch_size=16, **FAST)
    assert result["examples"] == 48
    assert [(r["a"], r["b"]) for r in result["layers"]] == [(0, 0), (1, 1), (2, 2)]
    assert all(row["cka"] == pytest.approx(1.0, abs=1e-9) for row in result["layers"])
    assert result["layers"][0]["attention_kl"] is None  # embeddings have no attention
    assert all(row["attention_kl"] == pytest.approx(0, abs=1e-12) for row in result["layers"][1:])
    assert result["accuracy_diff"] == {"points": 0.0, "threshold": 1.0, "flag": False}
    assert result["agreement"] == 1.0
    a = result["models"]["a"]
    assert a["latency_ms"]["p90"] >= a["latency_ms"]["p50"] > 0
    assert a["memory"]["total_bytes"] > a["params"] * 4 - 1  # float32 weights, plus buffers
    assert result["latency"]["torch_threads"] == torch.get_num_threads()
    assert "cpu" in result["machine"]
    json.dumps(result, allow_nan=False)


def test_a_different_model_is_less_similar(bert, adapter, tokenized):
    result = compare_models(bert, adapter, tokenized, batch_size=20, max_examples=40, **FAST)
    assert result["examples"] == 40
    assert result["models"]["b"]["model_type"] == "mobilebert"
    encoder_rows = result["layers"][1:]
    assert all(math.isfinite(r["cka"]) and 0 <= r["cka"] < 0.999 for r in result["layers"])
    assert all(math.isfinite(r["attention_kl"]) and r["attention_kl"] > 1e-6 for r in encoder_rows)
    json.dumps(result, allow_nan=False)


def biased(model, label: int):
    """A copy of ``model`` that predicts ``label`` for every input."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.classifier.bias.zero_()
        out.classifier.bias[label] = 1e4
    return out


def test_compare_models_flags_an_accuracy_gap(bert, tokenized):
    always_0, always_1 = biased(bert, 0), biased(bert, 1)  # 50 % and 25 % right
    result = compare_models(always_0, always_1, tokenized, **FAST)
    assert result["models"]["a"]["accuracy"] == 0.5
    assert result["models"]["b"]["accuracy"] == 0.25
    assert result["accuracy_diff"]["points"] == pytest.approx(-25.0)
    assert result["accuracy_diff"]["flag"] is True
    assert result["agreement"] == 0.0
    text = render(result)
    assert "FLAG" in text and "-25.00" in text
    assert "FLAG" not in render(compare_models(bert, bert, tokenized, **FAST))


def test_different_label_sets_are_refused_naming_both(bert, tokenized):
    other = student("roberta-l4", BERT_TINY, id2label=["体育", "财经", "科技"])
    with pytest.raises(AlambicError, match=r"ckpt-a has \['LABEL_0'.*ckpt-b has \['体育'"):
        compare_models(bert, other, tokenized, names=("ckpt-a", "ckpt-b"))
    with pytest.raises(AlambicError, match="label sets"):
        compare_models(bert, student("roberta-l4", BERT_TINY, num_labels=2), tokenized)


def render(result: dict) -> str:
    console = Console(record=True, width=240, color_system=None)
    for table in format_report(result):
        console.print(table)
    return console.export_text()


# --- compare_dirs -----------------------------------------------------------------------------


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    chars = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出"
    rows = [f"{chars[i % 30]}{chars[(i * 7) % 30]}新闻{i}号\t{i % 3}" for i in range(90)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = {"name": "cmp", "tokenizer": {"name_or_path": str(VOCAB), "max_length": 16},
              "data": {"train": "train.tsv", "format": "tsv", "header": False,
                       "text_column": 0, "label_column": 1}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def save(model, folder: Path, tokenizer=None) -> Path:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@needs_vocab
def test_compare_dirs_on_saved_folders(tmp_path, run_config, bert, adapter):
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab_file=str(VOCAB))
    a = save(bert, tmp_path / "a", tokenizer)
    b = save(adapter, tmp_path / "b")
    ballast = b"x" * 2**29  # the parent's 512 MiB must not count as the child's peak
    result = compare_dirs(a, b, run_config, max_examples=5, **FAST)
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del ballast
    assert result["examples"] == 5
    assert result["data"]["tokenizer"] == str(a) and result["data"]["split"] == "test"
    assert [(r["a"], r["b"]) for r in result["layers"]] == [(0, 0), (1, 1), (2, 2)]
    for key in ("a", "b"):
        memory = result["models"][key]["memory"]
        assert memory["peak_rss_bytes"] >= memory["baseline_rss_bytes"] > 50 * 2**20  # torch alone
        assert memory["peak_rss_bytes"] < parent_peak - 2**28
    json.dumps(result, allow_nan=False)
    assert "peak RSS" in render(result)


@needs_vocab
def test_compare_dirs_refuses_missing_folders_and_foreign_labels(tmp_path, run_config, bert):
    a = save(bert, tmp_path / "a")
    with pytest.raises(AlambicError, match="model B: folder not found: .*nowhere"):
        compare_dirs(a, tmp_path / "nowhere", run_config, memory=False)
    named = save(student("roberta-l4", BERT_TINY, id2label=["x", "y", "z"]), tmp_path / "named")
    with pytest.raises(AlambicError, match=r"model A .* has labels \['x', 'y', 'z'\] but the data's labels"):
        compare_dirs(named, named, run_config, memory=False)
    two = save(student("roberta-l4", BERT_TINY, num_labels=2), tmp_path / "two")
    with pytest.raises(AlambicError, match="has 2 labels .* but the data has 3"):
        compare_dirs(two, two, run_config, memory=False)
    with pytest.raises(AlambicError, match="unknown split 'tset'"):
        compare_dirs(a, a, run_config, split="tset")


def test_import_compare_is_light():
    code = "import alambic.report.compare, sys; print(any(m in sys.modules for m in ('torch', 'transformers', 'datasets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
