"""Built-in pruners: attention heads, whole layers, FFN width, weight magnitude (the vocabulary
pruner, ``vocab``, is :mod:`alambic.plugins.vocabulary`).

==========  ===============================================  ===========================  ========
id          removes                                          by                           physical
==========  ===============================================  ===========================  ========
heads       attention heads (``prune_heads``), >= 1 a layer  |∂loss/∂head gate|           yes
layers      whole encoder layers, >= 1 left                  loss increase when skipped   yes
ffn         FFN intermediate neurons, same count per layer   |∂loss/∂neuron gate|         yes
magnitude   single weights (zeroed, L1), global/per-layer    |weight|                     no
==========  ===============================================  ===========================  ========

Each is a function that prunes a model in place and returns what it removed, plus a thin plugin
class (``Pruner.apply`` copies the model first). Importance is measured as
:mod:`alambic.compress.pruning` describes. ``amount`` is the fraction of what is *left* that a step removes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import alambic
from alambic.compress.pruning import (
    Batch,
    PruneContext,
    Pruner,
    PruneResult,
    as_pairs,
    count,
    encoder_layers,
    ffn_blocks,
    head_importance,
    heads_per_layer,
    layer_importance,
    neuron_importance,
)
from alambic.errors import AlambicError
from alambic.options import set_fields

if TYPE_CHECKING:
    from alambic.registry import KindRegistry


def _fraction(who: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise AlambicError(f"pruner '{who}': {name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _prune_linear(linear: torch.nn.Linear, keep: torch.Tensor, dim: int) -> torch.nn.Linear:
    """``linear`` keeping only rows (dim 0: outputs) or columns (dim 1: inputs) ``keep``."""
    from transformers.pytorch_utils import prune_linear_layer

    return prune_linear_layer(linear, keep, dim=dim).to(linear.weight.dtype)


# --- heads ----------------------------------------------------------------------------------


def choose_heads(scores: Sequence[torch.Tensor], amount: float | Mapping[int, float]) -> dict[int, list[int]]:
    """Positions (in each layer's current order) of the heads to remove, the least important first.

    A fraction ranks all heads together (scores are normalised per layer); ``{layer: fraction}``
    ranks inside each listed layer. Every layer keeps at least one head.
    """
    left = [len(s) for s in scores]
    chosen: dict[int, list[int]] = {}
    if isinstance(amount, Mapping):
        for layer, fraction in amount.items():
            n = min(count(fraction, left[layer]), left[layer] - 1)
            chosen[layer] = scores[layer].argsort()[:n].tolist() if n > 0 else []
    else:
        ranked = sorted((float(s), layer, pos) for layer, ss in enumerate(scores) for pos, s in enumerate(ss))
        budget = count(amount, sum(left))
        for _, layer, pos in ranked:
            if budget == 0:
                break
            if left[layer] > 1:
                chosen.setdefault(layer, []).append(pos)
                left[layer] -= 1
                budget -= 1
    return {layer: sorted(pos) for layer, pos in chosen.items() if pos}


def prune_heads_by_importance(model: Any, amount: float | Mapping[int, float], batches: Sequence[Batch],
                              scores: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Remove the least important attention heads physically (``model.prune_heads``), in place.

    :param amount: a fraction of all remaining heads, or ``{layer: fraction}`` for some layers.
    :param scores: per-layer head importance; measured on ``batches`` when None.
    :return: heads per layer before and after, and the removed heads (original indices, as
        ``config.pruned_heads`` records them, so the saved model reloads pruned).
    """
    layers = encoder_layers(model)
    if isinstance(amount, Mapping):
        for layer in amount:
            if not 0 <= layer < len(layers):
                raise AlambicError(f"pruner 'heads': per_layer names layer {layer}; the model has "
                                   f"{len(layers)} layer(s), valid 0..{len(layers) - 1}")
    scores = list(scores) if scores is not None else head_importance(model, batches)
    before = heads_per_layer(model)
    removed: dict[int, list[int]] = {}
    for layer, positions in choose_heads(scores, amount).items():
        attention = layers[layer].attention
        alive = sorted(set(range(model.config.num_attention_heads)) - set(attention.pruned_heads))
        removed[layer] = [alive[p] for p in positions]  # original head indices
    model.prune_heads(removed)
    return {
        "heads_before": before, "heads_after": heads_per_layer(model),
        "removed_heads": {str(k): v for k, v in sorted(removed.items())},
        "head_importance": [[round(float(s), 4) for s in layer] for layer in scores],
    }


@dataclass(frozen=True)
class HeadsOptions:
    amount: float | None = None  # fraction of all remaining heads, ranked across layers
    per_layer: tuple[tuple[int, float], ...] = ()  # or {layer: fraction} for some layers

    def __post_init__(self) -> None:
        set_fields(self, per_layer=as_pairs(self.per_layer))
        if (self.amount is None) == (not self.per_layer):
            raise AlambicError("pruner 'heads': give amount (a fraction) or per_layer "
                               "({layer: fraction}), exactly one of them")
        if self.amount is not None:
            set_fields(self, amount=_fraction("heads", "amount", self.amount))
        for _, fraction in self.per_layer:
            _fraction("heads", "per_layer fraction", fraction)


class Heads(Pruner):
    """Attention heads by gradient importance (Michel et al. 2019), removed with prune_heads."""

    id = "heads"
    Options = HeadsOptions

    @classmethod
    def options(cls, amount: Any = None, /, **options: Any) -> HeadsOptions:
        if isinstance(amount, Mapping):  # a per-layer amount
            return super().options(None, per_layer=amount, **options)
        return super().options(amount, **options)

    @classmethod
    def half(cls, options: HeadsOptions) -> HeadsOptions:
        if options.amount is not None:
            return replace(options, amount=options.amount / 2)
        return replace(options, per_layer=tuple((k, v / 2) for k, v in options.per_layer))

    @classmethod
    def prune(cls, model: Any, options: HeadsOptions, context: PruneContext) -> PruneResult:
        amount = options.amount if options.amount is not None else dict(options.per_layer)
        report = prune_heads_by_importance(model, amount, context.importance_batches(cls.id))
        return PruneResult(model, report=report)


# --- layers ---------------------------------------------------------------------------------


def choose_layers(scores: Sequence[float], amount: float) -> list[int]:
    """The least important ``amount`` of the layers (at least one layer is kept), sorted."""
    n = min(count(amount, len(scores)), len(scores) - 1)
    return sorted(int(i) for i in np.argsort(scores, kind="stable")[:n])


def drop_layers(model: Any, layers: Iterable[int]) -> dict[str, Any]:
    """Remove encoder ``layers`` (0-based) in place and re-index what refers to layer numbers.

    The encoder's ``ModuleList`` is rebuilt from the kept layers, ``config.num_hidden_layers`` set,
    and ``config.pruned_heads`` re-keyed to the new indices (``from_pretrained`` prunes heads by
    layer number before loading weights, so stale keys would prune the wrong layer or fail).
    """
    encoder = model.base_model.encoder
    total = len(encoder.layer)
    drop = sorted(set(int(i) for i in layers))
    bad = [i for i in drop if not 0 <= i < total]
    if bad:
        raise AlambicError(f"pruner 'layers': layer(s) {bad} out of range; the model has {total} "
                           f"layer(s), valid 0..{total - 1}")
    if len(drop) >= total:
        raise AlambicError(f"pruner 'layers': dropping {drop} would leave no layer; keep at least one")
    kept = [i for i in range(total) if i not in drop]
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in kept)
    for new, layer in enumerate(encoder.layer):  # the cache index each attention uses
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config
    config.num_hidden_layers = len(kept)
    old_heads = {int(k): v for k, v in (config.pruned_heads or {}).items()}
    config.pruned_heads = {new: old_heads[old] for new, old in enumerate(kept) if old_heads.get(old)}
    return {"layers_before": total, "layers_after": len(kept), "dropped_layers": drop, "kept_layers": kept}


