"""core/compress/records.py: the pruning steps and latency lengths parsed from the command line,
and each step's label."""

from __future__ import annotations

import pytest

from alambic.compress.records import parse_lengths, parse_steps, step_label
from alambic.config import PruningStep
from alambic.errors import AlambicError
from alambic.manager import build_registry


def test_steps_are_parsed_in_order():
    steps = parse_steps(" heads:0.25, ffn:0.3 ,vocab", build_registry())
    assert steps == [PruningStep(pruner="heads", amount=0.25), PruningStep(pruner="ffn", amount=0.3),
                     PruningStep(pruner="vocab")]
    assert [step_label(s) for s in steps] == ["heads:0.25", "ffn:0.3", "vocab"]
    assert parse_steps("") == parse_steps(None) == parse_steps("none") == []


@pytest.mark.parametrize(("text", "message"), [
    ("heads:0.25,,vocab", r"step 2 is empty"),
    ("heads:lots", r"step 'heads:lots': amount 'lots' is not a number"),
    ("ffn:1.5", r"step 'ffn:1.5': amount must be a fraction in \[0, 1\]"),
    ("ffn:nan", r"amount must be a fraction"),
    (":0.3", r"no pruner id"),
    ("head:0.25", r"step 'head:0.25': unknown pruners id 'head' \(did you mean 'heads'\?\)"),
    ("vocab:0.5", r"step 'vocab:0.5': pruner 'vocab' has no strength"),
])
def test_bad_steps_name_the_bad_part(text, message):
    with pytest.raises(AlambicError, match=message):
        parse_steps(text, build_registry())


def test_lengths_are_parsed():
    assert parse_lengths("64, 16,32,16") == (16, 32, 64)
    for bad in ("16,x", "", "1,16"):
        with pytest.raises(AlambicError, match="--lengths"):
            parse_lengths(bad)


def test_a_plus_n_suffix_asks_for_recovery_epochs():
    steps = parse_steps("vocab,layers:0.5+1,ffn+2")
    assert [(s.pruner, s.amount, s.recover_epochs) for s in steps] == [
        ("vocab", None, 0), ("layers", 0.5, 1), ("ffn", None, 2)]
    assert [step_label(s) for s in steps] == ["vocab", "layers:0.5+1", "ffn+2"]
    for bad in ("layers:0.5+", "layers:0.5+x", "layers:0.5+0", "layers+101"):
        with pytest.raises(AlambicError, match="recovery epochs from 1 to 100"):
            parse_steps(bad)
