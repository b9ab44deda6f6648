"""plugins/pruners.py: each pruner shrinks the model physically (or sparsifies it), and the saved
model reloads with ``from_pretrained`` giving the in-memory pruned model's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value

from alambic.compress.pruning import PruneContext, encoder_layers, heads_per_layer
from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.plugins.pruners import (
    Ffn,
    Heads,
    Layers,
    Magnitude,
    choose_heads,
    drop_layers,
    magnitude_prune,
)
from alambic.plugins.students import MobileBertAdapter, RobertaL4
from alambic.train.models import load_pretrained, params

SMALL_VOCAB = 400
TINY = {"layers": 3, "hidden": 64, "heads": 4, "ffn": 128}
FEATURES = Features({
    "input_ids": List(Value("int32")), "attention_mask": List(Value("int8")),
    "token_type_ids": List(Value("int8")), "label": ClassLabel(names=["a", "b", "c"]),
    "length": Value("int64"),
})


def split_from(rows: list[list[int]]) -> Dataset:
    return Dataset.from_dict({
        "input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
        "token_type_ids": [[0] * len(r) for r in rows], "label": [i % 3 for i in range(len(rows))],
        "length": [len(r) for r in rows],
    }, features=FEATURES)


def random_split(n: int, seed: int, low: int = 104, high: int = SMALL_VOCAB) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=g).tolist()
    middles = [torch.randint(low, high, (k - 2,), generator=g).tolist() for k in lengths]
    return split_from([[101] + middle + [102] for middle in middles])


def tokenized(tokenizer, texts: list[str]) -> Dataset:
    enc = tokenizer(texts, truncation=True, max_length=64)
    return split_from(enc["input_ids"])


@pytest.fixture(scope="module")
def context():
    return PruneContext(validation=random_split(32, 1), batches=2, batch_size=8)


def build(student=RobertaL4, seed: int = 0, vocab_size: int = SMALL_VOCAB):
    torch.manual_seed(seed)
    return student.build(num_labels=3, vocab_size=vocab_size, **TINY).eval()


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def reloaded(model, tmp_path: Path):
    """Save, reload with ``from_pretrained``, check the logits match; the reloaded model."""
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    back = type(model).from_pretrained(folder).eval()
    ours = load_pretrained(folder, type(model)).eval()  # the project's loader, same result
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(5))
    expected = logits(model, ids)
    assert torch.allclose(logits(back, ids), expected, atol=1e-6)
    assert torch.allclose(logits(ours, ids), expected, atol=1e-6)
    assert params(back) == params(model)
    return back


# --- heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("student", [RobertaL4, MobileBertAdapter], ids=lambda s: s.id)
def test_heads_prunes_physically_and_reloads(student, context, tmp_path):
    model = build(student)
    result = Heads.apply(model, Heads.options(0.25), context)
    pruned = result.model
    assert sum(heads_per_layer(pruned)) == 12 - 3 and min(heads_per_layer(pruned)) >= 1
    assert heads_per_layer(model) == [4, 4, 4], "the input model is untouched"
    assert result.report["params_after"] < result.report["params_before"] == params(model)
    removed = {int(k): sorted(v) for k, v in result.report["removed_heads"].items()}
    assert {k: sorted(v) for k, v in pruned.config.pruned_heads.items()} == removed
    back = reloaded(pruned, tmp_path)
    assert heads_per_layer(back) == heads_per_layer(pruned)
    json.dumps(result.report)


def test_heads_removes_the_head_that_does_nothing_first(context):
    model = build()
    dense = encoder_layers(model)[2].attention.output.dense
    with torch.no_grad():
        dense.weight[:, 16:32] = 0  # head 1 of layer 2 (head size 64 / 4 = 16) writes nothing
    result = Heads.apply(model, Heads.options(1 / 12), context)
    assert result.report["removed_heads"] == {"2": [1]}


def test_heads_keeps_one_head_per_layer_and_honours_per_layer_amounts(context, tmp_path):
    model = build()
    assert heads_per_layer(Heads.apply(model, Heads.options(1.0), context).model) == [1, 1, 1]
    result = Heads.apply(model, Heads.options({0: 0.5, 2: 1.0}), context)
    assert heads_per_layer(result.model) == [2, 4, 1]
    assert result.report["options"]["per_layer"] == ((0, 0.5), (2, 1.0))
    again = Heads.apply(result.model, Heads.options(0.5), context)  # original head ids again
    assert sum(heads_per_layer(again.model)) == 7 - 4
    reloaded(again.model, tmp_path)
    with pytest.raises(AlambicError, match="layer 5; the model has 3 layer"):
        Heads.apply(model, Heads.options(per_layer={5: 0.5}), context)


def test_choose_heads_ranks_globally_but_spares_the_last_head():
    scores = [torch.tensor([0.1, 0.9]), torch.tensor([0.2, 0.3, 0.05])]
    assert choose_heads(scores, 0.4) == {0: [0], 1: [2]}
    assert choose_heads(scores, 1.0) == {0: [0], 1: [0, 2]}
    assert choose_heads(scores, {1: 0.34}) == {1: [2]}


def test_heads_options_and_half():
    assert Heads.half(Heads.options(0.5)).amount == 0.25
    assert Heads.half(Heads.options({1: 0.5})).per_layer == ((1, 0.25),)
    with pytest.raises(AlambicError, match="exactly one"):
        Heads.options()
    with pytest.raises(AlambicError, match=r"unknown option 'per_layers' \(did you mean 'per_layer'\?\)"):
        Heads.options(per_layers={0: 0.5})
    with pytest.raises(AlambicError, match=r"fraction in \[0, 1\]"):
        Heads.options(1.5)


# --- layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("student", [RobertaL4, MobileBertAdapter], ids=lambda s: s.id)
def test_layers_drops_a_given_list_and_reloads(student, tmp_path):
    model = build(student)
    result = Layers.apply(model, Layers.options(layers=[1]))
    pruned = result.model
    assert pruned.config.num_hidden_layers == len(encoder_layers(pruned)) == 2
    assert result.report["kept_layers"] == [0, 2] and result.report["params_after"] < params(model)
    for new, old in ((0, 0), (1, 2)):  # the kept layers are the original ones, in order
        a, b = encoder_layers(pruned)[new].state_dict(), encoder_layers(model)[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    back = reloaded(pruned, tmp_path)
    assert back.config.num_hidden_layers == 2


def test_layers_reindexes_pruned_heads(context, tmp_path):
    model = Heads.apply(build(), Heads.options({0: 0.5, 2: 0.75}), context).model
    assert heads_per_layer(model) == [2, 4, 1]
    pruned = Layers.apply(model, Layers.options(layers=[0])).model
    assert heads_per_layer(pruned) == [4, 1]
    assert list(pruned.config.pruned_heads) == [1], "layer 2's pruned heads are layer 1's now"
    assert heads_per_layer(reloaded(pruned, tmp_path)) == [4, 1]


def test_layers_by_importance_keeps_one(context):
    model = build()
    result = Layers.apply(model, Layers.options(0.34), context)
    assert result.report["layers_after"] == 2 and len(result.report["layer_importance"]) == 3
    assert Layers.apply(model, Layers.options(1.0), context).model.config.num_hidden_layers == 1
    with pytest.raises(AlambicError, match="leave no layer"):
        drop_layers(build(), [0, 1, 2])
    with pytest.raises(AlambicError, match=r"layer\(s\) \[3\] out of range"):
        Layers.apply(model, Layers.options(layers=[3]))


def test_layers_half():
    assert Layers.half(Layers.options(0.5)).amount == 0.25
    assert Layers.half(Layers.options(layers=[3, 1, 2])).layers == (3,)
    assert Layers.half(Layers.options(layers=[1])) is None


# --- ffn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("student", [RobertaL4, MobileBertAdapter], ids=lambda s: s.id)
def test_ffn_narrows_every_block_and_reloads(student, context, tmp_path):
    model = build(student)
    result = Ffn.apply(model, Ffn.options(0.3), context)
    pruned = result.model
    keep = 128 - 38
    assert pruned.config.intermediate_size == result.report["intermediate_after"] == keep
    for layer in encoder_layers(pruned):
        extra = [(f.intermediate, f.output) for f in getattr(layer, "ffn", ())]  # MobileBERT's
        for up, down in [(layer.intermediate, layer.output), *extra]:
            assert up.dense.out_features == down.dense.in_features == keep
    assert result.report["params_after"] < params(model)
    reloaded(pruned, tmp_path)
    assert Ffn.half(Ffn.options(0.3)).amount == 0.15


def test_ffn_drops_the_neurons_that_do_nothing(context):
    model = build()
    dead = [3, 50, 77]
    with torch.no_grad():
        encoder_layers(model)[0].output.dense.weight[:, dead] = 0
    pruned = Ffn.apply(model, Ffn.options(3 / 128), context).model
    kept_in = encoder_layers(pruned)[0].intermediate.dense.weight
    original = encoder_layers(model)[0].intermediate.dense.weight
    expected = [i for i in range(128) if i not in dead]
    assert torch.equal(kept_in, original[expected]), "the 3 dead neurons went, the rest stay in order"


# --- magnitude ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_magnitude_sparsity_is_permanent(scope, context, tmp_path):
    model = build()
    result = Magnitude.apply(model, Magnitude.options(0.4, scope=scope), context)
    pruned = result.model
    assert result.report["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert params(pruned) == params(model) == result.report["params_after"]
    assert not any("weight_orig" in k or "weight_mask" in k for k in pruned.state_dict())
    assert not any(m._forward_pre_hooks for m in pruned.modules())
    linears = [m for m in pruned.base_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    fractions = [float((m.weight == 0).float().mean()) for m in linears]
    if scope == "per-layer":
        assert all(f == pytest.approx(0.4, abs=1e-3) for f in fractions)
    else:
        assert max(fractions) - min(fractions) > 0.01, "global: matrices end up unevenly sparse"
    assert "sparse-aware runtime" in result.report["note"]
    back = reloaded(pruned, tmp_path)
    assert float((back.base_model.encoder.layer[0].intermediate.dense.weight == 0).float().mean()) > 0.1


def test_magnitude_embeddings_option_and_options():
    model = build()
    magnitude_prune(model, 0.5, embeddings=True)
    assert float((model.get_input_embeddings().weight == 0).float().mean()) > 0.2
    assert Magnitude.half(Magnitude.options(0.5)).amount == 0.25
    with pytest.raises(AlambicError, match="scope must be global or per-layer"):
        Magnitude.options(0.5, scope="layer")


def test_registry_and_light_import():
    assert build_registry()["pruners"].ids() == ["ffn", "heads", "layers", "magnitude", "vocab"]
    code = ("import sys, alambic.plugins.pruners; "
            "print('transformers' in sys.modules, 'datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
