"""plugins/exporters.py: every registered exporter through one contract; options, fallbacks, the model
card, and a light import."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alambic.errors import AlambicError
from alambic.manager import build_registry, get_plugin_manager
from alambic.plugins.exporters import CoreML, CoreMLOptions, Onnx, OnnxOptions, model_card
from alambic.ship.exporter import Check, Exported, Exporter, ExportSource, load_source

EXPORTERS = build_registry(get_plugin_manager(env={}))["exporters"]
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"中国新闻体育股市科技的是"]
TEXTS = ["中国新闻", "体育新闻", "股市的新闻", "科技是", "中国体育", "新闻科技"] * 2


def tiny_folder(folder: Path) -> Path:
    """A 2-layer BERT classifier (3 labels) with its 17-token tokenizer, as save_pretrained writes it."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from alambic.train.models import Size, bert_config

    (folder / "vocab.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = bert_config(Size(layers=2, hidden=64, heads=2, ffn=128), num_labels=3,
                         id2label=["体育", "财经", "科技"], vocab_size=len(TOKENS))
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def contract_exporters(cls: type) -> None:
    """An exporter writes only into its folder, says what it wrote and verified, and knows a fallback."""
    from datasets import Dataset

    assert issubclass(cls, Exporter), "an exporter subclasses alambic.ship.exporter.Exporter"
    assert dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen
    options = cls.options()  # the defaults are valid
    with pytest.raises(AlambicError, match="unknown option"):
        cls.options({"no_such_option": 1})
    failure = cls.failure(RuntimeError("PyTorch convert function for op 'new_ones' not implemented."))
    assert failure.format == cls.id and failure.op == "new_ones" and failure.fallback
    with tempfile.TemporaryDirectory() as tmp:
        source = load_source(tiny_folder(Path(tmp)), test_split=Dataset.from_dict(
            {"text": TEXTS, "label": [i % 3 for i in range(len(TEXTS))]}), max_length=16)
        out = Path(tmp) / "out"
        out.mkdir()
        result = cls.export(source, out, options)
        assert isinstance(result, Exported) and result.files
        assert all(f.is_file() and out in f.parents for f in result.files), "files inside the folder given"
        assert result.checks and all(isinstance(c, Check) for c in result.checks)
        assert all(c.ok is not False for c in result.checks), [(c.name, c.value) for c in result.checks]
        assert set(result.sizes) <= {p.relative_to(out).as_posix() for p in out.iterdir()}
        json.dumps(result.to_dict(), default=str)


@pytest.mark.parametrize("entry", EXPORTERS.entries.values(), ids=EXPORTERS.ids())
def test_every_exporter_meets_the_contract(entry):
    assert entry.description, f"{entry.id}: the class docstring's first line describes it"
    contract_exporters(entry.cls)


def test_the_builtin_formats_are_registered():
    assert {"hf", "onnx", "coreml"} <= set(EXPORTERS.ids())


def test_options_are_checked():
    assert CoreML.options({"epochs": 3}) == CoreMLOptions(epochs=3)
    for bad, message in [({"target": "iOS14"}, "target must be one of"),
                         ({"target": "iOS15", "int8": True}, "int8 weights need target iOS16"),
                         ({"learning_rate": 0}, "learning_rate must be in"), ({"batch_size": 0}, "batch_size must be")]:
        with pytest.raises(AlambicError, match=message):
            CoreML.options(bad)
    with pytest.raises(AlambicError, match="opset must be >= 17"):
        OnnxOptions(opset=13)
    assert Onnx.options(None) == OnnxOptions()


def test_failures_name_the_op_and_a_fallback():
    failure = CoreML.failure(ValueError("Unsupported op 'aten::new_ones'\nmore lines"))
    assert failure.op == "aten::new_ones" and failure.error == "ValueError: Unsupported op 'aten::new_ones'"
    assert "the converter has no 'aten::new_ones'" in failure.fallback and "--format onnx" in failure.fallback
    assert CoreML.failure(MemoryError()).op is None
    assert "--option onnx.opset=18" in Onnx.failure(RuntimeError("x")).fallback


def test_the_model_card_says_how_the_model_was_made(tmp_path):
    distilled = tmp_path / "student"
    distilled.mkdir()
    (distilled / "metrics.json").write_text(json.dumps({
        "student": "roberta-l4", "sizes": {}, "teacher": "t123", "teacher_test_accuracy": 0.95,
        "settings": {"losses": ["kd", "hidden-mse"], "temperature": 2.0}}))
    record = {"model_dir": str(distilled), "runtime": "onnxruntime",
              "steps": [{"step": "heads:0.25", "outcome": "kept"}, {"step": "quant:dynamic-int8", "outcome": "kept"}],
              "decisions": [{"step": "heads:0.25", "attempt": 0, "accuracy_before": 0.93, "accuracy_after": 0.925,
                             "outcome": "kept"}],
              "quantization": {"quantizer": "dynamic-int8", "options": {"per_channel": False},
                               "runtime": "onnxruntime"},
              "before_headline": {"accuracy": 0.93, "macro_f1": 0.92, "size_mb": 90.0, "latency_p50_ms": 8.0},
              "after_headline": {"accuracy": 0.925, "macro_f1": 0.915, "size_mb": 22.0, "latency_p50_ms": None}}
    source = ExportSource(tmp_path, tmp_path, record, ["体育", "财经"], 64, {"license": "MIT", "author": "me"},
                          {"candidate_id": "c7"})
    card = model_card(source)
    assert card.startswith("---\nlanguage: zh\nlicense: MIT")
    for expected in ("student `roberta-l4`", "teacher `t123` (test accuracy 0.9500)", "['kd', 'hidden-mse']",
                     "- heads:0.25: kept", "`dynamic-int8`", "| heads:0.25 | 0 | 0.9300 | 0.9250 | kept |",
                     "| before | 0.9300 | 0.9200 | 90.00 | 8.00 |",
                     "| after (onnxruntime) | 0.9250 | 0.9150 | 22.00 | - |",  # timed after the search: not here
                     '"candidate_id": "c7"',
                     "Author: me"):
        assert expected in card, expected


def test_importing_the_exporters_stays_light():
    heavy = ("torch", "onnx", "onnxruntime", "coremltools", "transformers")
    code = f"import sys, alambic.plugins.exporters; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
