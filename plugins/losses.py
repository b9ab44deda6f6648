"""Built-in distillation losses: logits KD, and hidden-state, attention and embedding transfer.

==============  ===========================================================  ================
id              term                                                         teacher needs
==============  ===========================================================  ================
kd              alpha * T² * KL(teacher ‖ student, softened) + (1-alpha) CE  logits (cached)
hidden-mse      MSE of mapped layer outputs, student projected to teacher    hidden states
attention-mse   MSE of mapped attention maps                                 attentions
attention-kl    KL(teacher ‖ student) of mapped attention rows               attentions
embedding-mse   MSE of the embedding outputs, student projected to teacher   hidden states
==============  ===========================================================  ================

Every term is averaged over real (non-padding) tokens and over mapped layers, then multiplied by
the loss's ``weight``. The arithmetic is in :mod:`alambic.train.losses`; these classes only adapt it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

import alambic
from alambic.errors import AlambicError
from alambic.train.losses import (
    DistillLoss,
    attention_kl,
    attention_mse,
    kd_loss,
    masked_mse,
    projection,
)

if TYPE_CHECKING:
    from alambic.registry import KindRegistry


@dataclass(frozen=True)
class KdOptions:
    temperature: float = 4.0  # softens both distributions; > 1 shows the teacher's "dark knowledge"
    alpha: float = 0.7  # weight of the soft term; 1 - alpha weighs cross-entropy on the labels

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise AlambicError(f"distill loss 'kd': temperature must be > 0, got {self.temperature!r}")
        if not 0 <= self.alpha <= 1:
            raise AlambicError(f"distill loss 'kd': alpha must be in [0, 1], got {self.alpha!r}")


class Kd(DistillLoss):
    """Logits distillation: alpha * T² * KL(teacher ‖ student at temperature T) + (1 - alpha) * CE."""

    id = "kd"
    needs = frozenset({"logits"})  # the cached teacher logits are enough
    Options = KdOptions

    def forward(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        o = self.options
        loss = kd_loss(student_out.logits, teacher_out.logits, batch["labels"], o.temperature, o.alpha)
        return self.weight * loss


class HiddenMse(DistillLoss):
    """Hidden-state MSE per mapped layer, through a learned projection when widths differ."""

    id = "hidden-mse"
    needs = frozenset({"hidden_states"})

    def __init__(self, teacher_config: Any, student_config: Any, layer_map: Any = None,
                 weight: float = 1.0, **options: Any) -> None:
        super().__init__(teacher_config, student_config, layer_map, weight, **options)
        widths = (student_config.hidden_size, teacher_config.hidden_size)
        self.projections = torch.nn.ModuleList(projection(*widths) for _ in self.pairs())

    def forward(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        student = _outputs(student_out, "hidden_states", self.id, "student")
        teacher = _outputs(teacher_out, "hidden_states", self.id, "teacher")
        mask = batch["attention_mask"]
        terms = [
            masked_mse(project(student[s + 1]), teacher[t + 1], mask)  # layer i's output is [i + 1]
            for project, (s, t) in zip(self.projections, self.pairs(), strict=True)
        ]
        return self.weight * sum(terms) / len(terms)


class AttentionMse(DistillLoss):
    """Attention-map MSE per mapped layer (head-averaged maps when head counts differ)."""

    id = "attention-mse"
    needs = frozenset({"attentions"})

    def forward(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.weight * _per_layer(self, attention_mse, student_out, teacher_out, batch)


class AttentionKl(DistillLoss):
    """Attention-map KL(teacher ‖ student) over keys (head-averaged maps when head counts differ)."""

    id = "attention-kl"
    needs = frozenset({"attentions"})

    def forward(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.weight * _per_layer(self, attention_kl, student_out, teacher_out, batch)


class EmbeddingMse(DistillLoss):
    """Embedding-output MSE (hidden_states[0]), through a learned projection when widths differ.

    MobileBERT's embedding output is already full width (after its trigram projection).
    """

    id = "embedding-mse"
    needs = frozenset({"hidden_states"})

    def __init__(self, teacher_config: Any, student_config: Any, layer_map: Any = None,
                 weight: float = 1.0, **options: Any) -> None:
        super().__init__(teacher_config, student_config, layer_map, weight, **options)
        self.projection = projection(student_config.hidden_size, teacher_config.hidden_size)

    def forward(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        student = _outputs(student_out, "hidden_states", self.id, "student")[0]
        teacher = _outputs(teacher_out, "hidden_states", self.id, "teacher")[0]
        return self.weight * masked_mse(self.projection(student), teacher, batch["attention_mask"])


def _outputs(out: Any, name: str, loss_id: str, who: str) -> Any:
    value = getattr(out, name, None)
    if value is None:
        raise AlambicError(
            f"distill loss '{loss_id}' needs the {who}'s {name}: run it with output_{name}=True"
        )
    return value


def _per_layer(loss: DistillLoss, fn: Any, student_out: Any, teacher_out: Any,
               batch: Mapping[str, Any]) -> torch.Tensor:
    """``fn(student map, teacher map, mask)`` averaged over the mapped layers' attention maps."""
    student = _outputs(student_out, "attentions", loss.id, "student")
    teacher = _outputs(teacher_out, "attentions", loss.id, "teacher")
    terms = [fn(student[s], teacher[t], batch["attention_mask"]) for s, t in loss.pairs()]
    return sum(terms) / len(terms)


LOSSES: tuple[type[DistillLoss], ...] = (Kd, HiddenMse, AttentionMse, AttentionKl, EmbeddingMse)


@alambic.hookimpl
def alambic_register_distill_losses(register: KindRegistry) -> None:
    for cls in LOSSES:
        register.add(cls)
