"""Built-in vocabulary pruner (``vocab``): keep the tokens the training split uses, the special
tokens and a keep-list; the model's word embeddings lose the other rows and a matching tokenizer
is written (BERT WordPiece or SentencePiece Unigram). Physical: the saved model is smaller.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import alambic
from alambic.compress.pruning import PruneContext, Pruner, PruneResult, remap_tokens, token_counts, unknown_tokens
from alambic.errors import AlambicError
from alambic.options import set_fields

if TYPE_CHECKING:
    from alambic.registry import KindRegistry


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
        set_fields(self, keep=(self.keep,) if isinstance(self.keep, str) else tuple(self.keep))
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


@alambic.hookimpl
def alambic_register_pruners(register: KindRegistry) -> None:
    register.add(Vocab)
