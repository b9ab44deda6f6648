"""Paths read from records stay inside their folder (core/paths.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alambic import paths
from alambic.errors import StoreError


@pytest.mark.parametrize("value, why", [
    ("/etc/passwd", "absolute or climbs out"), ("../../etc/passwd", "absolute or climbs out"),
    ("quantized/../../x", "absolute or climbs out"), ("C:/x", "absolute or climbs out"),
    ("", "is ''"), (None, "is None"), (".", "names the folder itself"), ("link/secret", "symbolic link")])
def test_paths_read_from_records_stay_inside_their_folder(tmp_path: Path, value, why: str) -> None:
    stage = tmp_path / "stage"
    (stage / "quantized").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (stage / "link").symlink_to(tmp_path, target_is_directory=True)
    assert paths.inside(stage, "quantized/model.onnx", source="r.json", key="artifact") == \
        stage.resolve() / "quantized" / "model.onnx"
    with pytest.raises(paths.UnsafePathError, match=rf"^r\.json: artifact .*{why}") as raised:
        paths.inside(stage, value, source="r.json", key="artifact")
    assert isinstance(raised.value, StoreError) and ("expected a path" in str(raised.value))
