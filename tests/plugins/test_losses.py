"""plugins/losses.py: every built-in loss on tiny real teachers and students (BERT and MobileBERT)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import BertForSequenceClassification

from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.train.losses import needs_online_teacher, output_flags
from alambic.train.models import teacher_config

REGISTRY = build_registry()
LOSSES = REGISTRY["distill_losses"]
STUDENTS = REGISTRY["students"]
INTERMEDIATE = ["hidden-mse", "attention-mse", "attention-kl", "embedding-mse"]
TEACHER_SIZE = {"layers": 4, "hidden": 64, "heads": 4, "ffn": 128}
# (student id, size): narrower than the teacher (a projection), or as wide (MobileBERT, 64: identity)
STUDENT_CASES = {
    "roberta-l4": ("roberta-l4", {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64}),
    "tinybert-4l": ("tinybert-4l", {"layers": 2, "hidden": 48, "heads": 3, "ffn": 96}),
    "mobilebert-adapter": ("mobilebert-adapter", {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}),
    "mobilebert-narrow": ("mobilebert-adapter", {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64}),
}
PAD_FROM = 5  # the second sequence's tokens 5.. are padding


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 21128, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, PAD_FROM:] = 0
    ids[1, PAD_FROM:] = 0  # [PAD]
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(teacher_config(3, overrides=TEACHER_SIZE)).eval()


def run(model, batch, grad: bool = True):
    """The model's outputs with everything any loss reads."""
    with torch.set_grad_enabled(grad):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=True, output_attentions=True)


@pytest.fixture(scope="module")
def teacher_out(teacher, batch):
    return run(teacher, batch, grad=False)


def student(case: str):
    student_id, size = STUDENT_CASES[case]
    torch.manual_seed(1)
    return STUDENTS.get(student_id).build(num_labels=3, **size)


def test_registry_lists_the_builtin_losses():
    assert LOSSES.ids() == ["attention-kl", "attention-mse", "embedding-mse", "hidden-mse", "kd"]
    assert LOSSES.get("kd").needs == {"logits"}
    assert all(LOSSES.get(i).needs == {"hidden_states"} for i in ("hidden-mse", "embedding-mse"))
    assert all(LOSSES.get(i).needs == {"attentions"} for i in ("attention-mse", "attention-kl"))


@pytest.mark.parametrize("case", STUDENT_CASES)
@pytest.mark.parametrize("loss_id", LOSSES.ids())
def test_each_loss_on_tiny_models_reaches_the_student_and_its_projection(loss_id, case, teacher, teacher_out,
                                                                         batch):
    model = student(case)
    loss = LOSSES.get(loss_id)(teacher.config, model.config)
    value = loss(run(model, batch), teacher_out, batch)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() >= 0
    value.backward()
    embeddings = model.get_input_embeddings().weight.grad
    assert embeddings is not None and embeddings.abs().sum() > 0, "the gradient reaches the student"
    assert all(p.grad is None for p in teacher.parameters())
    projections = list(loss.parameters())
    widths_differ = model.config.hidden_size != teacher.config.hidden_size
    if loss_id in ("hidden-mse", "embedding-mse") and widths_differ:
        assert projections and all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections)
        assert projections[0].shape == (teacher.config.hidden_size, model.config.hidden_size)
    else:
        assert projections == [], "no projection where widths agree (or nothing to project)"


@pytest.mark.parametrize("loss_id", INTERMEDIATE + ["kd"])
def test_a_copy_of_the_teacher_scores_zero(loss_id, teacher, teacher_out, batch):
    twin = copy.deepcopy(teacher)  # 4 -> 4 layers: the uniform map is the identity, no projection
    options = {"alpha": 1.0} if loss_id == "kd" else {}
    loss = LOSSES.get(loss_id)(teacher.config, twin.config, **options)
    assert loss.layer_map == [0, 1, 2, 3]
    assert loss(run(twin, batch), teacher_out, batch).item() == pytest.approx(0, abs=1e-6)


