"""The head's update, as Core ML's neural-network update performs it (``MLUpdateTask``), in numpy.

::

    head, losses = sgd_update(model.head, features, targets, model.rule, seed=0)
    accuracy(head, features, targets)

Per epoch: the rows in order (shuffled first when the spec says ``shuffle``), cut into mini-batches of
the spec's size, the last one holding what remains; per mini-batch, the forward pass the model
runs (inner product, softmax), the spec's loss ``-log(p[target])`` averaged over the mini-batch,
and one SGD step on the head's weight and bias with the spec's learning rate (and momentum, as
``v = momentum * v + g; w -= lr * v``). Computed in float32, as the head's weights are stored.

Assumed, as Core ML's documents do not say it: the loss is the mini-batch *mean* (not the sum),
a last partial mini-batch is used (not dropped), and momentum is PyTorch's form. The shuffled
order is the device's own random draw: here a seeded permutation (the spec's seed, else ``seed``),
so a shuffled update matches the device's in distribution, not row for row.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from alambic.ship.personalize_spec import Head, UpdateRule


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (the head's softmax layer), stable in float32."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def probabilities(head: Head, features: np.ndarray) -> np.ndarray:
    """The head's ``label_probs`` for (N, H) pooled vectors: (N, labels)."""
    return softmax(features.astype(np.float32) @ head.weight.T + head.bias)


def accuracy(head: Head, features: np.ndarray, targets: np.ndarray) -> float | None:
    """Share of rows whose most probable label is the target; None for no rows."""
    if len(targets) == 0:
        return None
    return float((probabilities(head, features).argmax(-1) == targets).mean())


def batches(count: int, rule: UpdateRule, seed: int) -> Iterator[list[np.ndarray]]:
    """Per epoch, the row indices of each mini-batch (the last one partial), shuffled if the rule says."""
    rng = np.random.default_rng(rule.seed if rule.seed is not None else seed)
    for _ in range(rule.epochs):
        order = rng.permutation(count) if rule.shuffle else np.arange(count)
        yield [order[lo:lo + rule.batch_size] for lo in range(0, count, rule.batch_size)]


def sgd_update(head: Head, features: np.ndarray, targets: np.ndarray, rule: UpdateRule,
               seed: int = 0) -> tuple[Head, list[float]]:
    """The head after ``rule.epochs`` epochs of mini-batch SGD on the mean cross-entropy, and the
    mean loss of each epoch (the loss each mini-batch had before its step, averaged over rows)."""
    weight, bias = head.weight.astype(np.float32).copy(), head.bias.astype(np.float32).copy()
    features = features.astype(np.float32)
    velocity_w, velocity_b = np.zeros_like(weight), np.zeros_like(bias)
    lr, momentum = np.float32(rule.learning_rate), np.float32(rule.momentum)
    losses = []
    for epoch in batches(len(targets), rule, seed):
        total = 0.0
        for rows in epoch:
            x, y = features[rows], targets[rows]  # (B, H), (B,)
            p = softmax(x @ weight.T + bias)  # (B, labels)
            total += float(-np.log(np.maximum(p[np.arange(len(y)), y], np.finfo(np.float32).tiny)).sum())
            grad = p.copy()
            grad[np.arange(len(y)), y] -= 1  # d(-log p[y]) / d logits = p - onehot(y)
            grad /= np.float32(len(y))  # the mini-batch mean
            velocity_w = momentum * velocity_w + grad.T @ x  # (labels, H)
            velocity_b = momentum * velocity_b + grad.sum(0)
            weight -= lr * velocity_w
            bias -= lr * velocity_b
        losses.append(total / max(len(targets), 1))
    return Head(weight, bias), losses


__all__ = ["accuracy", "batches", "probabilities", "sgd_update", "softmax"]
