"""An example third-party alambic plugin: the ``top-layers`` pruner.

It keeps the first N encoder layers of a model and drops the ones above them: the cheapest
structured pruning there is, and a good baseline for the built-in ``layers`` pruner, which
measures which layers matter. The lower layers are kept because the embeddings feed them and
the classifier reads the last kept layer, which still sees every token.

The plugin follows alambic's pruner contract (:mod:`alambic.compress.pruning`):

* a class with a stable ``id``, a one-line docstring (``alambic plugins`` shows it) and an
  ``Options`` frozen dataclass; a field named ``amount`` is the strength that the guard halves;
* ``prune(model, options, context)`` edits the copy that ``Pruner.apply`` hands it, in place,
  and returns a ``PruneResult`` with this pruner's report entries;
* the work is a plain function (:func:`keep_first_layers`), usable in a notebook without a
  registry; the layer surgery itself is alambic's own ``drop_layers``.

In a run config::

    search:
      pruning:
        - [{pruner: top-layers, options: {keep: 3}}]   # exactly 3 layers left
        - [{pruner: top-layers, amount: 0.25}]         # a quarter of the layers, from the top
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import alambic
from alambic.compress.pruning import PruneContext, Pruner, PruneResult, count, encoder_layers
from alambic.errors import AlambicError
from alambic.plugins.pruners import drop_layers


def keep_first_layers(model: Any, keep: int) -> dict[str, Any]:
    """Keep encoder layers ``0 .. keep-1`` of ``model`` and drop the rest, in place.

    :return: the layers before and after, and which were dropped (``drop_layers``' report).
    """
    total = len(encoder_layers(model))
    if not 1 <= keep <= total:
        raise AlambicError(f"pruner 'top-layers': keep={keep}, but the model has {total} "
                           f"layer(s): keep must be 1..{total}")
    return drop_layers(model, range(keep, total))


@dataclass(frozen=True)
class TopLayersOptions:
    amount: float | None = None  # fraction of the layers dropped, from the top (>= 1 layer stays)
    keep: int | None = None  # or exactly this many layers kept, the first ones

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.keep is None):
            raise AlambicError("pruner 'top-layers': give amount (a fraction of the layers to "
                               "drop) or keep (how many layers stay), exactly one of them")
        if self.amount is not None and (isinstance(self.amount, bool)
                                        or not isinstance(self.amount, (int, float))
                                        or not 0 <= self.amount <= 1):
            raise AlambicError(f"pruner 'top-layers': amount must be a fraction in [0, 1], "
                               f"got {self.amount!r}")
        if self.keep is not None and (isinstance(self.keep, bool) or not isinstance(self.keep, int)
                                      or self.keep < 1):
            raise AlambicError(f"pruner 'top-layers': keep must be an integer >= 1, got {self.keep!r}")


class TopLayers(Pruner):
    """Drop the top encoder layers, keeping the first N (by count or by fraction)."""

    id = "top-layers"
    Options = TopLayersOptions
    # Pruner.half halves `amount`; with `keep` there is no strength to halve (None: the guard
    # reverts the step instead of retrying it).

    @classmethod
    def prune(cls, model: Any, options: TopLayersOptions, context: PruneContext) -> PruneResult:
        keep = options.keep
        if keep is None:
            total = len(encoder_layers(model))
            keep = max(1, total - count(options.amount, total))
        return PruneResult(model, report=keep_first_layers(model, keep))


@alambic.hookimpl
def alambic_register_pruners(register: Any) -> None:
    register.add(TopLayers)