@dataclass(frozen=True)
class LayersOptions:
    amount: float | None = None  # fraction of the layers, the least important (loss when skipped)
    layers: tuple[int, ...] = ()  # or exactly these layers (0-based)

    def __post_init__(self) -> None:
        set_fields(self, layers=tuple(int(i) for i in self.layers))
        if (self.amount is None) == (not self.layers):
            raise AlambicError("pruner 'layers': give amount (a fraction) or layers (a list of "
                               "layer indices to drop), exactly one of them")
        if self.amount is not None:
            set_fields(self, amount=_fraction("layers", "amount", self.amount))


class Layers(Pruner):
    """Whole encoder layers, the least important (loss when skipped) or a given list."""

    id = "layers"
    Options = LayersOptions

    @classmethod
    def half(cls, options: LayersOptions) -> LayersOptions | None:
        """Half the amount; for a list, its first half (None when that drops nothing)."""
        if options.amount is not None:
            return replace(options, amount=options.amount / 2)
        first = options.layers[: len(options.layers) // 2]
        return replace(options, layers=first) if first else None

    @classmethod
    def prune(cls, model: Any, options: LayersOptions, context: PruneContext) -> PruneResult:
        report: dict[str, Any] = {}
        drop: Sequence[int] = options.layers
        if options.amount is not None:
            scores = layer_importance(model, context.importance_batches(cls.id))
            drop = choose_layers(scores, options.amount)
            report["layer_importance"] = [round(s, 5) for s in scores]
        return PruneResult(model, report=drop_layers(model, drop) | report)


# --- ffn ------------------------------------------------------------------------------------


def prune_ffn(model: Any, amount: float, batches: Sequence[Batch],
              scores: Sequence[Sequence[torch.Tensor]] | None = None) -> dict[str, Any]:
    """Remove the least important ``amount`` of each FFN's intermediate neurons, in place.

    Importance is |∂loss/∂gate| per neuron (a first-order estimate of the loss change when the
    neuron is removed), ranked inside each FFN. Every FFN keeps the *same* number of neurons:
    BERT's config has one ``intermediate_size``, and ``from_pretrained`` builds every layer at that
    width, so layers of different widths would not reload. ``intermediate.dense`` loses rows,
    ``output.dense`` the matching columns.
    """
    width = model.config.intermediate_size
    blocks = [ffn_blocks(layer) for layer in encoder_layers(model)]
    widths = {down.dense.in_features for layer in blocks for _, down in layer}
    if widths != {width}:
        raise AlambicError(f"pruner 'ffn': FFN widths {sorted(widths)} differ from the config's "
                           f"intermediate_size {width}")
    keep = max(1, width - count(amount, width))
    scores = scores if scores is not None else neuron_importance(model, batches)
    for layer, layer_scores in zip(blocks, scores):
        for (up, down), score in zip(layer, layer_scores):
            index = torch.topk(score, keep).indices.sort().values
            up.dense = _prune_linear(up.dense, index, dim=0)
            down.dense = _prune_linear(down.dense, index, dim=1)
    model.config.intermediate_size = keep
    return {"intermediate_before": width, "intermediate_after": keep,
            "ffn_blocks": sum(len(layer) for layer in blocks)}


@dataclass(frozen=True)
class FfnOptions:
    amount: float  # fraction of each FFN's neurons removed (the same count in every layer)

    def __post_init__(self) -> None:
        set_fields(self, amount=_fraction("ffn", "amount", self.amount))


class Ffn(Pruner):
    """FFN intermediate neurons by gradient importance, the same count removed in every layer."""

    id = "ffn"
    Options = FfnOptions

    @classmethod
    def prune(cls, model: Any, options: FfnOptions, context: PruneContext) -> PruneResult:
        report = prune_ffn(model, options.amount, context.importance_batches(cls.id))
        return PruneResult(model, report=report)


# --- magnitude ------------------------------------------------------------------------------


def magnitude_prune(model: Any, amount: float, scope: str = "global",
                    embeddings: bool = False) -> dict[str, Any]:
    """Zero the smallest-|w| ``amount`` of the encoder's Linear weights (L1 unstructured), in place.

    ``scope="global"`` ranks all those weights together, ``"per-layer"`` each matrix on its own.
    The masks are made permanent (``prune.remove``): no ``weight_orig`` or mask is left and the
    parameter count is unchanged. The weights stay dense, so the saved size and the latency
    only drop with a sparse-aware runtime or with compression (zeros compress well); measuring
    the result shows what really happens.
    """
    from torch.nn.utils import prune

    targets = [(m, "weight") for m in model.base_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    if embeddings:
        targets.append((model.get_input_embeddings(), "weight"))
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    pruned = sum(m.weight.numel() for m, _ in targets)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(p.numel() for p in model.parameters())
    zeros_all = sum(int((p == 0).sum()) for p in model.parameters())
    return {"sparsity": round(zeros / max(pruned, 1), 6), "sparsity_model": round(zeros_all / total, 6),
            "weights_pruned_over": pruned, "params_nonzero": total - zeros_all,
            "note": "dense storage: size and latency drop only with a sparse-aware runtime or compression"}


@dataclass(frozen=True)
class MagnitudeOptions:
    amount: float  # fraction of the weights zeroed
    scope: str = "global"  # global: one ranking for all matrices; per-layer: each matrix alone
    embeddings: bool = False  # also the word embeddings (most of a small student's weights)

    def __post_init__(self) -> None:
        set_fields(self, amount=_fraction("magnitude", "amount", self.amount))
        if self.scope not in ("global", "per-layer"):
            raise AlambicError(f"pruner 'magnitude': scope must be global or per-layer, got {self.scope!r}")


class Magnitude(Pruner):
    """L1 unstructured weight pruning, permanent; sparsity only (sizes drop with sparse runtimes)."""

    id = "magnitude"
    Options = MagnitudeOptions
    recovery_refused = "training would regrow the zeroed weights"

    @classmethod
    def check(cls, model: Any) -> None:
        if not hasattr(getattr(model, "base_model", None), "encoder"):
            raise AlambicError(f"pruner 'magnitude' prunes base_model.encoder's Linear layers; "
                               f"{type(model).__name__} has none")

    @classmethod
    def prune(cls, model: Any, options: MagnitudeOptions, context: PruneContext) -> PruneResult:
        report = magnitude_prune(model, options.amount, options.scope, options.embeddings)
        return PruneResult(model, report=report)


PRUNERS: tuple[type[Pruner], ...] = (Heads, Layers, Ffn, Magnitude)


@alambic.hookimpl
def alambic_register_pruners(register: KindRegistry) -> None:
    for cls in PRUNERS:
        register.add(cls)
