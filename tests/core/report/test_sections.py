"""core/report/sections.py: the speed-up split (the sections themselves: test_build.py, on a real run)."""

from __future__ import annotations

import pytest

from alambic.report.sections import speed_up


def test_speed_up_split_is_exact():
    s = speed_up({"pytorch": 46.0, "onnxruntime": 28.5}, "onnxruntime", 1.33)
    assert (s.baseline, s.runtime, s.runtime_share) == ("onnxruntime", "onnxruntime", 1.0)
    assert s.total == s.runtime_share * s.compression_share == pytest.approx(28.5 / 1.33)
    s = speed_up({"pytorch": 46.0, "onnxruntime": 28.5}, "pytorch", 9.0)  # a slower runtime costs
    assert s.baseline == "onnxruntime" and s.runtime_share == pytest.approx(28.5 / 46.0)
    assert s.compression_share == pytest.approx(46.0 / 9.0) and s.total == pytest.approx(28.5 / 9.0)
    assert speed_up({"pytorch": 46.0}, "onnxruntime", 1.0) is None  # no teacher in that runtime
    assert speed_up({"pytorch": 46.0}, "pytorch", None) is None
