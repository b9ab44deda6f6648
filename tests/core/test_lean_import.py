"""`import alambic` must stay light: the CLI and every plugin import heavy libraries lazily."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("ray", "torch", "coremltools", "onnxruntime", "onnx", "transformers", "datasets")


def imported_after(statement: str) -> list[str]:
    code = f"{statement}; import sys, json; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_alambic_is_light():
    assert imported_after("import alambic") == []


def test_plugin_discovery_skips_the_runtimes():
    """Listing plugins (`alambic plugins`, config checks) loads torch for the loss modules, but
    neither Ray nor the deployment runtimes."""
    loaded = imported_after("from alambic.manager import build_registry; build_registry()")
    assert not {"ray", "coremltools", "onnxruntime", "onnx", "datasets"} & set(loaded)
