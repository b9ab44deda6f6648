"""core/compress/quantization.py: dynamic INT8 in PyTorch (torchao) on the toy classifier."""

from __future__ import annotations

import sys

import pytest

from alambic.compress.quantization import int8_dynamic_torch
from alambic.errors import AlambicError
from tests.core.compress.test_onnx_export import tiny_classifier


def test_torch_dynamic_int8_without_torchao_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "torchao.quantization", raising=False)
    with pytest.raises(AlambicError, match="pip install torchao"):
        int8_dynamic_torch(tiny_classifier())


def test_torch_dynamic_int8_with_torchao():
    pytest.importorskip("torchao")
    import torch

    from tests.core.compress.test_onnx_export import padded_batch

    model = tiny_classifier()
    quantized = int8_dynamic_torch(model)
    assert quantized is not model and type(model.classifier.weight) is torch.nn.Parameter  # a copy
    batch = padded_batch(8, 12)
    with torch.inference_mode():
        same = (model(**batch).logits.argmax(-1) == quantized(**batch).logits.argmax(-1)).float().mean()
    assert same >= 0.875
