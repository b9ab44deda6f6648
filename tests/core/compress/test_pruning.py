"""core/compress/pruning.py: the pruner base class, importance by gates and ablation, token-id helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value

from alambic.compress.pruning import (
    PruneContext,
    Pruner,
    PruneResult,
    count,
    encoder_layers,
    head_importance,
    layer_importance,
    neuron_importance,
    remap_tokens,
    supported,
    token_counts,
    unknown_tokens,
)
from alambic.errors import AlambicError
from alambic.train.models import BertStudent, Size, params

VOCAB = 200


class Tiny(BertStudent):
    """A tiny BERT for tests."""

    id = "tiny"
    size = Size(layers=3, hidden=32, heads=4, ffn=64)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return Tiny.build(num_labels=3, vocab_size=VOCAB).eval()


def tokenized(rows: list[list[int]], labels: list[int] | None = None) -> Dataset:
    features = Features({
        "input_ids": List(Value("int32")), "attention_mask": List(Value("int8")),
        "token_type_ids": List(Value("int8")), "label": ClassLabel(names=["a", "b", "c"]),
        "length": Value("int64"),
    })
    return Dataset.from_dict({
        "input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
        "token_type_ids": [[0] * len(r) for r in rows],
        "label": labels if labels is not None else [i % 3 for i in range(len(rows))],
        "length": [len(r) for r in rows],
    }, features=features)


def random_split(n: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 10, (1,), generator=g))
        rows.append([2] + torch.randint(5, VOCAB, (length - 2,), generator=g).tolist() + [3])
    return tokenized(rows)


@pytest.fixture(scope="module")
def batches():
    return PruneContext(validation=random_split(24, 1), batches=2, batch_size=8).importance_batches("test")


# --- the base class -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleOptions:
    amount: float = 0.5
    mode: str = "x"


class Scale(Pruner):
    """Multiplies the classifier by (1 - amount): a stand-in with a strength."""

    id = "scale"
    Options = ScaleOptions

    @classmethod
    def prune(cls, model, options, context):
        with torch.no_grad():
            model.classifier.weight.mul_(1 - options.amount)
        return PruneResult(model, report={"scaled": options.amount})


class Plain(Pruner):
    """Without options or strength."""

    id = "plain"

    @classmethod
    def prune(cls, model, options, context):
        return PruneResult(model)


def test_options_builds_the_frozen_dataclass():
    options = Scale.options(0.3, mode="y")
    assert options == ScaleOptions(amount=0.3, mode="y")
    with pytest.raises(AttributeError):
        options.amount = 0.1  # frozen


def test_unknown_option_says_did_you_mean():
    expected = r"unknown option 'mdoe' \(did you mean 'mode'\?\); allowed: amount, mode"
    with pytest.raises(AlambicError, match=expected):
        Scale.options(0.3, mdoe="y")


def test_amount_on_a_pruner_without_strength_is_refused():
    with pytest.raises(AlambicError, match="has no strength"):
        Plain.options(0.5)
    with pytest.raises(AlambicError, match="amount given twice"):
        Scale.options(0.5, amount=0.2)


def test_half_halves_the_amount_or_is_none():
    assert Scale.half(Scale.options(0.4, mode="y")) == ScaleOptions(amount=0.2, mode="y")
    assert Plain.half(Plain.options()) is None


def test_apply_prunes_a_copy_and_reports():
    model = tiny_model()
    original = model.classifier.weight.clone()
    result = Scale.apply(model, Scale.options(0.5), PruneContext())
    assert torch.equal(model.classifier.weight, original), "the input model is left as it was"
    assert torch.allclose(result.model.classifier.weight, original * 0.5)
    report = result.report
    assert report["pruner"] == "scale" and report["options"] == {"amount": 0.5, "mode": "x"}
    assert report["params_before"] == report["params_after"] == params(model)
    json.dumps(report)
    assert result.metrics()["prune/scaled"] == 0.5 and "prune/pruner" not in result.metrics()
    assert result.remap("data") == "data", "no vocabulary change: data passes unchanged"


def test_unsupported_architectures_are_named():
    with pytest.raises(AlambicError, match="BERT-like encoders.*not Linear"):
        Scale.apply(torch.nn.Linear(2, 2), Scale.options(0.5))
    supported(tiny_model())  # no error


def test_count_rounds_half_up():
    assert [count(a, 10) for a in (0, 0.04, 0.05, 0.25, 0.3, 1.0)] == [0, 0, 1, 3, 3, 10]
    assert count(0.25, 12) == 3 and count(0.3, 2048) == 614


def test_importance_batches_needs_validation():
    with pytest.raises(AlambicError, match="'heads'.*no validation split"):
        PruneContext().importance_batches("heads")
    batches = PruneContext(validation=random_split(30, 0), batches=2, batch_size=8).importance_batches("x")
    assert len(batches) == 2 and batches[0]["input_ids"].shape[0] == 8


# --- importance -----------------------------------------------------------------------------


def test_a_head_with_a_zero_output_slice_is_least_important(batches):
    model = tiny_model()
    layer, head = 1, 2
    dense = encoder_layers(model)[layer].attention.output.dense
    size = dense.in_features // 4
    with torch.no_grad():
        dense.weight[:, head * size:(head + 1) * size] = 0
    scores = head_importance(model, batches)
    assert [len(s) for s in scores] == [4, 4, 4]
    assert float(scores[layer][head]) == 0.0
    others = [float(s) for i, ss in enumerate(scores) for j, s in enumerate(ss) if (i, j) != (layer, head)]
    assert min(others) > 0
    assert all(torch.isclose(s.norm(), torch.tensor(1.0)) for s in scores), "normalised per layer"


def test_head_importance_follows_already_pruned_heads(batches):
    model = tiny_model()
    model.prune_heads({0: [1, 3]})
    assert [len(s) for s in head_importance(model, batches)] == [2, 4, 4]


def test_a_neuron_with_a_zero_output_column_scores_zero(batches):
    model = tiny_model()
    with torch.no_grad():
        encoder_layers(model)[2].output.dense.weight[:, 5] = 0
    scores = neuron_importance(model, batches)
    assert [[len(s) for s in layer] for layer in scores] == [[64], [64], [64]]
    assert float(scores[2][0][5]) == 0.0 and float(scores[2][0].min()) == 0.0
    assert float(scores[0][0][5]) > 0


def test_layer_importance_restores_the_model(batches):
    model = tiny_model()
    layers = encoder_layers(model)
    before = model(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
    scores = layer_importance(model, batches)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert encoder_layers(model) is layers and not model.training
    after = model(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
    assert torch.equal(before, after)


# --- token ids ------------------------------------------------------------------------------


def test_token_counts_respect_a_selection():
    ds = tokenized([[2, 7, 7, 3], [2, 9, 3], [2, 11, 3]])
    counts = token_counts(ds, 12)
    assert counts[7] == 2 and counts[9] == 1 and counts[2] == 3
    assert token_counts(ds.select([0]), 12)[9] == 0, "rows left out by select() are not counted"
    with pytest.raises(AlambicError, match="another vocabulary"):
        token_counts(ds, 10)


def test_remap_tokens_maps_dropped_ids_to_unk():
    ds = tokenized([[2, 7, 8, 3], [2, 9, 11, 3]])
    token_map = [0, 1, 2, 3, 7, 9]  # new id -> old id; 1 is [UNK] here
    out = remap_tokens(ds, token_map, unk_id=1)
    assert out["input_ids"][:] == [[2, 4, 1, 3], [2, 5, 1, 3]]
    assert out.features == ds.features and out["length"][:] == [4, 4]


def test_unknown_tokens_counts_what_becomes_unk():
    ds = tokenized([[2, 7, 3], [2, 8, 8, 3], [2, 9, 3]])
    stats, clean = unknown_tokens(ds, [0, 1, 2, 3, 7, 9])
    assert stats == {"tokens": 10, "tokens_unk": 2, "rows": 3, "rows_with_unk": 1}
    assert clean == [0, 2]
