"""core/ship/coreml_scoring.py: the weights of a saved .mlpackage read back equal the converted
module's up to their precision, a weight altered in the file is caught, and the read-back weights
are scored against the source model with the guard's budget."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
import torch
from datasets import Dataset

from alambic.plugins.students import RobertaL4
from alambic.ship import coreml_export as cm
from alambic.ship.coreml_compression import WeightPlan
from alambic.ship.coreml_scoring import load_read_back, match_check, read_back, scored_check

TINY = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}
PLANS = {"mixed": WeightPlan({"attention": "fp16", "ffn": "int8", "embeddings": "int8"}, "per_channel"),
         "int8": WeightPlan({"attention": "int8", "ffn": "int8", "embeddings": "int8"}, "per_tensor"),
         "fp16": WeightPlan({"attention": "fp16", "ffn": "fp16", "embeddings": "fp16"})}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RobertaL4.build(num_labels=3, vocab_size=3000, **TINY).eval()


def saved(model, plan: WeightPlan, folder, layout: str = "standard"):
    path = folder / "Classifier.mlpackage"
    cm.convert_classifier(model, ["a", "b", "c"], 16, weights=plan, layout=layout).save(str(path))
    return path


@pytest.mark.parametrize("layout", ["standard", "ane"])
@pytest.mark.parametrize("plan", sorted(PLANS))
def test_the_weights_read_back_are_the_converted_modules(model, plan, layout, tmp_path):
    module = cm.wrapper(copy.deepcopy(model), "logits", layout)
    check = match_check(module.state_dict(), read_back(saved(model, PLANS[plan], tmp_path, layout)).weights,
                        PLANS[plan])
    assert check.ok is True and check.data["compared"] >= 12, check.value


def test_a_weight_altered_in_the_file_is_caught(model, tmp_path):
    path = saved(model, PLANS["mixed"], tmp_path)
    with cm.quiet() as ct:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    const = next(op for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
                 for op in b.operations if op.type == "const" and op.outputs[0].name == "classifier_weight_to_fp16")
    blob = const.attributes["val"].blobFileValue
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data_offset = struct.unpack_from("<IIQQ", data, blob.offset)[3]  # the blob's header says where its values are
    data[data_offset:data_offset + 16] = b"\x00\x7c" * 8  # fp16 +inf in the classifier's first weights
    weights.write_bytes(bytes(data))
    check = match_check(cm.wrapper(copy.deepcopy(model), "logits").state_dict(), read_back(path).weights,
                        PLANS["mixed"])
    assert check.ok is False and check.value.endswith("differ: classifier.weight")


def rows(n: int = 48) -> Dataset:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(4, 12, (n,), generator=g).tolist()
    ids = [[101] + torch.randint(200, 3000, (k - 2,), generator=g).tolist() + [102] for k in lengths]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids],
                              "label": [0] * n})


def test_the_read_back_weights_are_scored_against_the_guards_budget(model, tmp_path):
    test = rows()
    module = cm.wrapper(copy.deepcopy(model), "logits")
    reference = np.concatenate([cm_logits(cm.wrapper(copy.deepcopy(model), "logits"), test)])
    labels = reference.argmax(-1)  # the source model is right on every row: any loss shows
    test = test.remove_columns("label").add_column("label", labels.tolist())
    load_read_back(module, read_back(saved(model, PLANS["int8"], tmp_path)).weights)
    check = scored_check(module, test, reference, budget_points=100.0, candidate={"accuracy": 0.9, "examples": 10})
    assert check.ok is True and check.data["source_accuracy"] == 1.0 and check.data["examples"] == 48
    assert "the candidate measured 0.9000 on 10 test rows" in check.value
    altered = cm.wrapper(copy.deepcopy(model), "logits")
    with torch.no_grad():
        altered.classifier.weight.mul_(-1)  # weights that no longer give the source's answers
        altered.classifier.bias.mul_(-1)
    failed = scored_check(altered, test, reference, budget_points=0.5)
    assert failed.ok is False and "budget 0.5" in failed.value and failed.data["drop_points"] > 0.5


def cm_logits(module, test: Dataset) -> np.ndarray:
    from alambic.ship.coreml_checks import wrapper_logits

    return wrapper_logits(module, test[:])
