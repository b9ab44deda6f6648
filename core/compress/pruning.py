"""Pruning: the base class of pruner plugins, their context and result, and the shared measurements.

A pruner is a class registered through ``alambic_register_pruners``. One step of a compression
setting (``PruningStep``: pruner id, amount, options) runs as::

    Pruner = registry["pruners"].get(step.pruner)
    options = Pruner.options(step.amount, **step.options)   # a small frozen dataclass
    result = Pruner.apply(model, options, context)          # a pruned copy: `model` is untouched
    result.model, result.tokenizer, result.report            # report: JSON, params before/after
    weaker = Pruner.half(options)                            # half strength; None = no strength
    validation = result.remap(validation)                    # old ids mapped to the new vocabulary
    # (compress judges a pruned vocabulary on the raw texts tokenized again by result.tokenizer:
    #  compress.in_vocabulary; remap is exact only for rows whose every token was kept)

Structured pruners (heads, layers, FFN width, vocabulary) remove weights physically: the pruned
model has fewer parameters, its config says so (``pruned_heads``, ``num_hidden_layers``,
``intermediate_size``, ``vocab_size``), and ``save_pretrained`` -> ``from_pretrained`` gives it back.

What to remove is measured on a few shuffled validation batches (``PruneContext.batches``):

* **heads and FFN neurons by gates.** A vector of ones multiplies the input of the projection that
  follows them: the attention output's ``dense`` reads the heads' concatenated contexts, the FFN's
  output ``dense`` the activated neurons. Importance = sum over batches of |∂loss/∂gate| (the
  task's cross-entropy), as Michel et al. (2019), "Are Sixteen Heads Really Better than One?" do
  with a head mask; head scores are then L2-normalised per layer, as in their code. A gate on a
  head's context equals transformers' ``head_mask`` (which scales that head's attention
  probabilities, hence its context), but ``head_mask`` needs the same head count in every layer
  (wrong after a first pruning) and makes SDPA attention fall back to eager; a gate needs neither.
  A head whose output-projection slice is zero gets exactly zero importance.
* **layers by ablation**: the mean loss with the layer skipped minus the loss with it.

Both BERT (roberta-l4, tinybert-4l) and MobileBERT (mobilebert-adapter) have the module layout
the structured pruners use: ``base_model.encoder.layer[i]`` with ``attention.prune_heads``, and FFN
blocks of ``intermediate.dense`` -> ``output.dense`` (MobileBERT has 4 per layer: ``ffn[*]`` too).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from alambic.data.dataset import progress_bars
from alambic.errors import AlambicError
from alambic.options import NoOptions, check_names
from alambic.train.loop import MODEL_INPUTS, iterate
from alambic.train.models import params

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "Pruner", "PruneContext", "PruneResult", "as_pairs", "count", "encoder_layers", "ffn_blocks",
    "gate_importance", "head_importance", "heads_per_layer", "layer_importance", "neuron_importance",
    "params",
    "remap_tokens", "supported", "token_counts", "unknown_tokens",
]

Batch = dict[str, torch.Tensor]  # a padded batch from alambic.train.loop.collate, with labels


# --- context and result ---------------------------------------------------------------------


@dataclass
class PruneContext:
    """What a pruner may read besides the model: data for importance, the tokenizer, a device.

    The splits are tokenized ``datasets.Dataset`` s (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``label``, ``length``), as :func:`alambic.data.tokenize.tokenize_data` makes them.
    """

    validation: Dataset | None = None  # importance batches, and the vocabulary check
    train: Dataset | None = None  # the token ids the vocabulary keeps
    tokenizer: Any = None  # the model's tokenizer (vocabulary pruning writes a new one)
    device: str | torch.device | None = None  # where importance passes run; None: the model's
    batches: int = 8  # importance batches (shuffled, so not just the shortest texts)
    batch_size: int = 32
    seed: int = 0

    def importance_batches(self, who: str) -> list[Batch]:
        """The first ``batches`` shuffled batches of ``validation``; an error naming ``who`` if none."""
        if self.validation is None or len(self.validation) == 0:
            raise AlambicError(f"pruner '{who}' measures importance on validation batches: "
                               f"the context has no validation split")
        out = []
        for _, batch in iterate(self.validation, self.batch_size, seed=self.seed, shuffle=True):
            if len(out) == self.batches:
                break
            out.append(batch)
        return out


@dataclass
class PruneResult:
    """A pruned model, its tokenizer (new after vocabulary pruning) and a JSON-serializable report.

    After vocabulary pruning ``token_map[new_id] = old_id``: data tokenized with the old
    tokenizer must go through :meth:`remap` before the new model reads it.
    """

    model: Any
    tokenizer: Any = None
    report: dict[str, Any] = field(default_factory=dict)
    token_map: list[int] | None = None

    def remap(self, dataset: Dataset) -> Dataset:
        """``dataset`` in the pruned model's vocabulary (unchanged when the vocabulary is)."""
        if self.token_map is None:
            return dataset
        return remap_tokens(dataset, self.token_map, self.tokenizer.unk_token_id)

    def metrics(self) -> dict[str, float]:
        """The report's numbers, namespaced ``prune/<key>``."""
        return {f"prune/{k}": v for k, v in self.report.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


# --- the plugin base class ------------------------------------------------------------------


class Pruner:
    """Base of pruner plugins: set ``id``, a docstring, ``Options``; define :meth:`prune`.

    ``Options`` is a frozen dataclass; a field named ``amount`` is the pruner's strength (a
    fraction), which :meth:`half` halves. ``prune`` works in place on the copy :meth:`apply` hands
    it; ``apply`` adds the pruner id, the options and the parameter counts to the report.
    """

    id: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: why a step may not be followed by recovery training (``PruningStep.recover_epochs``); "" = it may
    recovery_refused: ClassVar[str] = ""

    @classmethod
    def options(cls, amount: Any = None, /, **options: Any) -> Any:
        """``Options`` from a step's amount and options; unknown options raise (did-you-mean)."""
        check_names(f"pruner '{cls.id}'", cls.Options, options)
        if amount is not None:
            if "amount" not in {f.name for f in fields(cls.Options)}:
                raise AlambicError(f"pruner '{cls.id}' has no strength: leave amount out")
            if "amount" in options:
                raise AlambicError(f"pruner '{cls.id}': amount given twice (step and options)")
            options["amount"] = amount
        try:
            return cls.Options(**options)
        except TypeError as exc:  # a required field left out
            raise AlambicError(f"pruner '{cls.id}': {exc}") from None

    @classmethod
    def half(cls, options: Any) -> Any | None:
        """The same options at half strength; None when the pruner has no strength."""
        if "amount" not in {f.name for f in fields(options)} or options.amount is None:
            return None
        return replace(options, amount=options.amount / 2)

    @classmethod
    def check(cls, model: Any) -> None:
        """Raise an :class:`AlambicError` when this pruner cannot handle ``model``; by default,
        unless it is a BERT-like encoder (see :func:`supported`)."""
        supported(model, cls.id)

    @classmethod
    def apply(cls, model: Any, options: Any, context: PruneContext | None = None) -> PruneResult:
        """Prune a copy of ``model``; ``model`` itself is left as it was (a guard may retry)."""
        cls.check(model)
        context = context if context is not None else PruneContext()
        home = _device(model)
        pruned = copy.deepcopy(model)
        if context.device is not None:
            pruned.to(context.device)
        before = params(model)
        result = cls.prune(pruned, options, context)
        result.model.to(home)
        report = {"pruner": cls.id, "options": asdict(options), "params_before": before,
                  "params_after": params(result.model), **result.report}
        result.report = report
        if result.tokenizer is None:
            result.tokenizer = context.tokenizer
        return result

    @classmethod
    def prune(cls, model: Any, options: Any, context: PruneContext) -> PruneResult:
        """Prune ``model`` in place (a copy); return it with this pruner's report entries."""
        raise NotImplementedError(f"{cls.__qualname__} must define prune()")


# --- model structure ------------------------------------------------------------------------


def supported(model: Any, who: str = "pruning") -> None:
    """Raise unless ``model`` has the BERT-like layout the structured pruners edit."""
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    try:
        layers = encoder_layers(model)
        for layer in layers:
            assert callable(layer.attention.prune_heads)
            assert all(isinstance(up.dense, torch.nn.Linear) and isinstance(down.dense, torch.nn.Linear)
                       for up, down in ffn_blocks(layer))
    except (AttributeError, AssertionError):
        raise AlambicError(
            f"pruner '{who}' handles BERT-like encoders (bert, mobilebert: base_model.encoder.layer "
            f"with attention.prune_heads and intermediate/output FFN blocks), not {kind}"
        ) from None


def encoder_layers(model: Any) -> torch.nn.ModuleList:
    """The encoder's blocks, ``base_model.encoder.layer``."""
    return model.base_model.encoder.layer


def ffn_blocks(layer: Any) -> list[tuple[Any, Any]]:
    """(intermediate, output) modules of each FFN in a layer; their ``dense`` are up and down."""
    blocks = [(layer.intermediate, layer.output)]
    blocks += [(f.intermediate, f.output) for f in getattr(layer, "ffn", ())]  # MobileBERT
    return blocks


def heads_per_layer(model: Any) -> list[int]:
    """Attention heads left in each layer."""
    return [layer.attention.self.num_attention_heads for layer in encoder_layers(model)]


def count(amount: float, total: int) -> int:
    """How many of ``total`` a fraction ``amount`` removes (rounded half up)."""
    return min(total, math.floor(amount * total + 0.5 + 1e-9))


# --- importance -----------------------------------------------------------------------------


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _loss(model: Any, batch: Batch, device: torch.device) -> torch.Tensor:
    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
    logits = model(**inputs).logits  # (B, C)
    return F.cross_entropy(logits.float(), batch["labels"].to(device))


def gate_importance(model: Any, batches: Sequence[Batch],
                    gates: Sequence[tuple[torch.nn.Module, int, int]]) -> list[torch.Tensor]:
    """Sum over batches of |∂loss/∂g| for gates ``g = ones(width)`` on a module's input.

    Each gate is ``(module, width, repeat)``: the module's first input (B, T, width * repeat) is
    multiplied by ``g.repeat_interleave(repeat)`` (``repeat`` = head size for heads, 1 for neurons).
    The model runs in eval mode; only the gates get gradients.
    """
    if not batches:
        raise AlambicError("importance needs at least one batch (the validation split is empty?)")
    device = _device(model)
    masks = [torch.ones(width, device=device, requires_grad=True) for _, width, _ in gates]
    scores = [torch.zeros(width, dtype=torch.float64) for _, width, _ in gates]

    def gate(mask: torch.Tensor, repeat: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> tuple:
            return (args[0] * mask.repeat_interleave(repeat).to(args[0].dtype),) + args[1:]
        return hook

    handles = [module.register_forward_pre_hook(gate(mask, repeat))
               for (module, _, repeat), mask in zip(gates, masks)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                grads = torch.autograd.grad(_loss(model, batch, device), masks, allow_unused=True)
                for score, grad in zip(scores, grads):
                    if grad is not None:
                        score += grad.detach().abs().double().cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [s.float() for s in scores]


def head_importance(model: Any, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Per layer, one score per remaining head (current order), L2-normalised within the layer."""
    layers = encoder_layers(model)
    gates = [(layer.attention.output.dense, layer.attention.self.num_attention_heads,
              layer.attention.self.attention_head_size) for layer in layers]
    scores = gate_importance(model, batches, gates)
    return [s / (s.norm() + 1e-20) for s in scores]


def neuron_importance(model: Any, batches: Sequence[Batch]) -> list[list[torch.Tensor]]:
    """Per layer, per FFN block, one score per intermediate neuron (|∂loss/∂gate|, not normalised)."""
    blocks = [ffn_blocks(layer) for layer in encoder_layers(model)]
    gates = [(down.dense, down.dense.in_features, 1) for layer in blocks for _, down in layer]
    scores = iter(gate_importance(model, batches, gates))
    return [[next(scores) for _ in layer] for layer in blocks]


@torch.inference_mode()
def _mean_loss(model: Any, batches: Sequence[Batch]) -> float:
    device = _device(model)
    return float(np.mean([float(_loss(model, batch, device)) for batch in batches]))


def layer_importance(model: Any, batches: Sequence[Batch]) -> list[float]:
    """Per layer: mean loss with the layer skipped minus the mean loss with all layers."""
    if not batches:
        raise AlambicError("importance needs at least one batch (the validation split is empty?)")
    encoder = model.base_model.encoder
    layers = encoder.layer
    was_training = model.training
    model.eval()
    try:
        base = _mean_loss(model, batches)
        scores = []
        for i in range(len(layers)):
            encoder.layer = torch.nn.ModuleList(m for j, m in enumerate(layers) if j != i)
            scores.append(_mean_loss(model, batches) - base)
    finally:
        encoder.layer = layers
        model.train(was_training)
    return scores


# --- token ids ------------------------------------------------------------------------------


def _flat_ids(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All ``input_ids`` concatenated, and each row's length (an indices mapping is respected)."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[:].column("input_ids").combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.int64), lengths


def token_counts(dataset: Dataset, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in a tokenized split (vocab_size,)."""
    ids, _ = _flat_ids(dataset)
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise AlambicError(f"token ids outside 0..{vocab_size - 1}: the data was tokenized with "
                           f"another vocabulary than the model's")
    return np.bincount(ids, minlength=vocab_size)


def unknown_tokens(dataset: Dataset, token_map: Sequence[int]) -> tuple[dict[str, int], list[int]]:
    """How many tokens (and rows) of a tokenized split fall outside ``token_map`` (they become
    [UNK]), and the rows that have none."""
    ids, lengths = _flat_ids(dataset)
    kept = np.zeros(max(int(ids.max()) + 1 if len(ids) else 0, max(token_map) + 1), dtype=bool)
    kept[list(token_map)] = True
    unknown = ~kept[ids]
    bad_rows = np.unique(np.repeat(np.arange(len(lengths)), lengths)[unknown])
    stats = {"tokens": int(len(ids)), "tokens_unk": int(unknown.sum()), "rows": int(len(lengths)),
             "rows_with_unk": int(len(bad_rows))}
    return stats, np.setdiff1d(np.arange(len(lengths)), bad_rows).tolist()


def remap_tokens(dataset: Dataset, token_map: Sequence[int], unk_id: int) -> Dataset:
    """``dataset`` with old token ids mapped to new ones (``token_map[new] = old``); ids that
    were dropped become ``unk_id``. Kept in memory: no cache file is written beside the data."""
    kept = np.asarray(token_map, dtype=np.int64)
    lookup = np.full(int(kept.max()) + 2, unk_id, dtype=np.int64)  # last slot: any larger old id
    lookup[kept] = np.arange(len(kept))

    def remap(batch: dict[str, list]) -> dict[str, list]:
        top = len(lookup) - 1
        return {"input_ids": [lookup[np.minimum(r, top)].tolist() for r in batch["input_ids"]]}

    digest = hashlib.sha256(kept.tobytes() + str(unk_id).encode()).hexdigest()[:16]
    with progress_bars(False):
        return dataset.map(remap, batched=True, keep_in_memory=True, features=dataset.features,
                           new_fingerprint=f"{dataset._fingerprint}-vocab-{digest}")


def as_pairs(value: Mapping[Any, Any] | Sequence[Any] | None) -> tuple[tuple[int, float], ...]:
    """A ``{layer: fraction}`` mapping as sorted ``(layer, fraction)`` pairs (hashable, frozen)."""
    if not value:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((int(k), float(v)) for k, v in items))
