"""The built-in quantizer plugins, applied to the trained toy classifier of the ONNX tests.

Each ONNX Runtime quantizer must shrink the fp32 graph below 0.6x (int8 lands near 0.27x, fp16
near 0.5x; 0.6 leaves room for the per-tensor overhead of a larger model) and keep >= 90% of the
fp32 graph's predictions on 48 rows. The >= 99% agreement on the real test split is measured on
the real model, not here.
"""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from alambic.compress.onnx_export import compare_logits, export_onnx
from alambic.compress.quantization import QuantContext, QuantSource
from alambic.errors import AlambicError
from alambic.manager import build_registry, get_plugin_manager
from alambic.plugins.quantizers import DynamicInt8, Fp16, Mixed, StaticInt8
from tests.core.compress.test_onnx_export import SIZE, tiny_classifier, tiny_data
from tests.core.compress.test_onnx_quant import by_label

QUANTIZERS = build_registry(get_plugin_manager(env={}))["quantizers"]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return export_onnx(tiny_classifier(), tmp_path_factory.mktemp("fp32") / "model.onnx")


def context(tmp_path) -> QuantContext:
    return QuantContext(work_dir=tmp_path / "work", calibration=tiny_data())


def test_the_built_in_quantizers_are_registered():
    assert QUANTIZERS.ids() == ["dynamic-int8", "fp16", "int4-block", "mixed", "palettize", "static-int8"]


@pytest.mark.parametrize("quantizer_id, options", [
    ("dynamic-int8", {}),
    ("dynamic-int8", {"per_channel": True}),
    ("dynamic-int8", {"graph": "plain"}),
    ("static-int8", {}),
    ("static-int8", {"method": "percentile", "per_channel": True, "reduce_range": True}),
    ("fp16", {}),
    ("mixed", {}),
    ("mixed", {"attention": "int8", "ffn": "fp16", "embeddings": "int8"}),
])
def test_onnx_quantizers_shrink_the_graph_and_keep_its_predictions(fp32, tmp_path, quantizer_id, options):
    cls = QUANTIZERS.get(quantizer_id)
    result = cls.apply(QuantSource(model=tiny_classifier(), onnx=fp32), options, context(tmp_path))
    assert result.runtime == cls.runtime == "onnxruntime"
    assert result.model is None
    [path] = result.files
    assert path.is_file() and path.suffix == ".onnx" and path.parent == tmp_path / "work"
    assert result.report["size_ratio"] < 0.6
    assert result.report["bytes"] == path.stat().st_size
    assert compare_logits(fp32, path, tiny_data())["argmax_agreement"] >= 0.9

    record = json.loads((tmp_path / "work" / "quantization.json").read_text(encoding="utf-8"))
    assert record["quantizer"] == quantizer_id and record["runtime"] == "onnxruntime"
    assert record["options"] == {**vars(cls.options()), **options}  # every option, defaults included
    assert record["files"] == [str(path)]


@pytest.mark.parametrize("graph", ["fused", "plain"])
def test_dynamic_int8_quantizes_the_fused_graph_by_default(fp32, tmp_path, graph):
    from alambic.compress.onnx_quant import op_counts

    options = {} if graph == "fused" else {"graph": "plain"}
    result = DynamicInt8.apply(QuantSource(model=tiny_classifier(), onnx=fp32), options, context(tmp_path))
    ops = op_counts(result.files[0])
    assert result.report["graph"] == graph
    if graph == "fused":  # int8 attention and ORT's fused embeddings and GELU: the faster graph (BENCHMARKS.md)
        assert ops.get("QAttention") and ops.get("BiasGelu") and result.report["fused_ops"]
    else:
        assert not ops.get("QAttention") and not ops.get("BiasGelu")


def test_the_fp32_graph_is_exported_when_only_the_model_is_given(tmp_path):
    result = DynamicInt8.apply(tiny_classifier(), None, context(tmp_path))
    assert (tmp_path / "work" / "fp32.onnx").is_file()
    assert result.report["source"] == str(tmp_path / "work" / "fp32.onnx")


def test_a_path_is_an_onnx_source(fp32, tmp_path):
    result = Fp16.apply(fp32, {}, context(tmp_path))
    assert result.report["source"] == str(fp32)
    assert not (tmp_path / "work" / "fp32.onnx").exists()


def test_static_int8_without_calibration_data(fp32, tmp_path):
    with pytest.raises(AlambicError, match="calibration"):
        StaticInt8.apply(fp32, {}, QuantContext(work_dir=tmp_path))


