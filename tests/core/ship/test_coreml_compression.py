"""core/ship/coreml_compression.py: each built-in quantizer's compression in Core ML's terms, applied
op by op and read back from the saved program (a ``mixed`` candidate keeps fp16 attention)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.plugins.students import RobertaL4
from alambic.ship import coreml_export as cm
from alambic.ship.coreml_compression import KINDS, WeightPlan, plan_for, table_group, weight_kind
from alambic.ship.coreml_scoring import precision_check, read_back

TINY = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}


def record(quantizer: str, **options) -> dict:
    """A record.json ``quantization`` as the quantizer writes it: its id and every option."""
    if quantizer == "none":
        return {}
    cls = build_registry()["quantizers"].get(quantizer)
    found = {"quantizer": quantizer, "options": dataclasses.asdict(cls.options(options))}
    if cls.runtime == "coreml":  # a Core ML quantizer records the plan it compressed with
        found["plan"] = dataclasses.asdict(cls.options(options).plan())
    return found


@pytest.mark.parametrize(("quantizer", "options", "precision", "granularity", "differs"), [
    ("none", {}, ("fp16", "fp16", "fp16"), "per_channel", "the candidate ran fp32"),
    ("fp16", {}, ("fp16", "fp16", "fp16"), "per_channel", None),
    ("dynamic-int8", {}, ("int8", "int8", "int8"), "per_tensor", "fp16 activations"),
    ("dynamic-int8", {"per_channel": True, "embeddings": False}, ("int8", "int8", "fp16"), "per_channel", None),
    ("dynamic-int8", {"runtime": "pytorch"}, ("int8", "int8", "fp16"), "per_channel", None),
    ("static-int8", {}, ("int8", "int8", "int8"), "per_channel", "static activation ranges are not carried"),
    ("mixed", {}, ("fp16", "int8", "int8"), "per_tensor", "fp16 activations"),
    ("mixed", {"attention": "int8", "ffn": "fp32", "embeddings": "fp16"}, ("int8", "fp16", "fp16"), "per_tensor",
     "ffn ran fp32; Core ML holds it fp16"),
    ("palettize", {}, ("lut4", "lut4", "lut4"), "per_channel", None),
    ("palettize", {"nbits": 6, "embeddings": False}, ("lut6", "lut6", "fp16"), "per_channel", None),
    ("palettize", {"sparsity": 0.5}, ("sparse+lut4",) * 3, "per_channel", None),
    ("int4-block", {"block_size": 16}, ("int4", "int4", "int4"), "per_channel", None),
])
def test_each_quantizer_maps_to_core_ml_weights(quantizer, options, precision, granularity, differs):
    plan = plan_for(record(quantizer, **options))
    assert tuple(plan.precision[k] for k in KINDS) == precision
    assert plan.granularity == granularity
    if differs is None:
        assert not [d for d in plan.differences if "fp16 activations" not in d and "dequantizes" not in d]
    else:
        assert any(differs in d for d in plan.differences), plan.differences


def test_every_built_in_quantizer_has_a_mapping():
    quantizers = build_registry()["quantizers"]
    built_in = [i for i in quantizers.ids() if quantizers.get(i).__module__.startswith("alambic.")]
    assert {"dynamic-int8", "static-int8", "fp16", "mixed", "palettize", "int4-block"} <= set(built_in)
    for quantizer in built_in:
        assert not [d for d in plan_for(record(quantizer)).differences if "no Core ML mapping" in d], quantizer
    assert "no Core ML mapping" in plan_for({"quantizer": "someone-elses"}).differences[0]


def test_weight_names_of_both_layouts_have_their_kind():
    assert weight_kind("encoder_layer_0_attention_self_query_weight_to_fp16") == "attention"
    assert weight_kind("encoder_layer_0_attention_output_dense_weight_to_fp16") == "attention"
    assert weight_kind("encoder_layer_1_intermediate_dense_weight_to_fp16") == "ffn"
    assert weight_kind("encoder_layer_1_output_dense_weight_to_fp16") == "ffn"
    assert weight_kind("embeddings_word_embeddings_weight_to_fp16") == "embeddings"
    assert weight_kind("attention_0_query_weight_to_fp16") == "attention"  # the Neural Engine layout
    assert weight_kind("feed_forward_1_up_weight_to_fp16") == "ffn"
    assert weight_kind("classifier_weight_to_fp16") == weight_kind("pooler_dense_weight_to_fp16") == "other"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RobertaL4.build(num_labels=3, vocab_size=3000, **TINY).eval()


@pytest.mark.parametrize("layout", ["standard", "ane"])
def test_a_mixed_candidate_keeps_fp16_attention_in_core_ml(model, layout, tmp_path):
    plan = plan_for(record("mixed"))  # attention fp16, ffn int8, embeddings int8
    path = tmp_path / "Classifier.mlpackage"
    cm.convert_classifier(model, ["a", "b", "c"], 16, weights=plan, layout=layout).save(str(path))
    found = read_back(path).precisions()
    assert found["attention"] == {"fp16": 8}  # query, key, value, output x 2 layers
    assert found["ffn"] == {"int8": 4}
    # the word and position tables (the 2-row token-type table is under the size threshold)
    assert found["embeddings"] == {"int8": 2}
    check = precision_check(read_back(path), plan)
    assert check.ok is True and "attention fp16, ffn int8, embeddings int8" in check.value, check.value


def test_the_read_back_catches_weights_that_are_not_as_planned(model, tmp_path):
    path = tmp_path / "Classifier.mlpackage"
    cm.convert_classifier(model, ["a", "b", "c"], 16, weights=plan_for(record("mixed"))).save(str(path))
    claimed = WeightPlan({"attention": "int8", "ffn": "int8", "embeddings": "int8"})
    check = precision_check(read_back(path), claimed)
    assert check.ok is False and check.value.endswith("not as planned: attention")


def test_a_plan_holds_only_forms_core_ml_has():
    with pytest.raises(AlambicError, match="must be one of fp16, int8, int4, lut4, lut6, lut8 or sparse\\+lutN"):
        WeightPlan({"attention": "lut5", "ffn": "fp16", "embeddings": "fp16"})
    with pytest.raises(AlambicError, match="got 'sparse\\+int8'"):
        WeightPlan.every("sparse+int8")
    assert WeightPlan.every("lut4").ios18 and not WeightPlan.every("int8").ios18


@pytest.mark.parametrize(("channels", "asked", "group"), [(384, 16, 16), (21128, 16, 8), (500, 16, 10), (7, 16, 7),
                                                          (13, 4, 1)])
def test_a_table_group_divides_the_weights_channels(channels, asked, group):
    assert table_group(channels, asked) == group
