"""One contract per plugin kind, run over every registered plugin of that kind.

A kind that gains its first built-in plugin must gain a contract here (see `test_every_kind_with_plugins_has_a_contract`).
"""

from __future__ import annotations

import inspect

import pytest

from alambic.manager import build_registry, get_plugin_manager

REGISTRY = build_registry(get_plugin_manager(env={}))
ALL = [(kind, e) for kind, reg in REGISTRY.kinds.items() for e in reg.entries.values()]


def contract_datasets(cls: type) -> None:
    assert callable(getattr(cls(), "load", None)), "a data source needs load(config, report)"
    assert list(inspect.signature(cls().load).parameters) == ["config", "report"]


def contract_students(cls: type) -> None:
    import torch

    student = cls()
    model = student.build(num_labels=3, layers=1, hidden=32, heads=2, ffn=64)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (2, 3)
    assert model.config.vocab_size == 21128, "students share bert-base-chinese's vocabulary"


CONTRACTS = {"datasets": contract_datasets, "students": contract_students}


def test_builtins_loaded_without_failures():
    assert REGISTRY.failures == []


def test_every_kind_with_plugins_has_a_contract():
    kinds = {kind for kind, _ in ALL}
    assert kinds <= set(CONTRACTS), f"write a contract for: {sorted(kinds - set(CONTRACTS))}"


@pytest.mark.parametrize("kind, entry", ALL, ids=[f"{k}:{e.id}" for k, e in ALL])
def test_plugin_contract(kind, entry):
    assert entry.description, f"{entry.id}: the class docstring's first line describes it"
    CONTRACTS[kind](entry.cls)
