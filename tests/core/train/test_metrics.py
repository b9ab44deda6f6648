"""core/train/metrics.py: macro-F1 of predictions."""

from __future__ import annotations

import pytest

from alambic.train.metrics import macro_f1


def test_macro_f1_matches_a_hand_computation():
    labels, preds = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 1 fn 1 -> 2/3
    assert macro_f1(labels, preds) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
