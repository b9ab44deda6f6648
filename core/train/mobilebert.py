"""The MobileBERT adapter's start: transfer what transfers from a trained roberta-l4, then layer by layer.

MobileBERT (Sun et al., 2020) trains a bottlenecked student from a teacher of the same inter-block
width by *progressive knowledge transfer*: one layer at a time, the student layer learns the
teacher layer's output (feature-map transfer) and attention maps (attention transfer) while the
layers below stay frozen. Here the "teacher" of that stage is the donor, a roberta-l4 student
already distilled on the task (both 512 wide at full size); the logits KD from the real teacher
follows in the regular distillation (``distill.distill_worker``)::

    report = init_from_donor(adapter, donor)           # embeddings (truncated SVD), pooler, classifier
    records = layerwise_transfer(adapter, donor, train, context)   # layer 0, then 1, ... (frozen below)
    # ... then distill_worker distills the adapter from the teacher's logits

What transfers, and what cannot (full size: donor 512 wide; adapter 512 wide, embeddings 128):

======================================  ==========================================================
adapter                                 from the donor
======================================  ==========================================================
word_embeddings (V, 128)                ``U_k S_k`` of the truncated SVD ``W ≈ U_k S_k V_kᵀ`` (k = 128)
embedding_transformation (512, 3·128)   the current-token slot ``= V_k``, the two neighbour slots
                                        and the bias zero: ``transform(e_t) = (U_k S_k V_kᵀ)[t]``
position / token_type embeddings        copied (same width)
embeddings.LayerNorm (NoNorm)           identity: the donor's LayerNorm has no elementwise equivalent
pooler.dense, classifier                copied (same shapes)
the encoder layers                      nothing: different shapes; learned by layerwise_transfer
======================================  ==========================================================

torch is imported at the top: this module is imported only by ``MobileBertAdapter.prepare_from_donor``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from alambic.data.tokenize import MODEL_INPUTS
from alambic.errors import AlambicError
from alambic.train.loop import TrainSettings, average_gradients, iterate, make_optimizer
from alambic.train.losses import attention_kl, masked_mse, projection, uniform_layer_map

log = logging.getLogger(__name__)


# --- initialisation -------------------------------------------------------------------------


@torch.no_grad()
def init_from_donor(adapter: Any, donor: Any) -> dict[str, Any]:
    """Copy into ``adapter`` (MobileBERT) what transfers from ``donor`` (a BERT classifier).

    The word embeddings ``W`` (V, H) are factored by a truncated SVD of rank k = the adapter's
    ``embedding_size``: the adapter's table becomes ``U_k S_k`` (V, k) and the current-token slot
    of ``embedding_transformation`` becomes ``V_k`` (trigram input concatenates [next, current,
    previous] token vectors), neighbour slots and bias zero. So before position and segment
    embeddings the adapter's embedding output is exactly the rank-k approximation of ``W``; the
    position and segment tables are copied, so the sum is ``W_k[t] + P[pos] + T[type]``.

    The donor's embedding LayerNorm does not transfer: MobileBERT's NoNorm is ``x * w + b``,
    elementwise, while LayerNorm first centres and scales each token's vector by its own statistics;
    copying gamma/beta into NoNorm would not reproduce it, so NoNorm is set to the identity and the
    layer-0 stage of :func:`layerwise_transfer` (which trains the embeddings) adapts it.

    Pieces whose widths differ (reduced sizes with another ``hidden``) are left as initialised and
    listed under ``skipped``. A different vocabulary or label count raises :class:`AlambicError`.

    :returns: ``transferred`` {adapter parameter: shape}, ``skipped`` {piece: why}, and the SVD's
        ``svd_rank``, ``svd_energy_kept`` (share of ``sum(s²)`` kept) and ``svd_relative_error``
        (``‖W - W_k‖_F / ‖W‖_F``).
    """
    a_cfg, a_base, d_base = adapter.config, adapter.base_model, donor.base_model
    a_emb, d_emb = a_base.embeddings, d_base.embeddings
    words = d_emb.word_embeddings.weight.detach().to("cpu", torch.float64)  # (V, Hd)
    vocab, donor_width = words.shape
    if a_emb.word_embeddings.num_embeddings != vocab:
        raise AlambicError(
            f"donor transfer: the donor's vocabulary has {vocab} tokens but the adapter's has "
            f"{a_emb.word_embeddings.num_embeddings}; both must be built for the same tokenizer"
        )
    if adapter.config.num_labels != donor.config.num_labels:
        raise AlambicError(
            f"donor transfer: the donor classifies {donor.config.num_labels} labels but the adapter "
            f"{adapter.config.num_labels}; both must be trained on the same data"
        )
    transferred: dict[str, tuple[int, ...]] = {}
    skipped: dict[str, str] = {}

    def put(name: str, target: torch.Tensor, value: torch.Tensor) -> None:
        target.copy_(value.to(target.dtype))
        transferred[name] = tuple(target.shape)

    # word embeddings: truncated SVD to the adapter's embedding width
    u, s, vh = torch.linalg.svd(words, full_matrices=False)  # (V, r), (r,), (r, Hd); r = min(V, Hd)
    width = a_cfg.embedding_size
    k = min(width, s.numel())
    table = torch.zeros(vocab, width, dtype=torch.float64)
    table[:, :k] = u[:, :k] * s[:k]  # U_k S_k (V, E)
    energy = float(s[:k].square().sum() / s.square().sum().clamp_min(1e-300))

    transform = a_emb.embedding_transformation  # Linear(slots * E -> H)
    if a_cfg.trigram_input or width != a_cfg.hidden_size:  # narrow vectors, then the transformation
        put("embeddings.word_embeddings.weight", a_emb.word_embeddings.weight, table)
        slots = 3 if a_cfg.trigram_input else 1
        current = 1 if a_cfg.trigram_input else 0  # MobileBertEmbeddings: cat([next, current, previous])
        if transform.out_features == donor_width:
            weight = torch.zeros(transform.out_features, slots * width, dtype=torch.float64)  # (H, slots*E)
            weight[:, current * width:current * width + k] = vh[:k].T  # V_k (H, k)
            put("embeddings.embedding_transformation.weight", transform.weight, weight)
            put("embeddings.embedding_transformation.bias", transform.bias, torch.zeros(transform.out_features))
        else:
            skipped["embeddings.embedding_transformation"] = (
                f"adapter hidden {transform.out_features} != donor hidden {donor_width}"
            )
    elif width == donor_width:  # no transformation runs: the table itself is W (k = H keeps it all)
        put("embeddings.word_embeddings.weight", a_emb.word_embeddings.weight, table[:, :k] @ vh[:k])
        skipped["embeddings.embedding_transformation"] = "unused: no trigram input and E == hidden"
    else:
        skipped["embeddings.word_embeddings"] = f"adapter hidden {width} != donor hidden {donor_width}"

    for table_name in ("position_embeddings", "token_type_embeddings"):
        _copy_if_same(f"embeddings.{table_name}.weight", getattr(a_emb, table_name).weight,
                      getattr(d_emb, table_name).weight, put, skipped)

    norm = a_emb.LayerNorm
    if isinstance(norm, torch.nn.LayerNorm):  # normalization_type="layer_norm": it does transfer
        _copy_if_same("embeddings.LayerNorm.weight", norm.weight, d_emb.LayerNorm.weight, put, skipped)
        _copy_if_same("embeddings.LayerNorm.bias", norm.bias, d_emb.LayerNorm.bias, put, skipped)
    else:
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        skipped["embeddings.LayerNorm"] = "NoNorm (x*w+b) cannot express LayerNorm: set to identity"

    # the head: pooler dense (when the adapter's pooler has one) and the classifier
    a_pool, d_pool = getattr(a_base.pooler, "dense", None), getattr(d_base.pooler, "dense", None)
    if a_pool is None:
        skipped["pooler.dense"] = "the adapter's pooler has no dense (classifier_activation=False)"
    elif d_pool is None:
        skipped["pooler.dense"] = "the donor's pooler has no dense"
    else:
        _copy_if_same("pooler.dense.weight", a_pool.weight, d_pool.weight, put, skipped)
        _copy_if_same("pooler.dense.bias", a_pool.bias, d_pool.bias, put, skipped)
    _copy_if_same("classifier.weight", adapter.classifier.weight, donor.classifier.weight, put, skipped)
    _copy_if_same("classifier.bias", adapter.classifier.bias, donor.classifier.bias, put, skipped)

    report = {"transferred": transferred, "skipped": skipped, "svd_rank": k, "svd_energy_kept": energy,
              "svd_relative_error": math.sqrt(max(0.0, 1.0 - energy))}
    log.info("donor transfer: word embeddings (%d, %d) -> rank %d: %.1f%% of the spectral energy kept, "
             "relative error %.4f; %d tensors copied; skipped: %s", vocab, donor_width, k, 100 * energy,
             report["svd_relative_error"], len(transferred), "; ".join(f"{n} ({why})" for n, why in skipped.items()))
    return report


def _copy_if_same(name: str, target: torch.Tensor, source: torch.Tensor, put: Any, skipped: dict[str, str]) -> None:
    if target.shape == source.shape:
        put(name, target, source.detach())
    else:
        skipped[name] = f"shape {tuple(target.shape)} != donor's {tuple(source.shape)}"


# --- progressive layer-by-layer transfer ----------------------------------------------------


def layerwise_transfer(
    adapter: Any, donor: Any, train: Any, context: Any, epochs_per_layer: int = 1, batch_size: int = 32,
    learning_rate: float = 1e-3, seed: int = 42, *, layers: Sequence[int] | None = None,
    max_steps: int | None = None,
) -> list[dict[str, Any]]:
    """Train the adapter one layer at a time to reproduce the donor's layers (MobileBERT's PKT).

    For adapter layer ``l`` and donor layer ``m = uniform_layer_map(...)[l]``, only layer ``l``'s
    parameters (and the embeddings' when ``l == 0``) are trained, to minimise::

        masked_mse(proj(adapter.hidden_states[l + 1]), donor.hidden_states[m + 1])   # feature maps
        + attention_kl(adapter.attentions[l], donor.attentions[m])                   # attention

    ``proj`` is the identity when both are as wide (512 at full size), else a fresh linear map
    trained with the stage. The donor runs without gradients through an eager-attention twin (the
    SDPA classes cannot return attention maps and ``set_attn_implementation`` does not swap BERT's
    attention classes in transformers 4.x). The adapter runs with dropout off: the attention maps
    a model returns in train mode are post-dropout, and the KL would punish the dropped entries.

    Every rank builds the same batches and takes its slice (``alambic.train.loop.iterate``); with
    several workers and ``torch.distributed`` initialised, the trained parameters' gradients are
    averaged by hand (the adapter is not DDP-wrapped yet) and the logged losses are rank averages.
    The adapter's ``requires_grad`` flags and train/eval mode are restored at the end.

    :param train: a tokenized ``datasets.Dataset`` (input_ids, attention_mask, token_type_ids, length).
    :param context: the worker's :class:`alambic.train.distributed.WorkerContext` (rank, world size, device).
    :param layers: adapter layers to transfer, in order; None = all (0, 1, ...).
    :param max_steps: stop each layer's stage after this many steps (None: ``epochs_per_layer`` epochs).
    :returns: one record per stage: ``layer``, ``donor_layer``, ``steps``, and the stage's losses on
        its first batch before (``first_feature_loss``, ``first_attention_loss``) and after training
        (``last_feature_loss``, ``last_attention_loss``): the same batch, so the change is the stage's.
    """
    device = context.device
    adapter.to(device)
    teacher = eager_twin(donor).to(device).eval().requires_grad_(False)
    a_layers, d_layers = adapter.config.num_hidden_layers, teacher.config.num_hidden_layers
    layer_map = uniform_layer_map(d_layers, a_layers)
    stages = list(range(a_layers)) if layers is None else [int(i) for i in layers]
    for layer in stages:
        if not 0 <= layer < a_layers:
            raise AlambicError(f"layerwise transfer: layer {layer} is out of range; the adapter has {a_layers}")
    settings = TrainSettings(learning_rate=learning_rate, batch_size=batch_size, seed=seed)
    flags = {name: p.requires_grad for name, p in adapter.named_parameters()}
    was_training = adapter.training
    adapter.eval()  # dropout off (see above); gradients flow all the same
    records = []
    try:
        for layer in stages:
            records.append(_transfer_layer(adapter, teacher, layer, layer_map[layer], train, context,
                                           settings, epochs_per_layer, max_steps))
    finally:
        for name, p in adapter.named_parameters():
            p.requires_grad_(flags[name])
        adapter.train(was_training)
    return records


def _transfer_layer(adapter: Any, teacher: Any, layer: int, donor_layer: int, train: Any, context: Any,
                    settings: TrainSettings, epochs: int, max_steps: int | None = None) -> dict[str, Any]:
    """One stage: train adapter layer ``layer`` (+ embeddings for layer 0) against ``donor_layer``."""
    device = context.device
    student = adapter.base_model
    modules = [student.encoder.layer[layer]] + ([student.embeddings] if layer == 0 else [])
    adapter.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):  # the same projection on every rank, global RNG untouched
        torch.manual_seed(settings.seed + layer)
        proj = projection(adapter.config.hidden_size, teacher.config.hidden_size).to(device)
    named = [(n, p) for n, p in adapter.named_parameters() if p.requires_grad]
    named += [(f"projection.{n}", p) for n, p in proj.named_parameters()]
    params = [p for _, p in named]
    optimizer = make_optimizer(named, settings)
    steps, first, probe = 0, None, None
    for epoch in range(epochs):
        for _, batch in iterate(train, settings.batch_size, seed=settings.seed, epoch=epoch, shuffle=True,
                                rank=context.rank, world_size=context.world_size):
            if max_steps is not None and steps >= max_steps:  # the same count on every rank
                break
            inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
            with torch.no_grad():
                out = teacher.base_model(**inputs, output_hidden_states=True, output_attentions=True)
                target = (out.hidden_states[donor_layer + 1], _attentions(out, donor_layer))
            feature, attention = _stage_losses(student, proj, inputs, layer, target)
            optimizer.zero_grad(set_to_none=True)
            (feature + attention).backward()
            average_gradients(named, context.world_size)  # the adapter is not DDP-wrapped yet
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            if probe is None:  # the first batch, kept to measure the stage's effect on the same data
                probe = (inputs, target)
                first = _mean_over_ranks(torch.stack([feature.detach(), attention.detach()]), context.world_size)
            steps += 1
    optimizer.zero_grad(set_to_none=True)
    last = None
    if probe is not None:
        with torch.no_grad():
            probe_inputs, probe_target = probe
            losses = _stage_losses(student, proj, probe_inputs, layer, probe_target)
            last = _mean_over_ranks(torch.stack(losses), context.world_size)
    record = {"layer": layer, "donor_layer": donor_layer, "steps": steps,
              "first_feature_loss": first[0] if first else None, "last_feature_loss": last[0] if last else None,
              "first_attention_loss": first[1] if first else None, "last_attention_loss": last[1] if last else None}
    if steps:
        log.info("layerwise transfer: layer %d <- donor layer %d, %d steps: feature MSE %.4f -> %.4f, "
                 "attention KL %.4f -> %.4f", layer, donor_layer, steps, first[0], last[0], first[1], last[1])
    else:
        log.warning("layerwise transfer: layer %d got no batches (train has %d rows)", layer, len(train))
    return record


def _stage_losses(student: Any, proj: torch.nn.Module, inputs: dict[str, torch.Tensor], layer: int,
                  target: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature-map MSE, attention KL) of adapter layer ``layer`` against the donor's (hidden, attention)."""
    out = student(**inputs, output_hidden_states=True, output_attentions=True)
    mask = inputs["attention_mask"]
    feature = masked_mse(proj(out.hidden_states[layer + 1]), target[0], mask)  # (B, T, H) vs (B, T, Hd)
    return feature, attention_kl(_attentions(out, layer), target[1], mask)  # (B, heads, T, T)


def _attentions(out: Any, layer: int) -> torch.Tensor:
    if out.attentions is None or out.attentions[layer] is None:
        raise AlambicError("layerwise transfer: a model returned no attention maps (eager attention needed)")
    return out.attentions[layer]


def eager_twin(model: Any) -> Any:
    """``model`` itself when its attention is eager, else a copy built with eager attention.

    BERT's attention class is chosen at construction from ``config._attn_implementation``;
    transformers 4.57's ``set_attn_implementation`` only warns for such models and keeps SDPA,
    which returns attention maps only through a deprecated fallback. So: build, then load the weights.
    """
    if model.config._attn_implementation == "eager":
        return model
    config = copy.deepcopy(model.config)
    config._attn_implementation = "eager"
    twin = type(model)(config)
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).device)


def _mean_over_ranks(values: torch.Tensor, world_size: int) -> list[float]:
    if world_size > 1 and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= world_size
    return [float(v) for v in values]
