"""core/compress/latency.py: the timing loop (the latency of real models is measured through
core/compress/measure.py: test_measure.py)."""

from __future__ import annotations

import pytest

from alambic.compress.latency import timed
from alambic.errors import AlambicError


def test_latency_needs_timed_runs():
    assert set(timed(lambda: None, runs=2, warmup=0)) == {"p50", "p90"}
    with pytest.raises(AlambicError, match="runs >= 1"):
        timed(lambda: None, runs=0)
