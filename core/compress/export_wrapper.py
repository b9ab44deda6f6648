"""The export wrapper: a classifier's own parts called with an additive mask built from its inputs,
for the converters that cannot trace transformers' mask helpers (Core ML: no ``new_ones``;
``torch.export`` for ExecuTorch).

::

    wrapper = ClassifierWrapper(model, "logits")     # (input_ids, attention_mask) (B, T) -> logits
    ClassifierWrapper(model, "pooled")               # the pooled vector, rank 1: an updatable head's input

The mask is made additive here (0 kept, :data:`MASK_VALUE` masked) and given to the encoder as
(B, 1, 1, T); ``token_type_ids`` are all zero (single sentences). BERT and MobileBERT classifiers.
"""

from __future__ import annotations

import functools
from typing import Any

from alambic.errors import AlambicError

#: the additive mask: finfo(float32).min overflows fp16 compute to -inf and is clamped by an int8 add
MASK_VALUE = -10000.0
OUTPUTS = ("probabilities", "logits", "pooled")


@functools.cache
def _wrapper_class() -> type:
    import torch

    class ClassifierWrapper(torch.nn.Module):
        """(input_ids, attention_mask) integer (B, T) -> probabilities, logits or the pooled vector."""

        def __init__(self, model: Any, output: str = "probabilities") -> None:
            super().__init__()
            if output not in OUTPUTS:
                raise AlambicError(f"the export wrapper's output must be one of {', '.join(OUTPUTS)}, got {output!r}")
            base = model.base_model  # BertModel or MobileBertModel
            if getattr(base, "pooler", None) is None or not hasattr(model, "classifier"):
                raise AlambicError(f"{type(model).__name__}: the export needs a pooler and a classifier "
                                   f"(a *ForSequenceClassification model)")
            self.embeddings, self.encoder, self.pooler = base.embeddings, base.encoder, base.pooler
            self.classifier, self.output = model.classifier, output
            self.layers = len(self.encoder.layer)

        def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            ids = input_ids.long()
            mask = (1.0 - attention_mask.to(torch.float32)[:, None, None, :]) * MASK_VALUE  # (B, 1, 1, T)
            hidden = self.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))  # (B, T, H)
            # head_mask: MobileBERT's encoder indexes it per layer; BERT's accepts it too
            hidden = self.encoder(hidden, attention_mask=mask, head_mask=[None] * self.layers, return_dict=False)[0]
            return self.pooler(hidden)  # (B, H)

        def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.pooled(input_ids, attention_mask))  # (B, labels)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            if self.output == "pooled":
                return self.pooled(input_ids, attention_mask)[0]  # (H,): the head's rank-1 input
            logits = self.logits(input_ids, attention_mask)
            return logits if self.output == "logits" else torch.softmax(logits, dim=-1)

    return ClassifierWrapper


def ClassifierWrapper(model: Any, output: str = "probabilities") -> Any:  # noqa: N802 - builds the class's instance
    """The export wrapper of ``model`` (its own modules, not copies), in eval mode."""
    return _wrapper_class()(model, output).eval()


__all__ = ["MASK_VALUE", "OUTPUTS", "ClassifierWrapper"]
