"""core/train/losses.py: KD against hand arithmetic, the layer map, the masked losses, the base class."""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import dataclass

import pytest
import torch

from alambic.errors import AlambicError
from alambic.train.losses import (
    DistillLoss,
    attention_kl,
    attention_mse,
    kd_loss,
    masked_mse,
    needs_online_teacher,
    output_flags,
    parse_layer_map,
    uniform_layer_map,
)
from alambic.train.models import Size, bert_config

# --- kd_loss against arithmetic written out ------------------------------------------------------

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.3, 0.3, -2.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0], [-1.0, 4.0, 0.0]]
LABELS = [1, 2, 0]


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def by_hand(student, teacher, labels, t: float, alpha: float) -> tuple[float, float]:
    """(the soft term without T², cross-entropy), each a batch mean, from the definitions."""
    kl = ce = 0.0
    for zs, zt, y in zip(student, teacher, labels, strict=True):
        ps, pt = softmax(zs, t), softmax(zt, t)
        kl += sum(q * math.log(q / p) for q, p in zip(pt, ps, strict=True))
        ce += -math.log(softmax(zs)[y])
    return kl / len(labels), ce / len(labels)


def kd(student=STUDENT, teacher=TEACHER, labels=LABELS, t: float = 2.0, alpha: float = 0.7) -> torch.Tensor:
    return kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), t, alpha)


def test_kd_loss_closed_form():
    """Two classes, student logits (0, 0), teacher (ln 3, 0), label 0, T = 2, alpha = 1/2."""
    a = math.sqrt(3) / (1 + math.sqrt(3))  # softmax((ln 3) / 2, 0)[0] = √3 / (1 + √3)
    kl = a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))  # KL((a, 1 - a) ‖ (1/2, 1/2))
    expected = 0.5 * 2**2 * kl + 0.5 * math.log(2)  # CE of a uniform student is ln 2
    assert expected == pytest.approx(0.419255, abs=1e-6)  # 2 * 0.036328 + 0.346574
    got = kd([[0.0, 0.0]], [[math.log(3), 0.0]], [0], t=2.0, alpha=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t, alpha", [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9), (0.5, 0.3)])
def test_kd_loss_matches_the_definition(t, alpha):
    kl, ce = by_hand(STUDENT, TEACHER, LABELS, t, alpha)
    assert kd(t=t, alpha=alpha).item() == pytest.approx(alpha * t * t * kl + (1 - alpha) * ce, rel=1e-6)


def test_alpha_zero_is_plain_fine_tuning():
    logits, labels = torch.tensor(STUDENT), torch.tensor(LABELS)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    for t in (1.0, 4.0, 10.0):
        assert torch.equal(kd(t=t, alpha=0.0), plain)
    assert kd(t=4.0, alpha=0.0).item() == pytest.approx(by_hand(STUDENT, TEACHER, LABELS, 1, 0)[1], rel=1e-6)


def test_alpha_one_is_t_squared_times_kl():
    kl, _ = by_hand(STUDENT, TEACHER, LABELS, 2.0, 1.0)
    got = kd(t=2.0, alpha=1.0).item()
    assert got == pytest.approx(4 * kl, rel=1e-6)
    assert got != pytest.approx(kl, rel=1e-2)  # without T² the value would be a quarter of it


def test_t_squared_keeps_the_soft_gradient_about_constant():
    """The softened gradient shrinks as 1/T²; the T² factor undoes it, so T does not reweigh terms."""
    torch.manual_seed(0)
    teacher, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))

    def grad_norm(t: float) -> float:
        student = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
        kd_loss(student, teacher, labels, t, alpha=1.0).backward()
        return student.grad.norm().item()

    ratio = grad_norm(8.0) / grad_norm(4.0)
    assert 0.8 < ratio < 1.25  # without T² it would be about (4 / 8)² = 0.25


def test_kd_loss_gives_no_gradient_to_the_teacher():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    kd_loss(student, teacher, torch.tensor(LABELS), 2.0, 0.5).backward()
    assert student.grad is not None and teacher.grad is None


# --- layer maps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher, student, expected", [
    (12, 4, [2, 5, 8, 11]), (4, 4, [0, 1, 2, 3]), (6, 3, [1, 3, 5]), (4, 2, [1, 3]),
    (12, 6, [1, 3, 5, 7, 9, 11]), (8, 3, [2, 4, 7]), (2, 4, [0, 0, 1, 1]), (1, 3, [0, 0, 0]),
])
def test_uniform_layer_map(teacher, student, expected):
    assert uniform_layer_map(teacher, student) == expected


def test_parse_layer_map_forms():
    assert parse_layer_map(None, 12, 4) == [2, 5, 8, 11]
    assert parse_layer_map([0, 3, 6, 11], 12, 4) == [0, 3, 6, 11]
    assert parse_layer_map({1: 11, 3: 5}, 12, 4) == [None, 11, None, 5]  # unmapped: not distilled


@pytest.mark.parametrize("value, words", [
    ([2, 5, 8, 12], ["teacher layer 12", "0..11", "student layer 3"]),
    ([2, -1, 8, 11], ["teacher layer -1", "0..11"]),
    ([2, 5, 8], ["3 teacher layer(s)", "student has 4"]),
    ({4: 11}, ["student layer 4", "0..3"]),
    ({0: 12}, ["teacher layer 12", "0..11"]),
    ([2, 5.0, 8, 11], ["teacher layer 5.0"]),
    ([True, 5, 8, 11], ["teacher layer True"]),
    ({}, ["maps no student layer"]),
    ("2,5,8,11", ["list of teacher layers"]),
])
def test_parse_layer_map_errors_name_the_index_and_the_range(value, words):
    with pytest.raises(AlambicError) as info:
        parse_layer_map(value, 12, 4)
    for word in words:
        assert word in str(info.value)


