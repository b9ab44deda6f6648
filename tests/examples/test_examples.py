"""Every run config in examples/ passes `alambic config check` (keys, types, files, plugin ids)."""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT, needs_shared_data
from tests.core.test_cli import alambic

EXAMPLES = sorted((PROJECT / "examples").glob("*.yaml"))


def example(path):
    # configs that read the real data beside the project (examples/thucnews.yaml) need it there
    uses_shared = "shared/data" in path.read_text(encoding="utf-8")
    return pytest.param(path, id=path.name, marks=[needs_shared_data()] if uses_shared else [])


def test_examples_are_found():
    assert {"quickstart.yaml", "thucnews.yaml", "bert-base-chinese-gpu.yaml"} <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", [example(p) for p in EXAMPLES])
def test_example_passes_config_check(path):
    result = alambic("config", "check", str(path.relative_to(PROJECT)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