def perturb_padding(out, generator: torch.Generator) -> SimpleNamespace:
    """Outputs whose padded positions (hidden states; attention rows and columns) are noise."""
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[1, PAD_FROM:] = True

    def hidden(h):
        return torch.where(pad[..., None], torch.randn(h.shape, generator=generator) * 10, h)

    def attention(a):
        cells = pad[:, None, :, None] | pad[:, None, None, :]  # a padded query row or key column
        return torch.where(cells, torch.rand(a.shape, generator=generator), a)

    return SimpleNamespace(logits=out.logits, hidden_states=tuple(map(hidden, out.hidden_states)),
                           attentions=tuple(map(attention, out.attentions)))


@pytest.mark.parametrize("case", ["roberta-l4", "mobilebert-adapter"])
@pytest.mark.parametrize("loss_id", INTERMEDIATE)
def test_padding_does_not_count(loss_id, case, teacher, teacher_out, batch):
    model = student(case)
    loss = LOSSES.get(loss_id)(teacher.config, model.config)
    out = run(model, batch, grad=False)
    generator = torch.Generator().manual_seed(2)
    base = loss(out, teacher_out, batch)
    noisy = loss(perturb_padding(out, generator), perturb_padding(teacher_out, generator), batch)
    assert noisy.item() == pytest.approx(base.item(), rel=1e-6)
    unmasked = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))
    assert loss(perturb_padding(out, generator), teacher_out, unmasked).item() != pytest.approx(base.item())


def test_kd_works_from_cached_teacher_logits_alone(teacher, teacher_out, batch):
    model = student("roberta-l4")
    cached = SimpleNamespace(logits=teacher_out.logits.clone())  # what the logits cache holds
    kd = LOSSES.get("kd")(teacher.config, model.config, temperature=2.0, alpha=0.5)
    assert kd.options.temperature == 2.0 and kd.options.alpha == 0.5
    assert torch.isfinite(kd(run(model, batch), cached, batch))
    with pytest.raises(AlambicError, match="needs the teacher's hidden_states: run it with output_hidden"):
        LOSSES.get("hidden-mse")(teacher.config, model.config)(run(model, batch), cached, batch)
    assert not needs_online_teacher([LOSSES.get("kd")])
    assert needs_online_teacher([LOSSES.get("kd"), LOSSES.get("attention-kl")])
    assert output_flags([LOSSES.get(i) for i in INTERMEDIATE]) == {
        "output_hidden_states": True, "output_attentions": True}


def test_kd_options_and_weight(teacher, teacher_out, batch):
    model = student("roberta-l4")
    kd = LOSSES.get("kd")
    assert (kd(teacher.config, model.config).options.temperature, kd.Options().alpha) == (4.0, 0.7)
    out = run(model, batch, grad=False)
    once = kd(teacher.config, model.config)(out, teacher_out, batch)
    assert kd(teacher.config, model.config, weight=2.5)(out, teacher_out, batch).item() == pytest.approx(
        2.5 * once.item())
    with pytest.raises(AlambicError, match="temperature must be > 0"):
        kd(teacher.config, model.config, temperature=0)
    with pytest.raises(AlambicError, match=r"alpha must be in \[0, 1\]"):
        kd(teacher.config, model.config, alpha=1.5)
    with pytest.raises(AlambicError, match="did you mean 'temperature'"):
        kd(teacher.config, model.config, temprature=2.0)


def test_a_partial_layer_map_distills_only_the_mapped_layers(teacher, teacher_out, batch):
    model = student("roberta-l4")
    hidden = LOSSES.get("hidden-mse")(teacher.config, model.config, layer_map={1: 3})
    assert hidden.pairs() == [(1, 3)] and len(hidden.projections) == 1
    value = hidden(run(model, batch), teacher_out, batch)
    value.backward()
    first_layer = model.bert.encoder.layer[0].output.dense.weight.grad
    second_layer = model.bert.encoder.layer[1].output.dense.weight.grad
    assert second_layer.abs().sum() > 0 and first_layer.abs().sum() > 0  # layer 0 feeds layer 1
    with pytest.raises(AlambicError, match="student layer 2"):
        LOSSES.get("attention-mse")(teacher.config, model.config, layer_map={2: 3})


def test_projections_are_not_part_of_the_student(teacher):
    model = student("roberta-l4")
    loss = LOSSES.get("hidden-mse")(teacher.config, model.config)
    assert list(loss.state_dict()) == ["projections.0.weight", "projections.1.weight"]
    student_params = {id(p) for p in model.parameters()}
    assert not any(id(p) in student_params for p in loss.parameters())
