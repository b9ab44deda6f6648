"""plugins/coreml_quantizers.py: Core ML's own compression (palettization, int4 blocks, joint
pruning + palettization) as quantizers, guarded and measured on the package's weights read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alambic.compress.chain import compress
from alambic.compress.latency import UNTIMED
from alambic.compress.records import MeasureSettings, parse_steps
from alambic.errors import AlambicError
from alambic.plugins.coreml_quantizers import Int4Block, Palettize
from alambic.ship.coreml_scoring import read_back

FAST = MeasureSettings(lengths=(8,), threads=1, runs=2, warmup=1, memory=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import train_tiny_run

    root = tmp_path_factory.mktemp("run")
    _, folder = train_tiny_run(root, [f"{'好坏'[i % 2]}消息第{i}条\t{i % 2}" for i in range(160)])
    return root, folder




def test_cli_compress_palettize_ships_the_package_it_scored(trained):
    from tests.core.test_cli import alambic

    root, folder = trained
    done = alambic("compress", str(root / "run.yaml"), "--model", str(folder), "--quant", "palettize",
                   "--quant-option", "nbits=6", "--lengths", "8", "--runs", "2", "--no-memory", "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["runtime"] == "coreml" and record["artifact"].endswith("/quantized/Classifier.mlpackage")
    assert [s["outcome"] for s in record["steps"]] == ["kept"]
    quantization = record["quantization"]
    assert quantization["quantizer"] == "palettize" and quantization["target"] == "iOS18"
    assert quantization["plan"]["precision"] == {"attention": "lut6", "ffn": "lut6", "embeddings": "lut6"}
    forms = quantization["forms"]
    assert forms["attention"] == {"lut6": 8} and forms["ffn"] == {"lut6": 4} and forms["embeddings"]["lut6"] >= 1
    after = record["after"]
    # size: the package and the vocabulary; latency never measured, and said why
    assert set(after["files"]) == {"Classifier.mlpackage", "vocab.txt"}
    assert after["latency_ms"] == {} and after["latency_note"] == UNTIMED["coreml"]
    assert record["after_headline"]["latency_p50_ms"] is None
    assert after["size_bytes"] < record["before"]["size_bytes"] / 3  # 6-bit tables against fp32
    # the guard judged the package's weights on validation; test measured once
    assert record["validation"]["accuracy"] == record["validation_accuracy"]["after"]
    assert after["examples"] > 0 and 0 <= after["accuracy"] <= 1


def test_the_scored_weights_are_the_package_weights(trained):
    from alambic.run import RunContext

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    record = compress(ctx, folder, [], "int4-block", measure=FAST)
    assert record.runtime == "coreml" and record.artifact.name == "Classifier.mlpackage"
    read = read_back(record.artifact)
    assert set(read.forms.values()) == {"int4"}
    # the module the guard scored holds exactly these weights (fp16 of them)
    from alambic.compress.quantization import QuantContext, QuantSource
    from alambic.train.models import load_pretrained

    model = load_pretrained(record.path / "model", __import__("transformers").AutoModelForSequenceClassification)
    shipped = Int4Block.apply(QuantSource(model=model.eval()), {}, QuantContext(record.path.parent / "again"))
    state = {k.removeprefix("shipped.").replace(".", "_"): v for k, v in shipped.model.state_dict().items()}
    again = read_back(shipped.files[0])
    compared = 0
    for name, value in again.weights.items():
        if name in state and value.ndim > 1:
            assert np.array_equal(state[name].float().numpy().reshape(value.shape), value.astype(np.float16)), name
            compared += 1
    assert compared >= 10


def test_joint_pruning_and_palettization_in_one_package(trained):
    from alambic.run import RunContext

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    steps = parse_steps("ffn:0.25", ctx.registry)  # structured pruning, then Core ML's joint sparse + lut
    record = compress(ctx, folder, steps, "palettize", {"nbits": 4, "sparsity": 0.5}, measure=FAST)
    assert record.runtime == "coreml"
    read = read_back(record.artifact)
    assert set(read.forms.values()) == {"sparse+lut4"}
    zeros = np.mean([(read.weights[name] == 0).mean() for name in read.forms])
    assert 0.45 <= zeros <= 0.55
    assert record.record["quantization"]["plan"]["sparsity"] == 0.5
    assert record.after.latency_note and record.after.size_bytes < record.before.size_bytes


@pytest.mark.parametrize(("Q", "options", "message"), [
    (Palettize, {"nbits": 5}, "nbits must be one of 4, 6, 8"),
    (Palettize, {"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    (Palettize, {"group_size": 0}, "group_size must be >= 1"),
    (Int4Block, {"block_size": 0}, "block_size must be >= 1"),
])
def test_options_are_checked(Q, options, message):
    with pytest.raises(AlambicError, match=message):
        Q.options(options)


def test_a_coreml_quantizer_needs_the_pytorch_model(tmp_path):
    from alambic.compress.quantization import QuantContext

    with pytest.raises(AlambicError, match="needs the model, not only an ONNX file"):
        Palettize.apply(tmp_path / "model.onnx", {}, QuantContext(tmp_path))


def test_cli_export_ships_the_measured_package(trained, tmp_path):
    """A Core ML candidate's bundle holds the very package that was measured (its weights
    bit-equal), in the plan's forms, scored; its ONNX is the fp32 model and says so."""
    from alambic.run import RunContext
    from tests.core.test_cli import alambic

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    record = compress(ctx, folder, [], "palettize", {"nbits": 4}, measure=FAST)
    out = tmp_path / "bundle"
    done = alambic("export", str(root / "run.yaml"), "--stage", str(record.path), "--format", "coreml,onnx",
                   "--out", str(out), "--option", "coreml.updatable=false", "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    verification = json.loads(done.stdout)
    checks = {c["name"]: c for c in verification["formats"]["coreml"]["checks"]}
    assert checks["Core ML package = the one the candidate was measured as"]["ok"] is True
    assert checks["lut4 weights"]["ok"] is True
    assert checks["Core ML weights as the candidate's compression (read back)"]["ok"] is True
    scored = checks["Core ML weights read back and scored (fp16 compute, test split)"]
    assert scored["ok"] is True and scored["covers"] == "weights scored"
    assert "lut4" in " ".join(verification["formats"]["coreml"]["notes"])
    assert any("fp32: the candidate was quantized for coreml" in n for n in verification["formats"]["onnx"]["notes"])
    assert np.array_equal(read_back(out / "coreml" / "Classifier.mlpackage").weights["classifier_weight"],
                          read_back(record.artifact).weights["classifier_weight"])

    refused = alambic("export", str(root / "run.yaml"), "--stage", str(record.path), "--format", "coreml",
                      "--out", str(tmp_path / "ane"), "--option", "coreml.layout=ane", cwd=root)
    assert refused.returncode == 1 and "ships the package it was measured as" in " ".join(refused.stderr.split())


def test_a_search_config_measures_core_ml_candidates_and_exports_one(tmp_path):
    """The user's path: search.quantization names palettize; the search measures it (no latency,
    said why), the front ranks it, and `alambic export --candidate` ships its package."""
    from tests.core.search.test_tune import tiny_run
    from tests.core.test_cli import alambic

    path = tiny_run(tmp_path, name="coreml", students=["tinybert-4l"], pruning=[[]], quantization=["palettize"],
                    measure={"lengths": [8], "runs": 2, "warmup": 0, "memory": False})
    searched = alambic("search", str(path), "--json", cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr[-3000:]
    rows = json.loads(searched.stdout[searched.stdout.index("{"):])["rows"]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["runtime"] == "coreml"
    assert rows[0]["latency_p50_ms"] is None and rows[0]["latency_note"] == UNTIMED["coreml"]

    front = json.loads(alambic("front", str(path), "--json", cwd=tmp_path).stdout)
    assert [r["on_front"] for r in front["rows"]] == [True]
    exported = alambic("export", str(path), "--candidate", rows[0]["candidate_id"], "--format", "coreml",
                       "--option", "coreml.updatable=false", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    checks = {c["name"]: c["ok"] for c in json.loads(exported.stdout)["formats"]["coreml"]["checks"]}
    assert checks["Core ML package = the one the candidate was measured as"] is True
    assert checks["lut4 weights"] is True
