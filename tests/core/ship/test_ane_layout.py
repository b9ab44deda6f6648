"""core/ship/ane_layout.py: the Neural Engine layout computes the standard layout's logits, on a
student pruned to uneven heads and an odd FFN width, over THUCNews test headlines."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertTokenizerFast

from alambic.compress.pruning import PruneContext, heads_per_layer
from alambic.errors import AlambicError
from alambic.plugins.pruners import Ffn, Heads
from alambic.plugins.students import MobileBertAdapter, RobertaL4
from alambic.ship import coreml_checks as cmc
from alambic.ship import coreml_export as cm
from alambic.ship.ane_layout import AneClassifier
from tests.conftest import THUCNEWS, VOCAB, needs_shared_data

LABELS = 14
TINY = {"layers": 3, "hidden": 64, "heads": 4, "ffn": 130}


def test_headlines(count: int = 256, seed: int = 0) -> list[str]:
    """A seeded sample of THUCNews test headlines (the file is grouped by class)."""
    lines = (THUCNEWS / "test.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in random.Random(seed).sample(lines, count)]


test_headlines.__test__ = False  # a helper, not a test


def tokenized(texts: list[str]) -> Dataset:
    enc = BertTokenizerFast(vocab_file=str(VOCAB))(texts, truncation=True, max_length=48)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                              "token_type_ids": enc["token_type_ids"], "label": [i % LABELS for i in range(len(texts))],
                              "length": [len(ids) for ids in enc["input_ids"]]})


@torch.no_grad()
def batch_logits(module, rows: Dataset, standard: bool) -> np.ndarray:
    """Logits over padded batches of 32, as int32 inputs (the export wrappers' signature)."""
    out = []
    for lo in range(0, len(rows), 32):
        ids = rows[lo:lo + 32]["input_ids"]
        width = max(map(len, ids))
        x = torch.tensor([r + [0] * (width - len(r)) for r in ids], dtype=torch.int32)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], dtype=torch.int32)
        logits = module(input_ids=x.long(), attention_mask=mask.long()).logits if standard else module(x, mask)
        out.append(logits.numpy())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def pruned():
    """A roberta-l4 student with heads pruned unevenly (3, 1, 4) and FFNs cut to an odd width."""
    rows = tokenized(test_headlines())
    torch.manual_seed(0)
    model = RobertaL4.build(num_labels=LABELS, vocab_size=21128, **TINY).eval()
    with torch.no_grad():  # weights as large as a trained model's: attention far from uniform, as it is then
        for weight in (p for name, p in model.named_parameters() if p.dim() == 2):
            weight.normal_(0.0, 0.2)
    context = PruneContext(validation=rows, batches=2, batch_size=16)
    model = Heads.apply(model, Heads.options({0: 0.25, 1: 0.75}), context).model
    model = Ffn.apply(model, Ffn.options(0.3), context).model.eval()
    return model, rows


@needs_shared_data()
def test_the_neural_engine_layout_matches_the_standard_layout_on_a_pruned_student(pruned):
    model, rows = pruned
    widths = [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]
    assert heads_per_layer(model) == [3, 1, 4] and all(w % 2 == 1 for w in widths), widths
    reference = batch_logits(model, rows, standard=True)
    assert reference.std(axis=0).mean() > 0.1  # the logits follow the text: a test that can fail
    ane = batch_logits(AneClassifier(model, "logits").eval(), rows, standard=False)
    assert np.abs(ane - reference).max() <= 1e-4
    assert (ane.argmax(-1) == reference.argmax(-1)).all()


@needs_shared_data()
def test_the_verification_checks_the_layout_it_converts(pruned):
    """What the Core ML exporter records for coreml.layout=ane: parity of that layout, eager and traced."""
    model, rows = pruned
    reference = batch_logits(model, rows, standard=True)
    checks = cmc.wrapper_parity(model, rows, reference, max_traced=40, layout="ane")
    assert [c.name for c in checks][:2] == ["ane layout vs PyTorch model (eager, padded batches)",
                                            "traced classifier (ane layout) vs PyTorch model (batch 1)"]
    assert all(c.ok for c in checks), checks


def test_a_mobilebert_student_is_refused_with_the_way_out():
    model = MobileBertAdapter.build(num_labels=3, vocab_size=400, layers=1, hidden=64, heads=2, ffn=128)
    with pytest.raises(AlambicError, match="coreml.layout=standard"):
        AneClassifier(model)
    with pytest.raises(AlambicError, match="layout must be one of standard, ane"):
        cm.wrapper(model, layout="neural")
