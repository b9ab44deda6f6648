"""Distillation losses: the pure functions, the layer map, and the base class of loss plugins.

The logits loss of Hinton et al., with ``p^T = softmax(z / T)``::

    loss = alpha * T² * KL(p_t^T ‖ p_s^T) + (1 - alpha) * CE(z_s, y)

The ``T²`` keeps the soft term's gradient about as large as at ``T = 1`` (the softened
gradient shrinks as ``1 / T²``), so changing ``T`` does not silently reweigh the two terms.

Intermediate losses compare a student layer with the teacher layer the *layer map* assigns to it:
``layer_map[i]`` is the teacher layer (0-based) distilled into student layer ``i`` (None: not
distilled). Layer ``i``'s output is ``hidden_states[i + 1]`` (index 0 is the embedding output, as
transformers returns it) and its attention map is ``attentions[i]``.

A loss plugin subclasses :class:`DistillLoss` and registers through ``alambic_register_distill_losses``;
an instance is a ``torch.nn.Module`` whose parameters (projections) the training loop optimizes
alongside the student's but does not save with it.

torch is imported when this module loads (DistillLoss is a ``torch.nn.Module``): listing plugins
loads it, ray and the deployment runtimes it does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from alambic.errors import AlambicError
from alambic.options import NoOptions, validated

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: what a loss may need from the teacher; "logits" alone can come from the cached teacher logits
NEEDS = frozenset({"logits", "hidden_states", "attentions"})

LayerMap = list[int | None]


# --- the pure functions ---------------------------------------------------------------------


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
    temperature: float, alpha: float,
) -> torch.Tensor:
    """``alpha * T² * KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)``, batch mean.

    ``alpha = 0`` is plain fine-tuning (cross-entropy on the labels); the teacher gets no gradient.
    """
    z_s = student_logits.float()  # (B, C)
    z_t = teacher_logits.detach().float()  # (B, C), possibly from the cache
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(z_s / t, dim=-1), F.softmax(z_t / t, dim=-1), reduction="batchmean")
    hard = F.cross_entropy(z_s, labels)
    return alpha * t * t * soft + (1 - alpha) * hard


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (``mask == 1``) tokens: pred, target (B, T, H), mask (B, T)."""
    m = mask.float()[..., None]  # (B, T, 1)
    squared = (pred.float() - target.detach().float()).square() * m
    return squared.sum() / (m.sum() * pred.shape[-1]).clamp_min(1)


def _same_heads(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, heads, T, T) maps, per head when head counts agree, else averaged over heads."""
    if student.shape[1] != teacher.shape[1]:
        return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    return student, teacher


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of attention maps (B, heads, T, T) over real query x real key pairs; mask (B, T).

    When head counts differ, the head-averaged maps are compared.
    """
    s, t = _same_heads(student.float(), teacher.detach().float())
    m = mask.float()
    pairs = m[:, None, :, None] * m[:, None, None, :]  # (B, 1, T, T)
    return ((s - t).square() * pairs).sum() / (pairs.sum() * s.shape[1]).clamp_min(1)


def attention_kl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """KL(teacher ‖ student) over the key axis, averaged over heads and real query rows.

    Padding keys are left out of each row's sum; probabilities are clamped at ``eps`` before the
    log, so a student row with (near-)zero mass where the teacher has some stays finite. When head
    counts differ, the head-averaged maps (still distributions) are compared.
    """
    s, t = _same_heads(student.float(), teacher.detach().float())
    m = mask.float()
    log_ratio = t.clamp_min(eps).log() - s.clamp_min(eps).log()  # (B, H, T, T)
    rows = (t * log_ratio * m[:, None, None, :]).sum(-1)  # (B, H, T): KL of each query row
    queries = m[:, None, :]  # (B, 1, T)
    return (rows * queries).sum() / (queries.sum() * s.shape[1]).clamp_min(1)


