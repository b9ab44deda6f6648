"""examples/custom_plugin, installed with pip, is listed by `alambic plugins` and prunes a model.

Installed as tests/core/test_third_party.py installs its fixture: `pip install --target` into a
temporary folder (a copy of the sources is built, since setuptools writes egg-info beside them),
put on PYTHONPATH of subprocesses only. Nothing lands in the venv, so nothing needs uninstalling,
and the other tests never see the plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PROJECT
from tests.core.test_third_party import plugins_json

PLUGIN = PROJECT / "examples" / "custom_plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("src") / "custom_plugin"
    shutil.copytree(PLUGIN, build, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build)],
        check=True, capture_output=True, text=True,
    )
    return target


def test_plugin_is_listed_with_its_package(plugin_site):
    listing = plugins_json(plugin_site)
    [entry] = [p for p in listing["plugins"]["pruners"] if p["id"] == "top-layers"]
    assert entry["package"] == "alambic-example-pruner" and entry["version"] == "0.1.0"
    assert entry["plugin"] == "top_layers" and entry["module"] == "alambic_example_pruner"
    assert entry["description"].startswith("Drop the top encoder layers")
    assert listing["failed"] == []
    assert "layers" in [p["id"] for p in listing["plugins"]["pruners"]]  # built-ins still there


def test_plugin_can_be_disabled(plugin_site):
    listing = plugins_json(plugin_site, ALAMBIC_DISABLE_PLUGINS="alambic-example-pruner")
    assert "top-layers" not in [p["id"] for p in listing["plugins"]["pruners"]]


PRUNE = textwrap.dedent("""
    import json
    import torch
    from alambic.manager import build_registry
    from alambic.plugins.students import RobertaL4

    Pruner = build_registry()["pruners"].get("top-layers")  # found through the entry point
    torch.manual_seed(0)
    model = RobertaL4.build(2, vocab_size=100, layers=2, hidden=32, heads=2, ffn=64).eval()
    result = Pruner.apply(model, Pruner.options(keep=1))
    by_amount = Pruner.apply(model, Pruner.options(0.5))
    ids = torch.randint(0, 100, (3, 9))
    with torch.no_grad():
        logits = result.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    try:
        Pruner.options(0.5, keep=1)
        both = None
    except Exception as exc:
        both = str(exc)
    print(json.dumps({
        "report": result.report, "layers": result.model.config.num_hidden_layers,
        "original_layers": model.config.num_hidden_layers, "logits": list(logits.shape),
        "by_amount": by_amount.report["kept_layers"], "both": both,
        "half": Pruner.half(Pruner.options(0.5)).amount,
    }))
""")


def test_plugin_pruner_drops_layers_and_parameters(plugin_site):
    environ = {**os.environ, "PYTHONPATH": str(plugin_site)}
    out = subprocess.run([sys.executable, "-c", PRUNE], capture_output=True, text=True, env=environ,
                         cwd=plugin_site, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    report = got["report"]
    assert report["pruner"] == "top-layers" and report["params_after"] < report["params_before"]
    assert report["kept_layers"] == [0] and report["dropped_layers"] == [1]
    assert got["layers"] == 1 and got["original_layers"] == 2  # apply pruned a copy
    assert got["logits"] == [3, 2]
    assert got["by_amount"] == [0]
    assert "exactly one of them" in got["both"]
    assert got["half"] == 0.25
