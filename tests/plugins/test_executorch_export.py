"""plugins/executorch_export.py: the `executorch` exporter: registered, its options, the contract's
checks on a model folder, and `alambic export --format executorch` on a tiny compress stage (an int8
candidate: its .pte is int8, calibrated on the run's train rows), verified in ExecuTorch's runtime on
every test row."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from alambic.errors import AlambicError
from alambic.manager import build_registry, get_plugin_manager
from tests.core.ship.test_export import run  # noqa: F401 - the tiny compress stage (a module fixture)
from tests.plugins.test_exporters import TEXTS, tiny_folder

pytest.importorskip("executorch", reason="ExecuTorch is not installed: pip install -e '.[phone]'")

from alambic.plugins.executorch_export import ExecuTorch, ExecuTorchOptions  # noqa: E402 - after the skip


def test_the_exporter_is_registered_with_its_options():
    exporters = build_registry(get_plugin_manager(env={}))["exporters"]
    assert exporters.get("executorch") is ExecuTorch
    assert ExecuTorch.options({"int8": True}) == ExecuTorchOptions(int8=True)
    with pytest.raises(AlambicError, match="calibration_rows must be >= 1"):
        ExecuTorch.options({"calibration_rows": 0})
    failure = ExecuTorch.failure(RuntimeError("no lowering for op 'aten::foo'"))
    assert failure.op == "aten::foo" and "executorch.int8=false" in failure.fallback
    assert "--format onnx" in failure.fallback


def test_a_model_folder_exports_fp32_and_agrees_on_every_row():
    """A plain save_pretrained folder (no quantization): fp32, each row's logits within float
    rounding of PyTorch's; the size is its weights'; tokenizer and labels beside the program."""
    from datasets import Dataset

    from alambic.compress.executorch import load_pte, max_length_of
    from alambic.ship.exporter import load_source

    with tempfile.TemporaryDirectory() as tmp:
        source = load_source(tiny_folder(Path(tmp)), test_split=Dataset.from_dict(
            {"text": TEXTS, "label": [i % 3 for i in range(len(TEXTS))]}), max_length=16)
        out = Path(tmp) / "out"
        out.mkdir()
        result = ExecuTorch.export(source, out, ExecuTorch.options())
        checks = {c.name: c for c in result.checks}
        assert result.ok, [(c.name, c.value) for c in result.checks]
        runtime = checks["ExecuTorch (XNNPACK) vs PyTorch (test split)"]
        assert runtime.covers == "runtime" and runtime.data["argmax_agreement"] == 1.0
        assert runtime.data["max_abs_diff"] < 1e-3 and runtime.data["examples"] == len(TEXTS)
        assert checks["model.pte size vs its weights"].ok and checks["ops delegated to XNNPACK"].data["delegated"]
        assert {p.name for p in result.files} >= {"model.pte", "config.json", "vocab.txt", "tokenizer.json"}
        assert result.spec["precision"] == "fp32" and result.spec["inputs"][0]["sequence"] == {"min": 3, "max": 16}
        assert max_length_of(load_pte(out / "model.pte")) == 16
        json.dumps(result.to_dict(), default=str)


@pytest.mark.slow  # ~30 s: int8 lowering; the fp32 export's checks run in CI
def test_cli_export_of_an_int8_stage_writes_a_verified_int8_pte(run, tmp_path):  # noqa: F811 - the fixture
    from alambic.compress.executorch import compare_pte, load_pte
    from alambic.ship.exporter import load_source
    from tests.core.test_cli import alambic

    root, ctx, record = run  # a dynamic-int8 candidate (ONNX Runtime): int8 weights, so an int8 program
    out = tmp_path / "cli-export"
    done = alambic("export", str(root / "run.yaml"), "--stage", str(record.path), "--format", "executorch",
                   "--out", str(out), cwd=root)
    assert done.returncode == 0, done.stderr
    assert "ExecuTorch (XNNPACK) vs PyTorch" in done.stdout and "bundle:" in done.stdout
    verification = json.loads((out / "verification.json").read_text(encoding="utf-8"))
    exported = verification["formats"]["executorch"]
    checks = {c["name"]: c for c in exported["checks"]}
    runtime = checks["ExecuTorch (XNNPACK) vs PyTorch (test split)"]
    assert exported["ok"] and runtime["ok"] and runtime["covers"] == "runtime"
    # an int8 program is held to the guard's budget on every test row: it calibrated on train rows
    assert runtime["data"]["examples"] == verification["test_rows"] and runtime["data"]["budget_points"] == 1.0
    assert runtime["data"]["accuracy"] >= runtime["data"]["reference_accuracy"] - 0.01
    assert "int8" in exported["notes"][0] and "calibrated on 32 train rows" in exported["notes"][1]
    for name in ("executorch/model.pte", "executorch/config.json", "executorch/vocab.txt", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["meta"]["formats"] == ["executorch"]
    assert manifest["meta"]["io"]["executorch"]["precision"] == "int8"
    # the shipped file, run again here on every test row: it predicts as the stage's PyTorch model
    source = load_source(record.path, test_split=ctx.prepared.raw["test"], max_length=16)
    found = compare_pte(source.model, load_pte(out / "executorch" / "model.pte", threads=1), source.test)
    assert found["examples"] == verification["test_rows"] and found["argmax_agreement"] >= 0.95


def test_an_int8_export_without_test_rows_says_what_to_do():
    from alambic.ship.exporter import load_source

    with tempfile.TemporaryDirectory() as tmp:
        source = load_source(tiny_folder(Path(tmp)), max_length=16)
        with pytest.raises(AlambicError, match="calibrates on the run's train rows, or else on test rows"):
            ExecuTorch.export(source, Path(tmp), ExecuTorch.options({"int8": True}))


def test_int8_calibrates_on_train_rows_and_checks_every_test_row():
    """With the run's train split, calibration takes train rows (a seeded sample: not the file's
    first rows) and the check keeps every test row; without it, a quarter of the test rows at most."""
    from datasets import Dataset

    from alambic.plugins.executorch_export import _split
    from alambic.ship.exporter import load_source

    test = Dataset.from_dict({"text": TEXTS, "label": [i % 3 for i in range(len(TEXTS))]})
    train_texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 40)]
    train = Dataset.from_dict({"text": train_texts, "label": [i % 3 for i in range(len(train_texts))]})
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_folder(Path(tmp))
        source = load_source(folder, test_split=test, calibration_split=train, max_length=16)
        calibration, checked = _split(source, 8)
        assert len(calibration) == 8 and len(checked) == len(TEXTS)
        assert source.calibration["input_ids"][:8] != source.tokenizer(train_texts[:8])["input_ids"]
        assert all(row["input_ids"] in source.calibration["input_ids"] for row in calibration)
        held_out = load_source(folder, test_split=test, max_length=16)
        calibration, checked = _split(held_out, 8)
        assert len(calibration) == max(1, len(TEXTS) // 4) and len(checked) == len(TEXTS) - len(calibration)
