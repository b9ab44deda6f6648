"""A real third-party package, installed with pip, shows up in `alambic plugins` and can be blocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alambic-hello"
ALAMBIC = shutil.which("alambic", path=os.path.dirname(sys.executable)) or "alambic"


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("src") / "alambic-hello"
    shutil.copytree(FIXTURE, build)  # build in a copy: setuptools writes egg-info beside sources
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build)],
        check=True, capture_output=True, text=True,
    )
    return target


def plugins_json(site: Path, **env: str) -> dict:
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    out = subprocess.run([ALAMBIC, "plugins", "--json"], capture_output=True, text=True, env=environ, check=True)
    return json.loads(out.stdout)


def test_installed_plugin_is_listed_with_its_package(hello_site):
    listing = plugins_json(hello_site)
    [hello] = [p for p in listing["plugins"]["datasets"] if p["id"] == "hello"]
    assert hello["package"] == "alambic-hello" and hello["version"] == "0.0.1"
    assert hello["plugin"] == "hello" and hello["description"].startswith("Six inline Chinese greetings")
    assert listing["failed"] == []


@pytest.mark.parametrize("blocked", ["hello", "alambic-hello"])
def test_disable_env_hides_it(hello_site, blocked):
    listing = plugins_json(hello_site, ALAMBIC_DISABLE_PLUGINS=blocked)
    assert "hello" not in [p["id"] for p in listing["plugins"]["datasets"]]
    assert "files" in [p["id"] for p in listing["plugins"]["datasets"]]
