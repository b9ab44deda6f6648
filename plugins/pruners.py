"""Built-in pruners: attention heads, whole layers, FFN width, weight magnitude, vocabulary.

==========  ===============================================  ===========================  ========
id          removes                                          by                           physical
==========  ===============================================  ===========================  ========
heads       attention heads (``prune_heads``), >= 1 a layer  |∂loss/∂head gate|           yes
layers      whole encoder layers, >= 1 left                  loss increase when skipped   yes
ffn         FFN intermediate neurons, same count per layer   |∂loss/∂neuron gate|         yes
magnitude   single weights (zeroed, L1), global/per-layer    |weight|                     no
vocab       tokens absent from the training split            token ids of the train split yes
==========  ===============================================  ===========================  ========

Each is a function that prunes a model in place and returns what it removed, plus a thin plugin
class (``Pruner.apply`` copies the model first). Importance is measured as
:mod:`alambic.compress.pruning` describes. ``amount`` is the fraction of what is *left* that a step removes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import alambic
from alambic.errors import AlambicError
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
    remap_tokens,
    token_counts,
    unknown_tokens,
)

if TYPE_CHECKING:
    from alambic.registry import KindRegistry


def _fraction(who: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise AlambicError(f"pruner '{who}': {name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _set(options: Any, **values: Any) -> None:
    for key, value in values.items():  # normalise a frozen dataclass's fields in __post_init__
        object.__setattr__(options, key, value)


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
        _set(self, per_layer=as_pairs(self.per_layer))
        if (self.amount is None) == (not self.per_layer):
            raise AlambicError("pruner 'heads': give amount (a fraction) or per_layer "
                               "({layer: fraction}), exactly one of them")
        if self.amount is not None:
            _set(self, amount=_fraction("heads", "amount", self.amount))
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
        _set(self, layers=tuple(int(i) for i in self.layers))
        if (self.amount is None) == (not self.layers):
            raise AlambicError("pruner 'layers': give amount (a fraction) or layers (a list of "
                               "layer indices to drop), exactly one of them")
        if self.amount is not None:
            _set(self, amount=_fraction("layers", "amount", self.amount))


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
        _set(self, amount=_fraction("ffn", "amount", self.amount))


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
        _set(self, amount=_fraction("magnitude", "amount", self.amount))
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


# --- vocab ----------------------------------------------------------------------------------


def pruned_tokenizer(tokenizer: Any, tokens: Sequence[str]) -> Any:
    """A tokenizer of the same kind over ``tokens`` (in order: new id i is ``tokens[i]``) that
    normalises and pre-tokenizes as ``tokenizer`` does. Two kinds:

    * BERT WordPiece (``BertTokenizerFast``): a text whose old tokens are all kept tokenizes to the
      same tokens: greedy longest-match finds the same pieces, since every longer piece would have
      been in the old vocabulary too; a word with a dropped piece becomes one [UNK], as any unknown
      word does.
    * SentencePiece Unigram (a fast tokenizer whose backend model is ``Unigram``, e.g. XLM-R's):
      the same tokenizer JSON with the vocabulary cut to ``tokens``, each with its old score, and
      the ids of ``unk_id``, the added tokens and the post-processor's specials looked up again.
      A text whose old pieces are all kept segments the same way: Viterbi picks the best-scoring
      path through the pieces that match; over a subset of the pieces no path can beat the full
      vocabulary's best (each maps to a full-vocabulary path scoring at least as much), and that
      best path, all kept, is still there. This needs the score of an unknown character (an unk
      edge, where no kept one-character piece matches) to stay ``min(score) - 10`` of the *full*
      vocabulary, below any piece it replaces: the backend takes the minimum over the vocabulary
      it has, so the unk piece's own entry carries the full minimum when the kept ones are all
      higher (the entry only scores a literal ``<unk>`` that reaches the model, and the special
      token is split off before it). A text with a dropped piece segments differently: into
      smaller kept pieces, or unk where no kept piece covers a character.
    """
    from transformers import BertTokenizerFast

    if isinstance(tokenizer, BertTokenizerFast):
        norm = json.loads(tokenizer.backend_tokenizer.normalizer.__getstate__())
        with tempfile.TemporaryDirectory() as folder:
            vocab = Path(folder) / "vocab.txt"
            vocab.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
            return BertTokenizerFast(
                vocab_file=str(vocab), do_lower_case=norm["lowercase"], strip_accents=norm["strip_accents"],
                tokenize_chinese_chars=norm["handle_chinese_chars"], model_max_length=tokenizer.model_max_length,
                unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
                cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
            )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if spec.get("model", {}).get("type") != "Unigram":
        raise AlambicError(f"pruner 'vocab' writes BERT WordPiece tokenizers (BertTokenizerFast) and "
                           f"SentencePiece Unigram fast tokenizers, not {type(tokenizer).__name__}")
    return _pruned_unigram(tokenizer, spec, list(tokens))


def _pruned_unigram(tokenizer: Any, spec: dict[str, Any], tokens: list[str]) -> Any:
    """The Unigram half of :func:`pruned_tokenizer`; ``spec`` is the backend's JSON."""
    from tokenizers import Tokenizer

    index = {t: i for i, t in enumerate(tokens)}
    model, scores = spec["model"], {piece: score for piece, score in spec["model"]["vocab"]}
    pieces = [[t, scores[t]] for t in tokens if t in scores]
    # the model's pieces take ids 0.. and the added-only tokens follow, so both must come in that order
    if [t for t, _ in pieces] != tokens[: len(pieces)]:
        raise AlambicError("pruner 'vocab': the kept tokens put an added token before a vocabulary "
                           "piece; the Unigram ids would shift")
    if model["unk_id"] is not None:
        unk = model["vocab"][model["unk_id"]][0]
        if unk not in index:
            raise AlambicError(f"pruner 'vocab': the unknown piece {unk!r} must be kept")
        model["unk_id"] = index[unk]
        if min(s for _, s in pieces) > min(scores.values()):  # keep the unknown character's score
            pieces[index[unk]][1] = min(scores.values())
    model["vocab"] = pieces
    spec["added_tokens"] = [a | {"id": index[a["content"]]} for a in spec["added_tokens"]
                            if a["content"] in index]
    try:
        spec["post_processor"] = _remap_special_ids(spec["post_processor"], index)
        if spec.get("padding"):
            spec["padding"]["pad_id"] = index[spec["padding"]["pad_token"]]
    except KeyError as missing:
        raise AlambicError(f"pruner 'vocab': the tokenizer adds {missing}, which is not kept") from None
    new = type(tokenizer)(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
        model_input_names=tokenizer.model_input_names,
        clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
        **tokenizer.special_tokens_map_extended,
    )
    if new.get_vocab() != index:
        raise AlambicError("pruner 'vocab': the pruned Unigram tokenizer's ids do not follow the kept "
                           "tokens (a special token missing from them?)")
    return new


def _remap_special_ids(node: Any, index: Mapping[str, int]) -> Any:
    """A post-processor's JSON with the special tokens' ids looked up in ``index``: ``[token, id]``
    pairs (RobertaProcessing, BertProcessing), ``tokens``/``ids`` lists (TemplateProcessing)."""
    if isinstance(node, list):
        return [_remap_special_ids(n, index) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _remap_special_ids(v, index) for k, v in node.items()}
    for key in ("sep", "cls"):
        if isinstance(node.get(key), list):
            node[key] = [node[key][0], index[node[key][0]]]
    if isinstance(node.get("tokens"), list) and isinstance(node.get("ids"), list):
        node["ids"] = [index[t] for t in node["tokens"]]
    return node


def kept_tokens(tokenizer: Any, counts: np.ndarray, keep: Iterable[str] = (),
                min_count: int = 1) -> tuple[list[int], list[str]]:
    """Ids of the tokens seen ``min_count`` times (``counts``: per token id, from the training
    split), the special tokens and ``keep``, in the old order (so [PAD] stays 0); and the
    ``keep`` tokens the vocabulary does not have."""
    index = tokenizer.get_vocab()
    keep = list(keep)
    kept = np.asarray(counts) >= min_count
    kept[tokenizer.all_special_ids] = True
    kept[[index[t] for t in keep if t in index]] = True
    return np.flatnonzero(kept).tolist(), [t for t in keep if t not in index]


def prune_vocab(model: Any, tokenizer: Any, token_map: Sequence[int]) -> Any:
    """Keep only the tokens ``token_map`` lists (``token_map[new_id] = old_id``), in place: the
    word embeddings keep those rows, ``config.vocab_size`` and ``pad_token_id`` follow. Rows past
    the tokenizer's last id, which no text reaches, go too (multilingual-e5-small has 250,037 rows
    for XLM-R's 250,002 pieces).

    :return: the matching tokenizer (see :func:`pruned_tokenizer`).
    """
    embeddings = model.get_input_embeddings()
    size, n = embeddings.num_embeddings, len(tokenizer)
    if n > size:
        raise AlambicError(f"pruner 'vocab': the tokenizer has {n} tokens but the model's embeddings "
                           f"only {size}: they must agree")
    if model.get_output_embeddings() is not None:
        raise AlambicError("pruner 'vocab' handles classifiers; this model has an output vocabulary")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    if len(set(tokens)) != n:
        raise AlambicError("pruner 'vocab': the vocabulary has duplicate tokens; ids would shift")
    token_map = list(token_map)
    if max(token_map) >= n:
        raise AlambicError(f"pruner 'vocab': token id {max(token_map)} kept, but the tokenizer has "
                           f"{n} tokens")
    new_tokenizer = pruned_tokenizer(tokenizer, [tokens[i] for i in token_map])  # may refuse: first
    new = torch.nn.Embedding(len(token_map), embeddings.embedding_dim, device=embeddings.weight.device,
                             dtype=embeddings.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(embeddings.weight[token_map])
    new.padding_idx = token_map.index(tokenizer.pad_token_id)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(token_map)
    model.config.pad_token_id = new.padding_idx
    return new_tokenizer


@dataclass(frozen=True)
class VocabOptions:
    keep: tuple[str, ...] = ()  # tokens kept even if the training split never uses them
    min_count: int = 1  # occurrences in the training split a token needs to be kept

    def __post_init__(self) -> None:
        _set(self, keep=(self.keep,) if isinstance(self.keep, str) else tuple(self.keep))
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise AlambicError(f"pruner 'vocab': min_count must be an integer >= 1, got {self.min_count!r}")


class Vocab(Pruner):
    """Vocabulary: keep the training split's tokens (+ specials, keep-list); a matching tokenizer."""

    id = "vocab"
    Options = VocabOptions

    @classmethod
    def check(cls, model: Any) -> None:
        if not callable(getattr(model, "get_input_embeddings", None)):
            raise AlambicError(f"pruner 'vocab' needs a transformers model, not {type(model).__name__}")

    @classmethod
    def prune(cls, model: Any, options: VocabOptions, context: PruneContext) -> PruneResult:
        """Prune, then check on validation rows whose tokens are all kept that the new model on
        remapped ids gives the old model's logits (raises if not), and count the new [UNK]s."""
        from alambic.train.loop import predict

        if context.train is None or context.tokenizer is None:
            raise AlambicError("pruner 'vocab' needs the tokenized training split and the tokenizer")
        counts = token_counts(context.train, model.get_input_embeddings().num_embeddings)
        token_map, missing = kept_tokens(context.tokenizer, counts, options.keep, options.min_count)
        report: dict[str, Any] = {"vocab_before": len(counts), "vocab_after": len(token_map),
                                  "keep_list_unknown": missing[:20]}
        reference = None
        if context.validation is not None and len(context.validation):
            stats, clean = unknown_tokens(context.validation, token_map)
            report |= {f"validation_{k}": v for k, v in stats.items()}
            if clean:
                sample = context.validation.select(clean[: context.batches * context.batch_size])
                reference = predict(model, sample)[1]
        tokenizer = prune_vocab(model, context.tokenizer, token_map)
        if reference is not None:
            logits = predict(model, remap_tokens(sample, token_map, tokenizer.unk_token_id))[1]
            report["check_rows"] = len(sample)
            report["check_max_abs_logit_diff"] = diff = float(np.abs(reference - logits).max())
            if diff > 1e-4:
                raise AlambicError(f"pruner 'vocab': the pruned model's logits differ from the "
                                   f"original's by {diff:.3g} on validation rows whose tokens are all kept")
        return PruneResult(model, tokenizer=tokenizer, report=report, token_map=token_map)


PRUNERS: tuple[type[Pruner], ...] = (Heads, Layers, Ffn, Magnitude, Vocab)


@alambic.hookimpl
def alambic_register_pruners(register: KindRegistry) -> None:
    for cls in PRUNERS:
        register.add(cls)
