"""core/compress/guard.py: keep a step, retry it at half strength, or revert it; every decision recorded.

The logic is tested with fakes; then a real pruner on a small model trained to fit a rule."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, List, Value
from rich.console import Console

from alambic.compress.guard import GuardDecision, final_outcome, format_decisions, guarded_step
from alambic.compress.pruning import Pruner, PruneResult


@dataclass(frozen=True)
class Amount:
    amount: float


def halve(options: Amount) -> Amount:
    return replace(options, amount=options.amount / 2)


def fake(costs: dict[float, float]):
    """apply: returns its options; evaluate: the accuracy after a step of that amount (0.90 before)."""
    calls: list[float] = []

    def apply(options: Amount) -> Amount:
        calls.append(options.amount)
        return options

    def evaluate(result: Amount) -> float:
        return 0.90 - costs[result.amount]

    return apply, evaluate, calls


def run(costs, amount=0.5, retries=2, max_drop=1.0, half=halve, **kw):
    apply, evaluate, calls = fake(costs)
    result, decisions = guarded_step(apply, evaluate, Amount(amount), half, accuracy_before=0.90,
                                     max_drop=max_drop, retries=retries, name=f"fake:{amount}", plugin="fake", **kw)
    return result, decisions, calls


def test_a_cheap_step_is_kept_at_once():
    result, decisions, calls = run({0.5: 0.005})
    assert result == Amount(0.5) and calls == [0.5]
    [d] = decisions
    assert (d.outcome, d.attempt, d.strength, d.step, d.plugin) == ("kept", 0, 0.5, "fake:0.5", "fake")
    assert d.accuracy_before == 0.90 and d.accuracy_after == pytest.approx(0.895)
    assert d.drop_points == pytest.approx(0.5) and d.max_drop == 1.0
    assert d.options == {"amount": 0.5}


def test_a_costly_step_is_retried_at_half_strength_then_kept():
    result, decisions, calls = run({0.5: 0.05, 0.25: 0.01})
    assert result == Amount(0.25) and calls == [0.5, 0.25]
    assert [(d.outcome, d.strength) for d in decisions] == [("retried", 0.5), ("kept", 0.25)]
    assert decisions[0].drop_points == pytest.approx(5.0) and "retrying at half strength" in decisions[0].note
    assert final_outcome(decisions) == "kept after 1 retry"


def test_a_step_still_too_costly_after_the_retries_is_reverted():
    result, decisions, calls = run({0.5: 0.3, 0.25: 0.2, 0.125: 0.1}, retries=2)
    assert result is None
    assert calls == [0.5, 0.25, 0.125]
    assert [(d.outcome, d.attempt, d.strength) for d in decisions] == [
        ("retried", 0, 0.5), ("retried", 1, 0.25), ("reverted", 2, 0.125)]
    assert "no retry left" in decisions[-1].note
    assert final_outcome(decisions) == "reverted"


def test_without_a_weaker_setting_a_costly_step_is_reverted_at_once():
    result, decisions, calls = run({0.5: 0.3}, half=lambda options: None)
    assert result is None and calls == [0.5]
    [d] = decisions
    assert d.outcome == "reverted" and "no weaker setting" in d.note


def test_no_retries_means_revert_on_the_first_failure():
    result, decisions, calls = run({0.5: 0.3}, retries=0)
    assert result is None and calls == [0.5] and decisions[0].outcome == "reverted"


def test_the_budget_is_inclusive_and_gains_pass():
    _, exact, _ = run({0.5: 0.01})  # exactly 1.0 point
    _, gain, _ = run({0.5: -0.02})  # accuracy went up
    assert exact[0].outcome == gain[0].outcome == "kept"
    assert gain[0].drop_points == pytest.approx(-2.0)


def test_options_without_strength_and_each_decision_reported_as_made():
    seen: list[GuardDecision] = []
    result, decisions = guarded_step(lambda o: "q", lambda r: 0.5, {"per_channel": True}, lambda o: None,
                                     accuracy_before=0.9, max_drop=1.0, retries=2, name="quant:x",
                                     on_decision=seen.append)
    assert result is None and seen == decisions
    assert decisions[0].strength is None and decisions[0].options == {"per_channel": True}


def test_errors_of_a_step_propagate():
    def broken(options):
        raise ValueError("cannot prune")

    with pytest.raises(ValueError, match="cannot prune"):
        guarded_step(broken, lambda r: 1.0, Amount(0.5), halve, 0.9, 1.0, 2, "x")
    with pytest.raises(ValueError, match="retries"):
        guarded_step(broken, lambda r: 1.0, Amount(0.5), halve, 0.9, 1.0, -1, "x")


def test_decisions_round_trip_through_json_and_print():
    _, decisions, _ = run({0.5: 0.3, 0.25: 0.2, 0.125: 0.1})
    again = [GuardDecision.from_dict(json.loads(json.dumps(d.to_dict()))) for d in decisions]
    assert again == decisions
    console = Console(width=160, record=True)
    console.print(format_decisions([d.to_dict() for d in decisions]))
    text = console.export_text()
    assert text.count("retried") == 2 and "reverted" in text and "0.125" in text


# --- a real step on a real model ------------------------------------------------------------

FEATURES = Features({
    "input_ids": List(Value("int32")), "attention_mask": List(Value("int8")),
    "token_type_ids": List(Value("int8")), "label": ClassLabel(names=["a", "b", "c"]),
    "length": Value("int64"),
})


def rule_split(n: int, seed: int) -> Dataset:
    """Label = which of tokens 10, 11, 12 the text holds, somewhere among random tokens."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for _ in range(n):
        label = int(torch.randint(0, 3, (1,), generator=g))
        k = int(torch.randint(3, 9, (1,), generator=g))
        filler = torch.randint(104, 200, (k,), generator=g).tolist()
        filler.insert(int(torch.randint(0, k, (1,), generator=g)), 10 + label)
        rows.append([101, *filler, 102])
        labels.append(label)
    return Dataset.from_dict({
        "input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
        "token_type_ids": [[0] * len(r) for r in rows], "label": labels, "length": [len(r) for r in rows],
    }, features=FEATURES)