def test_static_int8_defaults_to_per_channel_weights_and_a_sample_of_train_rows(fp32, tmp_path):
    """Calibrated on a seeded random sample of the train split (the validation rows are the guard's),
    with one weight scale per output channel; the report says which rows."""
    from alambic.compress.onnx_quant import calibration_sample

    train = by_label(tiny_data(96, seed=2))  # recognizable: not the rows of tiny_data(), sorted by class
    options = StaticInt8.options()
    assert options.per_channel and options.seed == 0
    result = StaticInt8.apply(fp32, {"examples": 12}, QuantContext(work_dir=tmp_path, calibration=train))
    indices = calibration_sample(train, 12, seed=0)
    assert result.report["calibration"] == {"split": "train", "rows": 12, "of": 96, "seed": 0, "indices": indices}
    assert len({train[i]["label"] for i in indices}) == 3  # not the first 12 rows: one class
    scales = [t for t in onnx.load(str(result.files[0])).graph.initializer if t.name.endswith("_scale")]
    assert any(list(t.dims) == [SIZE["ffn"]] for t in scales), "one scale per output channel"
    record = json.loads((tmp_path / "quantization.json").read_text(encoding="utf-8"))
    assert record["calibration"]["split"] == "train" and record["options"]["per_channel"] is True


def test_static_int8_reports_the_split_it_was_given(fp32, tmp_path):
    context = QuantContext(work_dir=tmp_path, calibration=tiny_data(), calibration_split="unlabeled")
    result = StaticInt8.apply(fp32, {"examples": 8, "seed": 3}, context)
    assert result.report["calibration"]["split"] == "unlabeled"
    assert result.report["calibration"]["seed"] == 3 and result.report["calibration"]["rows"] == 8


def test_a_context_is_required(fp32):
    with pytest.raises(AlambicError, match="QuantContext"):
        Fp16.apply(fp32, {})


@pytest.mark.parametrize("cls, options, message", [
    (StaticInt8, {"methd": "entropy"}, "did you mean 'method'"),
    (StaticInt8, {"method": "kl"}, "method must be one of minmax, entropy, percentile"),
    (StaticInt8, {"histogram_bins": 128}, "histogram_bins must be >= 512"),
    (StaticInt8, {"percentile": 0}, "percentile must be in"),
    (StaticInt8, {"examples": 0}, "examples must be >= 1"),
    (StaticInt8, {"seed": -1}, "seed must be >= 0"),
    (StaticInt8, {"sequence_length": 128}, "'sequence_length' was removed: calibration batches are no longer padded"),
    (DynamicInt8, {"runtime": "tflite"}, "runtime must be one of"),
    (DynamicInt8, {"runtime": "pytorch", "embeddings": True}, "runtime onnxruntime only"),
    (Mixed, {"ffn": "int4"}, "ffn must be one of int8, fp16, fp32"),
    (Fp16, {"keep_io": True}, "unknown option 'keep_io'"),
])
def test_bad_options_are_refused_before_any_work(cls, options, message):
    with pytest.raises(AlambicError, match=message):
        cls.options(options)


def test_options_are_frozen_values():
    options = StaticInt8.options({"method": "entropy"})
    assert StaticInt8.options(options) is options
    with pytest.raises(AttributeError):
        options.method = "minmax"


def test_dynamic_int8_for_pytorch_says_so(tmp_path, monkeypatch):
    options = DynamicInt8.options({"runtime": "pytorch"})
    assert DynamicInt8.runtime_of(options) == "pytorch"
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "torchao.quantization", raising=False)
    with pytest.raises(AlambicError, match="torchao"):
        DynamicInt8.apply(tiny_classifier(), options, context(tmp_path))


def test_dynamic_int8_for_pytorch_with_torchao(tmp_path):
    pytest.importorskip("torchao")
    result = DynamicInt8.apply(tiny_classifier(), {"runtime": "pytorch"}, context(tmp_path))
    assert result.runtime == "pytorch" and result.model is not None
    [path] = result.files
    assert path.suffix == ".pt" and path.is_file()
    assert result.report["size_ratio"] < 1.0  # Linear weights int8; the embedding table stays fp32


def test_pytorch_runtime_needs_the_model(fp32, tmp_path):
    with pytest.raises(AlambicError, match="needs the PyTorch model"):
        DynamicInt8.apply(fp32, {"runtime": "pytorch"}, context(tmp_path))
