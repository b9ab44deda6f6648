"""ONNX export, fusion and the ORT-vs-PyTorch comparison, on a 2-layer model trained for a second.

The toy model is trained on a synthetic task (a keyword token decides the label) so that its
predictions are confident and varied: argmax agreement is meaningless on a random model, whose
three logits differ by less than quantization noise. The helpers here are shared with the
quantization tests.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import pytest
import torch

from alambic.compress.onnx_export import (
    attention_dims,
    compare_logits,
    export_onnx,
    fused_operators,
    optimize_onnx,
    ort_logits,
    ort_session,
)
from alambic.errors import AlambicError

KEYWORDS = (6000, 6001, 6002)  # one per label
SIZE = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}


def synthetic_rows(n: int, seed: int) -> dict[str, list]:
    """Rows [CLS] filler... keyword ... [SEP] of 6-20 tokens; the keyword is the label."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "label": []}
    for _ in range(n):
        label, length = int(rng.integers(3)), int(rng.integers(6, 21))
        body = rng.integers(1000, 5000, length - 2).tolist()
        body[int(rng.integers(len(body)))] = KEYWORDS[label]
        ids = [101, *body, 102]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["token_type_ids"].append([0] * length)
        rows["label"].append(label)
    rows["length"] = [len(ids) for ids in rows["input_ids"]]
    return rows


@functools.cache
def tiny_data(n: int = 48, seed: int = 1):
    """A tokenized Dataset like the real splits (input_ids, attention_mask, token_type_ids, label, length)."""
    from datasets import Dataset

    return Dataset.from_dict(synthetic_rows(n, seed))


