"""A virtual environment per peer tool, made once and reused; the peer's scripts run in it.

Every peer gets its own environment, even one whose pins would fit beside alambic's: the peer then
runs with exactly the versions the table records, and alambic's environment stays as its tests know
it. Each environment asks for alambic's torch and transformers where the peer allows them (torch
2.13.0 is also the CPU wheel this machine keeps on disk: any other release is a download).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIDE = Path(__file__).parent / "side"

#: peer -> (pip requirements, the distributions whose versions the table reports); a requirement
#: prefixed "nodeps:" installs without its own dependencies (see textpruner)
PEERS: dict[str, tuple[list[str], list[str]]] = {
    "textbrewer": (["torch==2.13.0", "transformers==4.57.6", "textbrewer==0.2.1.post1"],
                   ["textbrewer", "torch", "transformers"]),
    # textpruner 1.1.post2 asks for numpy<1.22, which has no wheel for Python 3.11 and does not build
    # here: it installs without its dependencies, the others (all but that numpy pin) named instead
    "textpruner": (["torch==2.13.0", "transformers==4.57.6", "tqdm", "sentencepiece", "protobuf",
                    "nodeps:textpruner==1.1.post2"],
                   ["textpruner", "torch", "transformers", "numpy"]),
    # optimum-onnx 0.1.0 resolves to optimum 2.1.0 and onnxruntime 1.32.0 (alambic's ONNX Runtime)
    "optimum": (["torch==2.13.0", "transformers==4.57.6", "optimum-onnx[onnxruntime]==0.1.0"],
                ["optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "transformers"]),
    # 2.6 is the last Neural Compressor whose accuracy-driven tuning quantizes ONNX models (3.x: PyTorch
    # and TensorFlow; ONNX moved to onnx-neural-compressor); it needs numpy < 2 and pkg_resources, and
    # its quantizer calls onnx.mapping, which onnx 1.19 removed (alambic's onnx is 1.23.2)
    "neural-compressor": (["torch==2.13.0", "transformers==4.57.6", "neural-compressor==2.6", "onnxruntime==1.32.0",
                           "onnx==1.18.0", "setuptools<81", "six"],
                          ["neural-compressor", "onnxruntime", "onnx", "numpy"]),
}


def _digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]


def peer_python(peer: str, root: Path) -> Path:
    """The Python of ``peer``'s environment under ``root``, created (and its requirements installed)
    unless an environment made from the same requirements is there."""
    requirements, _ = PEERS[peer]
    folder = root / peer
    python = folder / "bin" / "python"
    marker = folder / "alambic-requirements.txt"
    if python.exists() and marker.exists() and marker.read_text().startswith(_digest(requirements)):
        return python
    print(f"[peers] creating the environment of {peer} in {folder} (pip install {' '.join(requirements)})",
          flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *(r for r in requirements if not r.startswith("nodeps:"))], check=True)
    no_deps = [r.removeprefix("nodeps:") for r in requirements if r.startswith("nodeps:")]
    if no_deps:
        subprocess.run([*pip, "--no-deps", *no_deps], check=True)
    marker.write_text(_digest(requirements) + "\n" + "\n".join(requirements) + "\n")
    print(f"[peers] {peer}: ready in {time.perf_counter() - start:.0f} s", flush=True)
    return python


def versions(peer: str, root: Path) -> dict[str, str]:
    """The installed versions of the distributions the table reports for ``peer``; ``{"error": why}``
    when its environment does not install (the peer's rows then say so, the others go on)."""
    _, reported = PEERS[peer]
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        done = subprocess.run([str(peer_python(peer, root)), "-c", code, *reported], check=True,
                              capture_output=True, text=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"error": f"the {peer} environment does not install: {exc}"}
    return json.loads(done.stdout)


def run_side(peer: str, script: str, inputs: dict[str, Any], work: Path, root: Path,
             timeout: float | None = None) -> dict[str, Any]:
    """Run ``side/<script>`` in ``peer``'s environment on ``inputs``; its result, or
    ``{"error": ...}`` with the end of its log when it failed (a row saying why, not a crash).

    The script gets two arguments, ``inputs.json`` and ``result.json`` in ``work``; its output
    goes to ``work/<script>.log``.
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "inputs.json").write_text(json.dumps(inputs, indent=2, default=str), encoding="utf-8")
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)
    log = work / f"{Path(script).stem}.log"
    try:
        python = peer_python(peer, root)
    except subprocess.CalledProcessError as exc:
        return {"error": f"{peer} does not install here: {exc}"}
    print(f"[peers] {peer}: {script} (log: {log})", flush=True)
    with log.open("w", encoding="utf-8") as out:
        try:
            done = subprocess.run([str(python), str(SIDE / script), str(work / "inputs.json"), str(result_file)],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=work)
        except subprocess.TimeoutExpired:
            return {"error": f"{script} ran past {timeout:.0f} s (log: {log})"}
    if done.returncode != 0 or not result_file.exists():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        return {"error": f"{script} failed (exit {done.returncode}): " + " / ".join(tail)}
    return json.loads(result_file.read_text(encoding="utf-8"))
