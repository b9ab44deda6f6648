"""A BERT classifier rewritten in the layout Apple's ``ml-ane-transformers`` uses on the Neural Engine.

Apple's reference (github.com/apple/ml-ane-transformers, ``ane_transformers/reference``) keeps every
activation as (B, C, 1, S): channels first, the sequence on the last axis, which the Neural Engine
reads without the transposes a (B, S, C) layout costs. Linear layers become 1x1 convolutions,
attention is split into one small einsum per head, and LayerNorm normalizes over the channel axis.

:class:`AneClassifier` takes the weights of a (possibly pruned) ``BertForSequenceClassification`` as
they are: each layer keeps its own number of heads (a heads pruner leaves them uneven) and its own
FFN width (odd after FFN pruning). It has the export wrapper's interface (int32 ``input_ids`` and
``attention_mask`` of shape (B, T) in; probabilities, logits or the pooled vector out), so the Core
ML exporter converts it in place of the standard wrapper (``--option coreml.layout=ane``).

The speed-up on the Neural Engine is Apple's claim for their DistilBERT; it was not measured here
(no Mac, no Neural Engine). What is tested here is parity with the standard layout in PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alambic.compress.export_wrapper import MASK_VALUE
from alambic.errors import AlambicError


def conv(linear: nn.Linear) -> nn.Conv2d:
    """A 1x1 convolution computing ``linear`` on (B, C, 1, S) activations, with its weights."""
    out_features, in_features = linear.weight.shape
    layer = nn.Conv2d(in_features, out_features, kernel_size=1, bias=linear.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, 1, S), with the weights of a standard LayerNorm."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=1, keepdim=True)
        scaled = centered * torch.rsqrt(centered.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return scaled * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Attention(nn.Module):
    """Multi-head self-attention, one einsum pair per head (each layer has its own number of heads)."""

    def __init__(self, attention: Any) -> None:
        super().__init__()
        self_attention, output = attention.self, attention.output
        self.heads, self.head_size = self_attention.num_attention_heads, self_attention.attention_head_size
        self.scale = self.head_size ** -0.5
        self.query, self.key = conv(self_attention.query), conv(self_attention.key)
        self.value = conv(self_attention.value)
        self.out = conv(output.dense)
        self.norm = ChannelLayerNorm(output.LayerNorm)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, 1, S); ``key_mask`` (B, S, 1, 1), additive."""
        q = self.query(x).split(self.head_size, dim=1)  # each (B, d, 1, S)
        k = self.key(x).transpose(1, 3).split(self.head_size, dim=3)  # each (B, S, 1, d)
        v = self.value(x).split(self.head_size, dim=1)
        context = []
        for qh, kh, vh in zip(q, k, v, strict=True):
            weights = torch.einsum("bchq,bkhc->bkhq", qh, kh) * self.scale + key_mask  # (B, S_k, 1, S_q)
            context.append(torch.einsum("bkhq,bchk->bchq", weights.softmax(dim=1), vh))  # (B, d, 1, S_q)
        return self.norm(x + self.out(torch.cat(context, dim=1)))


class FeedForward(nn.Module):
    def __init__(self, layer: Any, activation: Any) -> None:
        super().__init__()
        self.up, self.down = conv(layer.intermediate.dense), conv(layer.output.dense)
        self.activation = activation
        self.norm = ChannelLayerNorm(layer.output.LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(self.activation(self.up(x))))


class AneClassifier(nn.Module):
    """(input_ids, attention_mask) int32 (B, T) -> probabilities, logits or the pooled vector,
    computed in the (B, C, 1, S) layout from the weights of a BERT sequence classifier."""

    def __init__(self, model: Any, output: str = "probabilities") -> None:
        super().__init__()
        _check_supported(model)
        from transformers.activations import ACT2FN

        base = model.base_model
        activation = ACT2FN[model.config.hidden_act]
        self.embeddings = base.embeddings
        self.attention = nn.ModuleList(Attention(layer.attention) for layer in base.encoder.layer)
        self.feed_forward = nn.ModuleList(FeedForward(layer, activation) for layer in base.encoder.layer)
        self.pooler, self.classifier, self.output = base.pooler.dense, model.classifier, output

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = input_ids.long()
        hidden = self.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))  # (B, S, C)
        key_mask = ((1.0 - attention_mask.to(hidden.dtype)) * MASK_VALUE)[:, :, None, None]  # (B, S, 1, 1)
        x = hidden.transpose(1, 2).unsqueeze(2)  # (B, C, 1, S)
        for attention, feed_forward in zip(self.attention, self.feed_forward, strict=True):
            x = feed_forward(attention(x, key_mask))
        return torch.tanh(self.pooler(x[:, :, 0, 0]))  # the first token's vector, (B, C)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(input_ids, attention_mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.output == "pooled":
            return self.pooled(input_ids, attention_mask)[0]
        logits = self.logits(input_ids, attention_mask)
        return logits if self.output == "logits" else torch.softmax(logits, dim=-1)


def _check_supported(model: Any) -> None:
    config = model.config
    if config.model_type != "bert" or not hasattr(model, "classifier") or model.base_model.pooler is None:
        raise AlambicError(
            f"the Neural Engine layout (coreml.layout=ane) is written for BERT sequence classifiers "
            f"(roberta-l4, tinybert-4l, students from the teacher's layers); this model is "
            f"{type(model).__name__} ({config.model_type}): export it with coreml.layout=standard")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise AlambicError(f"the Neural Engine layout supports absolute position embeddings, not "
                           f"{config.position_embedding_type!r}: export with coreml.layout=standard")