# --- the layer map --------------------------------------------------------------------------


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Student layer ``i`` <- teacher layer ``round((i + 1) * Lt / Ls) - 1`` (halves round up).

    The last student layer always learns from the last teacher layer: 12 -> 4 gives [2, 5, 8, 11].
    """
    if teacher_layers < 1 or student_layers < 1:
        raise AlambicError(
            f"layer map: both models need layers, got teacher {teacher_layers}, student {student_layers}"
        )
    lt, ls = teacher_layers, student_layers
    return [max(0, (2 * (i + 1) * lt + ls) // (2 * ls) - 1) for i in range(ls)]


def parse_layer_map(
    value: Sequence[int | None] | Mapping[int, int] | None, teacher_layers: int, student_layers: int
) -> LayerMap:
    """The teacher layer for each student layer (None = that student layer is not distilled).

    :param value: None (uniform), one teacher layer per student layer, or ``{student: teacher}``
        for some student layers. Indices are 0-based.
    """
    if value is None:
        return list(uniform_layer_map(teacher_layers, student_layers))
    if isinstance(value, Mapping):
        layers: LayerMap = [None] * student_layers
        for student, teacher in value.items():
            _check_index("student", student, student_layers, f"layer_map key {student!r}")
            layers[int(student)] = teacher
    elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise AlambicError(
            f"layer_map must be null (uniform), a list of teacher layers or a mapping "
            f"{{student layer: teacher layer}}, got {value!r}"
        )
    elif len(value) != student_layers:
        raise AlambicError(
            f"layer_map lists {len(value)} teacher layer(s) but the student has {student_layers} "
            f"layer(s): give one teacher layer per student layer (or a mapping for some)"
        )
    else:
        layers = list(value)
    for student, teacher in enumerate(layers):
        if teacher is not None:
            _check_index("teacher", teacher, teacher_layers, f"layer_map for student layer {student}")
    if all(teacher is None for teacher in layers):
        raise AlambicError("layer_map maps no student layer: map at least one (or null for uniform)")
    return [None if t is None else int(t) for t in layers]


def _check_index(model: str, index: Any, layers: int, where: str) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < layers:
        raise AlambicError(
            f"{where}: {model} layer {index!r} is out of range; the {model} has {layers} "
            f"layer(s), valid indices 0..{layers - 1}"
        )


# --- the plugin base class ------------------------------------------------------------------


class DistillLoss(torch.nn.Module):
    """Base of distillation-loss plugins: set ``id``, ``needs``, a docstring, maybe ``Options``.

    Call ``super().__init__(...)`` first, create projections, define
    ``forward(student_out, teacher_out, batch)`` returning the weighted term (a scalar).
    ``student_out``/``teacher_out`` are transformers model outputs (``logits``; ``hidden_states``:
    L + 1 of (B, T, H); ``attentions``: L of (B, heads, T, T)); ``batch`` has at least ``labels``
    (B,) and ``attention_mask`` (B, T).
    """

    id: ClassVar[str] = ""
    #: teacher outputs the loss reads (the student's are the same); a subset of :data:`NEEDS`
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    #: a frozen dataclass of the loss's options, built from the keyword options
    Options: ClassVar[type] = NoOptions

    def __init__(
        self, teacher_config: PretrainedConfig, student_config: PretrainedConfig,
        layer_map: Sequence[int | None] | Mapping[int, int] | None = None, weight: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise AlambicError(f"distill loss '{self.id}': weight must be a number >= 0, got {weight!r}")
        self.weight = float(weight)
        self.options = validated(f"distill loss '{self.id}'", self.Options, options)
        self.layer_map = parse_layer_map(
            layer_map, teacher_config.num_hidden_layers, student_config.num_hidden_layers
        )

    def pairs(self) -> list[tuple[int, int]]:
        """(student layer, teacher layer) for every distilled student layer."""
        return [(s, t) for s, t in enumerate(self.layer_map) if t is not None]

    def forward(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__qualname__} must define forward()")


def projection(student_width: int, teacher_width: int) -> torch.nn.Module:
    """A learned ``Linear(student -> teacher, bias=False)`` when widths differ, else identity."""
    if student_width == teacher_width:
        return torch.nn.Identity()
    return torch.nn.Linear(student_width, teacher_width, bias=False)


def needs_online_teacher(losses: Iterable[DistillLoss | type[DistillLoss]]) -> bool:
    """True when a loss needs more than the teacher's logits (which the cache holds)."""
    return any(loss.needs - {"logits"} for loss in losses)


def output_flags(losses: Iterable[DistillLoss | type[DistillLoss]]) -> dict[str, bool]:
    """Keywords for the student's and the online teacher's forward: what the losses read."""
    needs = frozenset().union(*(loss.needs for loss in losses))
    return {"output_hidden_states": "hidden_states" in needs, "output_attentions": "attentions" in needs}
