"""Classification scores: per-class precision, recall and F1 of a confusion matrix, and macro-F1 of
predictions; shared by the training loop's evaluation and ``alambic compare``. numpy is imported
inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def per_class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of each class of a confusion matrix (rows = true labels), each 0
    where it is undefined (a class never predicted, never true, or never right)."""
    import numpy as np

    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return precision, recall, f1


def macro_f1(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Macro-averaged F1 over the classes that occur in ``labels`` or ``preds`` (as sklearn does).

    The training loop's ``classification_metrics`` averages over every label of the data instead
    (one neither true nor predicted counts 0); both take F1 from :func:`per_class_scores`.
    """
    import numpy as np

    y, p = np.asarray(labels), np.asarray(preds)
    classes = np.union1d(y, p)  # the confusion of these classes only: each occurs somewhere
    n = len(classes)
    if not n:
        return 0.0
    cells = np.searchsorted(classes, y) * n + np.searchsorted(classes, p)
    confusion = np.bincount(cells, minlength=n * n).reshape(n, n)
    return float(per_class_scores(confusion)[2].mean())


__all__ = ["macro_f1", "per_class_scores"]
