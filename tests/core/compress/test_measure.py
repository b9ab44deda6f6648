"""core/compress/measure.py: size on disk, parameters, latency, peak RSS and accuracy of an artifact, in
PyTorch and in ONNX Runtime, with the machine and the thread count stated; and the runtime contract:
every runtime in RUNTIMES timed the same way (ExecuTorch's own measurement: test_executorch.py)."""

from __future__ import annotations

import json
import resource

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from rich.console import Console

from alambic.compress.latency import RUNTIMES, UNTIMED
from alambic.compress.measure import (
    Measurement,
    format_measurements,
    measure_onnx,
    measure_pytorch,
    measure_speed,
    model_files,
    size_on_disk,
    vocab_files,
)
from alambic.errors import AlambicError

VOCAB = 300
LENGTHS = (8, 16)
FAST = {"runs": 3, "warmup": 1}
FEATURES = Features({
    "input_ids": List(Value("int32")), "attention_mask": List(Value("int8")),
    "token_type_ids": List(Value("int8")), "label": ClassLabel(names=["a", "b", "c"]),
    "length": Value("int64"),
})


@pytest.fixture(scope="module")
def test_split() -> Dataset:
    g = torch.Generator().manual_seed(0)
    rows = [[2, *torch.randint(5, VOCAB, (int(n),), generator=g).tolist(), 3]
            for n in torch.randint(3, 12, (40,), generator=g)]
    return Dataset.from_dict({
        "input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
        "token_type_ids": [[0] * len(r) for r in rows], "label": [i % 3 for i in range(len(rows))],
        "length": [len(r) for r in rows],
    }, features=FEATURES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved 2-layer roberta-l4 with a vocab.txt, and files a phone does not ship."""
    from alambic.plugins.students import RobertaL4

    torch.manual_seed(0)
    model = RobertaL4.build(num_labels=3, layers=2, hidden=64, heads=4, ffn=128, vocab_size=VOCAB).eval()
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(VOCAB)), encoding="utf-8")
    (path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}), encoding="utf-8")
    (path / "manifest.json").write_text("{}", encoding="utf-8")
    return path


def test_size_is_the_bytes_of_the_files_a_phone_ships(folder):
    files = model_files(folder) + vocab_files(folder)
    assert [f.name for f in files] == ["model.safetensors", "config.json", "vocab.txt"]
    assert size_on_disk(files) == sum(f.stat().st_size for f in files)
    with pytest.raises(AlambicError, match="no model weights"):
        model_files(folder / "nowhere")
    with pytest.raises(AlambicError, match="no such file"):
        size_on_disk([folder / "missing.onnx"])


def test_pytorch_measurement(folder, test_split):
    from transformers import AutoModelForSequenceClassification

    from alambic.train.loop import evaluate
    from alambic.train.models import params

    threads = torch.get_num_threads()
    ballast = b"x" * 2**28  # this process's 256 MiB must not count as the child's peak
    m = measure_pytorch(folder, test_split, LENGTHS, threads=1, **FAST)
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del ballast
    assert torch.get_num_threads() == threads  # pinned for the measurement only
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert m.runtime == "pytorch" and m.params == params(model)
    assert set(m.files) == {"model.safetensors", "config.json", "vocab.txt"}  # not metrics, manifest
    assert m.size_bytes == sum(m.files.values()) == size_on_disk(model_files(folder) + vocab_files(folder))
    assert set(m.latency_ms) == {"8", "16"}
    assert all(0 < t["p50"] <= t["p90"] < 5000 for t in m.latency_ms.values())
    assert (m.threads, m.runs, m.warmup) == (1, 3, 1)
    assert m.machine["threads"] == 1 and m.machine["cpu"] and m.machine["runtime"].startswith("torch")
    expected = evaluate(model, test_split)
    assert (m.accuracy, m.macro_f1, m.examples) == (expected["accuracy"], expected["macro_f1"], 40)
    assert m.memory["peak_rss_bytes"] > m.memory["baseline_rss_bytes"] > 50 * 2**20  # torch alone
    assert m.memory["peak_rss_bytes"] < parent_peak - 2**27
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    headline = m.headline()
    assert headline["latency_length"] == 16 and headline["latency_p50_ms"] == m.latency_ms["16"]["p50"]
    assert headline["size_mb"] == m.size_bytes / 1e6 and headline["peak_mem_mb"] > 50


def test_onnx_measurement_and_the_table(folder, test_split, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from alambic.compress.onnx_export import export_onnx, file_bytes

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    path = export_onnx(model, tmp_path / "model.onnx")
    onnx_m = measure_onnx(path, test_split, LENGTHS, threads=1, tokenizer_files=vocab_files(folder), **FAST)
    torch_m = measure_pytorch(folder, test_split, LENGTHS, threads=1, memory=False, **FAST)
    assert onnx_m.runtime == "onnxruntime" and onnx_m.machine["runtime"].startswith("onnxruntime")
    assert onnx_m.files == {"model.onnx": file_bytes(path), "vocab.txt": (folder / "vocab.txt").stat().st_size}
    assert onnx_m.accuracy == torch_m.accuracy and onnx_m.examples == 40  # the same model, exported
    assert abs(onnx_m.params - torch_m.params) < 0.05 * torch_m.params
    assert all(0 < t["p50"] <= t["p90"] < 5000 for t in onnx_m.latency_ms.values())
    assert onnx_m.threads == onnx_m.machine["threads"] == 1
    # the ONNX child imports onnxruntime, not torch: its baseline is far below torch's
    assert 0 < onnx_m.memory["baseline_rss_bytes"] < onnx_m.memory["peak_rss_bytes"]
    assert onnx_m.memory["baseline_rss_bytes"] < 150 * 2**20
    assert torch_m.memory == {}

    console = Console(width=160, record=True)
    console.print(format_measurements({"pytorch": torch_m, "onnx": onnx_m.to_dict()}))
    text = console.export_text()
    assert "latency p50 ms @16" in text and "(x " in text and "1 thread(s)" in text
    assert onnx_m.machine["cpu"] in text


def test_bad_inputs_are_refused(folder, test_split):
    with pytest.raises(AlambicError, match="lengths"):
        measure_pytorch(folder, test_split, (1,), threads=1, memory=False, **FAST)
    with pytest.raises(AlambicError, match="rows"):
        measure_pytorch(folder, test_split.select([]), LENGTHS, threads=1, memory=False, **FAST)


# --- the runtime contract -------------------------------------------------------------------


def _artifact(runtime: str, folder, tmp_path):
    """An artifact of the test model in ``runtime``: what its measurement times."""
    from transformers import AutoModelForSequenceClassification

    if runtime == "pytorch":
        return folder
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    if runtime == "onnxruntime":
        from alambic.compress.onnx_export import export_onnx

        return export_onnx(model, tmp_path / "model.onnx")
    if runtime == "executorch":
        pytest.importorskip("executorch", reason="ExecuTorch is not installed: pip install -e '.[phone]'")
        from alambic.compress.executorch import export_pte

        return export_pte(model, tmp_path / "model.pte", max_length=16).path
    raise AssertionError(f"a runtime without a contract: make an artifact of {runtime!r} here")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_is_timed_with_its_memory_threads_and_version(runtime, folder, tmp_path):
    """What a search's serial pass asks of every runtime in RUNTIMES: latency at each length, the
    peak RSS of a fresh process running it, the threads, and the runtime's name and version."""
    found = measure_speed(runtime, _artifact(runtime, folder, tmp_path), (8, 16), threads=1, vocab_size=VOCAB,
                          model_dir=folder, runs=2, warmup=0, memory=True)
    assert set(found["latency_ms"]) == {"8", "16"}
    assert all(0 < t["p50"] <= t["p90"] < 5000 for t in found["latency_ms"].values())
    assert found["memory"]["peak_rss_bytes"] > found["memory"]["baseline_rss_bytes"] > 0
    assert found["threads"] == found["machine"]["threads"] == 1 and found["machine"]["cpu"]
    package = {"pytorch": "torch", "onnxruntime": "onnxruntime", "executorch": "executorch"}[runtime]
    assert found["machine"]["runtime"].split()[0] == package


def test_runtimes_that_cannot_run_here_are_never_timed(folder):
    for runtime in UNTIMED:
        with pytest.raises(AlambicError, match="cannot time"):
            measure_speed(runtime, folder, (8,), threads=1)
    with pytest.raises(AlambicError, match="unknown runtime"):
        measure_speed("tflite", folder, (8,), threads=1)
    assert not set(UNTIMED) & set(RUNTIMES)
