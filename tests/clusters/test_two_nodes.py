"""A real two-node Ray cluster on this machine: a head and a worker node on loopback, 1 CPU each;
`alambic search --address` runs its trials on both, then both nodes are stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

RAY = shutil.which("ray", path=os.path.dirname(sys.executable))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], capture_output=True, text=True, env=env, timeout=180, check=False)


@pytest.fixture
def two_nodes():
    import tempfile

    if RAY is None:
        pytest.skip("the ray command is not installed beside this Python")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray2-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    import secrets

    # Ray 2.60 clusters authenticate their nodes and drivers with a token: one for all three here
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", env=env)
    try:
        assert head.returncode == 0, head.stderr[-2000:]
        worker = ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                     "--disable-usage-stats", env=env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        ray("stop", "--force", env=env)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # two Ray nodes and a search: minutes on a 2-core machine; run with -m slow
def test_a_search_runs_its_trials_on_both_nodes(two_nodes, tmp_path):
    from tests.core.search.test_tune import tiny_run

    address, env = two_nodes
    status = ray("status", f"--address={address}", env=env)
    assert status.stdout.count("node_") >= 2 or "2.0 CPU" in status.stdout, status.stdout
    config = tiny_run(tmp_path, name="cluster", pruning=[[], [{"pruner": "ffn", "amount": 0.5}],
                                                         [{"pruner": "ffn", "amount": 0.25}]])
    done = subprocess.run([str(Path(sys.executable).with_name("alambic")), "--quiet", "search", str(config),
                           "--address", address, "--json"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    rows = result["rows"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert len({r["node_id"] for r in rows}) == 2, "every trial ran on one node"