# --- the masked losses ---------------------------------------------------------------------------


def test_masked_mse_by_hand_and_ignores_padding():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [99.0, 99.0]]])  # (1, 3, 2); token 2 is padding
    target = torch.tensor([[[0.0, 2.0], [3.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 0 + 0 + 4) / 4)


def rows(*probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs)


def test_attention_losses_by_hand():
    # one sequence, 2 tokens (the second is padding), one head; teacher row (0.75, .25) vs uniform
    student = rows([0.5, 0.5], [0.3, 0.7])[None, None]  # (1, 1, 2, 2)
    teacher = rows([0.75, 0.25], [0.9, 0.1])[None, None]
    mask = torch.tensor([[1, 1]])
    assert attention_mse(student, teacher, mask).item() == pytest.approx((0.0625 * 2 + 0.36 * 2) / 4)
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    kl1 = 0.9 * math.log(0.9 / 0.3) + 0.1 * math.log(0.1 / 0.7)
    assert attention_kl(student, teacher, mask).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-6)


def test_attention_losses_compare_head_averages_when_head_counts_differ():
    teacher = torch.stack([rows([1.0, 0.0], [0.0, 1.0]), rows([0.0, 1.0], [1.0, 0.0])])[None]  # 2 heads
    uniform = torch.full((1, 1, 2, 2), 0.5)  # one head: equal to the teacher's head average
    mask = torch.ones(1, 2)
    assert attention_mse(uniform, teacher, mask).item() == 0
    assert attention_kl(uniform, teacher, mask).item() == pytest.approx(0, abs=1e-6)
    swapped = teacher.flip(1)  # same head count: compared head by head
    assert attention_mse(swapped, teacher, mask).item() > 0.1


def test_attention_kl_stays_finite_where_the_student_has_no_mass():
    student = rows([1.0, 0.0], [1.0, 0.0])[None, None]
    teacher = rows([0.5, 0.5], [0.5, 0.5])[None, None]
    assert torch.isfinite(attention_kl(student, teacher, torch.ones(1, 2)))


# --- the base class ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyOptions:
    scale: float = 1.0


class Toy(DistillLoss):
    """A third party's loss: a learned scale on the logits' squared error."""

    id = "toy"
    needs = frozenset({"logits"})
    Options = ToyOptions

    def __init__(self, teacher_config, student_config, layer_map=None, weight=1.0, **options):
        super().__init__(teacher_config, student_config, layer_map, weight, **options)
        self.gain = torch.nn.Parameter(torch.tensor(self.options.scale))

    def forward(self, student_out, teacher_out, batch):
        return self.weight * self.gain * (student_out.logits - teacher_out.logits).square().mean()


class Deep(DistillLoss):
    """Needs hidden states."""

    id = "deep"
    needs = frozenset({"hidden_states"})


TEACHER_CONFIG = bert_config(Size(layers=12, hidden=64, heads=2, ffn=128), num_labels=3)
STUDENT_CONFIG = bert_config(Size(layers=4, hidden=32, heads=2, ffn=64), num_labels=3)


def toy(**kw) -> Toy:
    return Toy(TEACHER_CONFIG, STUDENT_CONFIG, **kw)


def test_an_instance_is_a_module_with_its_options_and_layer_map():
    loss = toy(weight=2.0, scale=3.0)
    assert isinstance(loss, torch.nn.Module) and type(loss) is Toy
    assert loss.options == ToyOptions(scale=3.0) and loss.weight == 2.0
    assert loss.layer_map == [2, 5, 8, 11] and loss.pairs() == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert [name for name, _ in loss.named_parameters()] == ["gain"]
    assert toy(layer_map={3: 11}).pairs() == [(3, 11)]


def test_the_loss_learns_and_survives_pickle_and_deepcopy():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    loss = toy(scale=3.0)
    value = loss(Out(torch.ones(2, 3, requires_grad=True)), Out(torch.zeros(2, 3)), {})
    value.backward()
    assert value.item() == pytest.approx(3.0) and loss.gain.grad.item() == pytest.approx(1.0)
    for clone in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss)):
        assert type(clone) is type(loss) and clone.gain.item() == 3.0 and clone.options == loss.options


def test_bad_options_and_weights_are_named():
    unknown = r"unknown option 'scal' \(did you mean 'scale'\?\); allowed: scale"
    with pytest.raises(AlambicError, match=unknown):
        toy(scal=2.0)
    with pytest.raises(AlambicError, match="weight must be a number >= 0"):
        toy(weight=-1)
    with pytest.raises(AlambicError, match="teacher layer 12"):
        toy(layer_map=[0, 1, 2, 12])


def test_forward_must_be_defined():
    with pytest.raises(NotImplementedError, match="Deep must define forward"):
        Deep(TEACHER_CONFIG, STUDENT_CONFIG)(None, None, {})


def test_which_teacher_outputs_are_needed():
    assert not needs_online_teacher([Toy]) and not needs_online_teacher([toy()])
    assert needs_online_teacher([Toy, Deep])
    assert output_flags([Toy]) == {"output_hidden_states": False, "output_attentions": False}
    assert output_flags([Toy, Deep]) == {"output_hidden_states": True, "output_attentions": False}