@pytest.fixture(scope="module")
def fitted():
    """A 2-layer roberta-l4 trained for a few epochs to fit the rule (validation accuracy ~1)."""
    from alambic.data.tokenize import MODEL_INPUTS
    from alambic.plugins.students import RobertaL4
    from alambic.train.loop import evaluate, iterate

    torch.manual_seed(0)
    train, validation = rule_split(192, 0), rule_split(60, 1)
    model = RobertaL4.build(num_labels=3, layers=2, hidden=64, heads=4, ffn=128, vocab_size=200)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(3):
        model.train()
        for _, batch in iterate(train, 16, seed=0, epoch=epoch, shuffle=True):
            loss = F.cross_entropy(model(**{k: batch[k] for k in MODEL_INPUTS}).logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = evaluate(model, validation)["accuracy"]
    assert accuracy >= 0.95, f"the rule was not learnt (validation accuracy {accuracy:.2f})"
    return model, validation, accuracy


def test_real_magnitude_pruning_that_hurts_is_retried_at_half_strength(fitted):
    """Zeroing 99% of the encoder's weights destroys the rule; half of them costs nothing."""
    from alambic.plugins.pruners import Magnitude
    from alambic.train.loop import evaluate
    from alambic.train.models import params

    model, validation, accuracy = fitted
    before = [p.clone() for p in model.parameters()]
    result, decisions = guarded_step(
        lambda o: Magnitude.apply(model, o), lambda r: evaluate(r.model, validation)["accuracy"],
        Magnitude.options(0.99), Magnitude.half, accuracy, max_drop=1.0, retries=1, name="magnitude:0.99",
        plugin="magnitude")
    assert [(d.outcome, d.strength) for d in decisions] == [("retried", 0.99), ("kept", 0.495)]
    assert decisions[0].drop_points > 10
    assert result.report["sparsity"] == pytest.approx(0.495, abs=0.01)
    assert params(result.model) == params(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the input is untouched


def test_a_real_step_made_to_hurt_is_retried_at_half_strength_then_reverted(fitted):
    """A pruner plugin that really perturbs the encoder (see Scramble) hurts at every strength:
    tried at 0.8, retried at 0.4 and 0.2, then reverted; the model is left as it was."""
    from alambic.train.loop import evaluate

    model, validation, accuracy = fitted
    before = [p.clone() for p in model.parameters()]
    seen: list[GuardDecision] = []
    result, decisions = guarded_step(
        lambda o: Scramble.apply(model, o), lambda r: evaluate(r.model, validation)["accuracy"],
        Scramble.options(0.8), Scramble.half, accuracy, max_drop=1.0, retries=2, name="scramble:0.8",
        plugin="scramble", on_decision=seen.append)
    assert result is None and seen == decisions
    assert [(d.outcome, d.attempt, d.strength) for d in decisions] == [
        ("retried", 0, 0.8), ("retried", 1, 0.4), ("reverted", 2, 0.2)]
    assert all(d.accuracy_before == accuracy and d.drop_points > 1.0 for d in decisions)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@dataclass(frozen=True)
class ScrambleOptions:
    amount: float  # noise std, in units of 4: even 0.1 buries the encoder's weights (std ~0.05)
    seed: int = 0


class Scramble(Pruner):
    """Test pruner made to hurt: Gaussian noise of std 4 * amount on every encoder Linear weight."""

    id = "scramble"
    Options = ScrambleOptions

    @classmethod
    def prune(cls, model, options, context):
        g = torch.Generator().manual_seed(options.seed)
        with torch.no_grad():
            for module in model.base_model.encoder.modules():
                if isinstance(module, torch.nn.Linear):
                    noise = torch.randn(module.weight.shape, generator=g) * 4 * options.amount
                    module.weight += noise.to(module.weight.dtype)
        return PruneResult(model, report={"noise_std": 4 * options.amount})