@functools.cache
def tiny_classifier(student: str = "roberta-l4"):
    """A 2 x 64 classifier of ``student``, trained 300 steps on the synthetic task (~2 s)."""
    from alambic.plugins.students import MobileBertAdapter, RobertaL4
    from alambic.train.loop import collate, fast_cpu_math

    cls = {"roberta-l4": RobertaL4, "mobilebert-adapter": MobileBertAdapter}[student]
    torch.manual_seed(0)
    size = SIZE if student == "roberta-l4" else {"layers": 2, "hidden": 64, "heads": 2, "ffn": 64}
    model = cls.build(num_labels=3, **size)
    model.get_input_embeddings().weight.requires_grad_(False)  # random rows already tell keywords apart
    train = synthetic_rows(480, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    fast_cpu_math()  # denormals otherwise make these steps 2x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a toy: more threads only contend
    try:
        for _ in range(10):  # 10 epochs of 30 steps of batch 16
            for lo in range(0, 480, 16):
                model(**collate({k: v[lo:lo + 16] for k, v in train.items()})).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.get_input_embeddings().weight.requires_grad_(True)
    return model.eval()


def padded_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch whose last row is half padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 6003, (batch_size, length), generator=gen)
    mask = torch.ones_like(ids)
    if batch_size > 1:
        mask[-1, length // 2:] = 0
        ids[-1, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def torch_logits(model, batch) -> np.ndarray:
    with torch.inference_mode():
        return model(**batch).logits.numpy()


@pytest.fixture(scope="module")
def model():
    return tiny_classifier()


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_the_toy_model_has_learned_its_task(model):
    """Otherwise every agreement measured on it would be noise."""
    from alambic.train.loop import collate

    batch = collate(tiny_data()[:])
    labels = batch.pop("labels").numpy()
    assert (torch_logits(model, batch).argmax(-1) == labels).mean() >= 0.9


def test_export_passes_the_checker_with_named_dynamic_inputs(fp32):
    graph = onnx.load(str(fp32))
    onnx.checker.check_model(graph, full_check=True)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    for tensor in graph.graph.input:
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = [d.dim_param for d in tensor.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"]


@pytest.mark.parametrize("batch_size, length", [(1, 5), (4, 23)])
def test_ort_matches_pytorch_at_other_batch_sizes_and_lengths(model, fp32, batch_size, length):
    batch = padded_batch(batch_size, length)
    got = ort_logits(ort_session(fp32, threads=1), batch)
    assert got.shape == (batch_size, 3)
    assert np.abs(got - torch_logits(model, batch)).max() < 1e-4


def test_export_without_token_type_ids(model, tmp_path):
    path = export_onnx(model, tmp_path / "two-inputs.onnx", use_token_type_ids=False)
    session = ort_session(path, threads=1)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    batch = padded_batch(3, 9)
    assert np.abs(ort_logits(session, batch) - torch_logits(model, batch)).max() < 1e-4


def test_ort_logits_fills_missing_token_type_ids(model, fp32):
    batch = padded_batch(2, 7)
    without = {k: v for k, v in batch.items() if k != "token_type_ids"}
    session = ort_session(fp32, threads=1)
    assert np.array_equal(ort_logits(session, without), ort_logits(session, batch))


def test_opset_below_17_is_refused(model, tmp_path):
    with pytest.raises(AlambicError, match="opset >= 17"):
        export_onnx(model, tmp_path / "old.onnx", opset=13)


def test_optimized_bert_graph_is_fused_and_still_matches(model, fp32, tmp_path):
    heads, width = attention_dims(model.config)
    fused = optimize_onnx(fp32, tmp_path / "fused.onnx", heads, width)
    ops = fused_operators(fused)
    layers = SIZE["layers"]
    # what ORT 1.32 fuses in a transformers 4.57 BERT (SDPA attention exported by TorchScript)
    # (residual + LayerNorm stay apart by default: SLOW_FUSIONS)
    assert ops == {"EmbedLayerNormalization": 1, "Attention": layers, "BiasGelu": layers}
    batch = padded_batch(3, 11)
    assert np.abs(ort_logits(ort_session(fused, 1), batch) - torch_logits(model, batch)).max() < 1e-4
    with_skip = optimize_onnx(fp32, tmp_path / "skip.onnx", heads, width, skip_layer_norm=True)
    assert fused_operators(with_skip)["SkipLayerNormalization"] == 2 * layers
    assert np.abs(ort_logits(ort_session(with_skip, 1, ()), batch) - torch_logits(model, batch)).max() < 1e-4


def test_mobilebert_exports_and_is_left_unfused(tmp_path):
    """No LayerNorm (NoNorm), ReLU and bottleneck attention: none of ORT's BERT patterns match."""
    mobile = tiny_classifier("mobilebert-adapter")
    path = export_onnx(mobile, tmp_path / "mobile.onnx")
    heads, width = attention_dims(mobile.config)
    assert (heads, width) == (2, 16)  # attention runs in the bottleneck, hidden // 4
    fused = optimize_onnx(path, tmp_path / "mobile.fused.onnx", heads, width)
    assert fused_operators(fused) == {}
    batch = padded_batch(2, 13)
    assert np.abs(ort_logits(ort_session(fused, 1), batch) - torch_logits(mobile, batch)).max() < 1e-4


def test_optimizer_failure_falls_back_to_the_unfused_graph(fp32, tmp_path, monkeypatch):
    from onnxruntime.transformers import optimizer

    def broken(*args, **kwargs):
        raise RuntimeError("pattern not supported")

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    out = optimize_onnx(fp32, tmp_path / "same.onnx", 2, 64)
    assert out.read_bytes() == fp32.read_bytes()


def test_compare_logits_against_the_pytorch_model(model, fp32):
    result = compare_logits(model, fp32, tiny_data(), max_examples=40, batch_size=16)
    assert result["examples"] == 40
    assert result["argmax_agreement"] == 1.0
    assert result["max_abs_diff"] < 1e-4


def test_compare_logits_sees_a_different_graph(model, fp32, tmp_path):
    altered = copy.deepcopy(model)
    with torch.no_grad():
        altered.classifier.weight.mul_(-1)  # flips the ranking of every prediction
    path = export_onnx(altered.eval(), tmp_path / "altered.onnx")
    result = compare_logits(model, path, tiny_data(), max_examples=48)
    assert result["argmax_agreement"] < 0.5
    assert result["max_abs_diff"] > 0.1
