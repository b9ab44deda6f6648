"""core/compress/executorch.py: a tiny student of each built-in architecture lowered to an ExecuTorch
program on XNNPACK (fp32, and int8 for the two graphs there are: BERT and MobileBERT), run in
ExecuTorch's runtime against PyTorch; its measurement; and the search's timing in it
(``search.measure.runtimes``).

The int8 checks use the toy models trained in test_onnx_export.py: agreement on a random model is noise.
"""

from __future__ import annotations

import functools
import json
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alambic.compress.latency import EXTRA_RUNTIMES, RUNTIMES
from alambic.errors import AlambicError
from tests.core.compress.test_onnx_export import padded_batch, tiny_classifier, tiny_data

# CI installs the extra (.ci/run: .[dev,phone]); a checkout without it skips rather than fails
pytest.importorskip("executorch", reason="ExecuTorch is not installed: pip install -e '.[phone]'")

from alambic.compress.executorch import (  # noqa: E402 - after the skip: it needs nothing of executorch, its uses do
    MIN_LENGTH,
    compare_pte,
    export_pte,
    is_int8,
    load_pte,
    max_length_of,
    pte_evaluate,
    pte_latency_ms,
    pte_logits,
    set_threads,
)

STUDENTS = ("roberta-l4", "tinybert-4l", "teacher-layers", "mobilebert-adapter")
TRAINED = ("roberta-l4", "mobilebert-adapter")  # tiny_classifier's: one BERT graph, one MobileBERT graph
#: their int8 programs; MobileBERT's lowering takes ~40 s: slow, out of CI
INT8 = ("roberta-l4", pytest.param("mobilebert-adapter", marks=pytest.mark.slow))
MAX_LENGTH = 32


@functools.cache
def student(name: str) -> torch.nn.Module:
    """A 2 x 64 student: trained on the synthetic task (roberta-l4, mobilebert-adapter), else built
    from its config (tinybert-4l and teacher-layers are BERT graphs too: fp32 parity needs no training)."""
    if name in TRAINED:
        return tiny_classifier(name)
    from alambic.plugins.students import STUDENTS as CLASSES

    cls = next(c for c in CLASSES if c.id == name)
    torch.manual_seed(0)
    return cls.build(num_labels=3, layers=2, hidden=64, heads=2, ffn=128).eval()


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """(student, int8) -> PteInfo, each lowered once for the module."""
    folder = tmp_path_factory.mktemp("pte")
    calibration = tiny_data(32, seed=2)  # other rows than the ones scored

    @functools.cache
    def lowered(name: str, int8: bool = False):
        return export_pte(student(name), folder / f"{name}-{'int8' if int8 else 'fp32'}.pte", int8=int8,
                          max_length=MAX_LENGTH, calibration=calibration if int8 else None)

    return lowered


def labelled():
    """tiny_data() with a ClassLabel, as the real splits have (scoring reads the label names)."""
    from datasets import ClassLabel

    return tiny_data().cast_column("label", ClassLabel(names=["a", "b", "c"]))


def torch_logits(model, batch) -> np.ndarray:
    with torch.inference_mode():
        return model(**batch).logits.numpy()


@pytest.mark.parametrize("name", STUDENTS)
def test_the_fp32_program_of_each_student_runs_and_agrees_with_pytorch(name, programs):
    info = programs(name)
    assert info.path.is_file() and info.bytes == info.path.stat().st_size and not info.int8
    assert info.delegated > 0 and "XNNPACK runs" in info.describe()
    method = load_pte(info.path, threads=1)
    assert max_length_of(method) == MAX_LENGTH
    model = student(name)
    found = compare_pte(model, method, tiny_data())
    assert found["examples"] == 48 and found["argmax_agreement"] == 1.0 and found["max_abs_diff"] < 1e-4
    # a padded batch runs row by row without its padding, as a phone runs it; a 2-token row
    # ([CLS] [SEP]) is padded to the program's shortest input, masked
    batch = padded_batch(3, 20)
    assert np.abs(pte_logits(method, batch) - torch_logits(model, batch)).max() < 1e-4
    short = {"input_ids": torch.tensor([[101, 102]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    assert MIN_LENGTH == 3 and pte_logits(method, short).shape == (1, 3)
    if name != "mobilebert-adapter":  # BERT: the masked token changes nothing (MobileBERT's trigram sees it)
        assert np.abs(pte_logits(method, short) - torch_logits(model, short)).max() < 1e-4


@pytest.mark.parametrize("name", INT8)
def test_the_int8_program_agrees_with_pytorch_and_is_smaller(name, programs):
    info = programs(name, int8=True)
    assert info.int8 and info.bytes < programs(name).bytes  # the encoder's linear weights in int8
    method = load_pte(info.path)
    found = compare_pte(student(name), method, tiny_data())
    assert found["argmax_agreement"] >= 0.95 and found["accuracy"] >= found["reference_accuracy"] - 0.05
    assert 0 < found["max_abs_diff"] < 1.0  # int8 noise, not a broken graph
    scores = pte_evaluate(method, labelled())
    assert scores["accuracy"] == found["accuracy"] and scores["examples"] == 48


def test_latency_threads_and_refusals(programs, tmp_path):
    method = load_pte(programs("roberta-l4").path, threads=1)
    assert set_threads(1) == 1  # the pool read back: what a measurement states
    timing = pte_latency_ms(method, 21128, 16, runs=3, warmup=1)
    assert 0 < timing["p50"] <= timing["p90"] < 5000
    assert set(pte_latency_ms(method, 21128, 2, runs=1, warmup=0)) == {"p50", "p90"}  # padded to 3
    too_long = {"input_ids": torch.ones(1, MAX_LENGTH + 1, dtype=torch.long)}
    with pytest.raises(AlambicError, match=f"takes 1 to {MAX_LENGTH}"):
        pte_logits(method, too_long)
    with pytest.raises(AlambicError, match="needs calibration rows"):
        export_pte(student("roberta-l4"), tmp_path / "x.pte", int8=True)
    with pytest.raises(AlambicError, match="no ExecuTorch program"):
        load_pte(tmp_path / "missing.pte")
    with pytest.raises(AlambicError, match="threads must be >= 1"):
        set_threads(0)


def test_which_candidates_are_int8():
    assert is_int8("dynamic-int8") and is_int8({"quantizer": "static-int8"})
    assert is_int8({"quantizer": "mixed", "options": {"ffn": "int8", "attention": "fp16"}})
    assert not any(map(is_int8, ("none", None, "fp16", {"quantizer": "palettize", "options": {"bits": 4}})))


def test_measure_executorch(programs):
    from alambic.compress.measure import measure_executorch

    split = labelled()
    info = programs("roberta-l4")
    m = measure_executorch(info.path, split, (8, 16), threads=1, params=7, runs=2, warmup=0, memory=True)
    assert m.runtime == "executorch" and m.files == {info.path.name: info.bytes} and m.params == 7
    assert set(m.latency_ms) == {"8", "16"} and m.threads == 1 and m.examples == 48
    assert m.accuracy == pte_evaluate(load_pte(info.path), split)["accuracy"] >= 0.9
    assert m.machine["runtime"].startswith("executorch 1.5") and m.machine["threads"] == 1
    assert m.memory["peak_rss_bytes"] > m.memory["baseline_rss_bytes"] > 50 * 2**20  # torch + executorch


def test_search_measure_runtimes_name_what_can_be_timed():
    from alambic.compress.records import MeasureSettings
    from alambic.config import MeasureConfig

    assert set(EXTRA_RUNTIMES) <= set(RUNTIMES)
    allowed = typing.get_args(typing.get_args(MeasureConfig.model_fields["runtimes"].annotation)[0])
    assert allowed == EXTRA_RUNTIMES, "config.MeasureConfig.runtimes lists latency.EXTRA_RUNTIMES"
    assert MeasureSettings(runtimes=["executorch", "executorch"]).runtimes == ("executorch",)
    with pytest.raises(AlambicError, match="can also time candidates in executorch"):
        MeasureSettings(runtimes=("coreml",))
    assert MeasureConfig().runtimes == [] and MeasureConfig(runtimes=["executorch"]).runtimes == ["executorch"]


@pytest.mark.slow  # ~20 s of Ray and lowering; the timing's own code is covered by test_measure's contract
def test_the_search_times_each_candidate_in_executorch_too(tmp_path):
    """search.measure.runtimes [executorch]: the serial pass lowers each ok candidate's model folder
    (int8 for an int8 candidate) and times it into executorch_* columns, as a stage reused on this
    machine; the artifact's own timing keeps the key it had; a Core ML candidate is left out."""
    from alambic.compress.chain import MODEL_DIR, RECORD_FILE
    from alambic.compress.records import MeasureSettings
    from alambic.search.results import COLUMNS
    from alambic.search.timing import RUNTIME_COLUMNS, time_candidates
    from alambic.store import Store

    store = Store.open(tmp_path / "artifacts")
    key = "c0ffee" * 4
    stage = store.local_path(store.stage_path(key))
    student("roberta-l4").save_pretrained(stage / MODEL_DIR)
    (stage / RECORD_FILE).write_text(json.dumps({"quantization": {"quantizer": "dynamic-int8"}}), encoding="utf-8")
    ctx = SimpleNamespace(store=store)
    rows = [{"candidate_id": "c1", "status": "ok", "runtime": "pytorch", "quantization": "dynamic-int8",
             "compress_key": key, "artifact": f"{store.stage_path(key)}/{MODEL_DIR}"},
            {"candidate_id": "c2", "status": "ok", "runtime": "coreml", "quantization": "palettize",
             "compress_key": key, "artifact": f"{store.stage_path(key)}/x.mlpackage"}]
    stages = lambda: {p.name for p in Path(store.local_path("stages")).iterdir()  # noqa: E731
                      if not p.name.startswith(".")}
    plain = MeasureSettings(lengths=(8,), runs=2, warmup=0, memory=False)
    [own, _] = time_candidates(ctx, [dict(r) for r in rows], plain)
    before = stages()
    assert own["latency_p50_ms"] > 0 and "executorch_p50_ms" not in own

    settings = MeasureSettings(lengths=(8,), runs=2, warmup=0, memory=False, runtimes=("executorch",))
    [timed, coreml] = time_candidates(ctx, [dict(r) for r in rows], settings)
    assert set(RUNTIME_COLUMNS["executorch"]) <= set(COLUMNS)
    assert timed["latency_p50_ms"] == own["latency_p50_ms"]  # its own timing reused: the same key
    assert 0 < timed["executorch_p50_ms"] <= timed["executorch_p90_ms"] and timed["executorch_size_mb"] > 0
    assert [coreml.get(c) for c in RUNTIME_COLUMNS["executorch"]] == [None] * 3 and coreml["latency_note"]
    [new] = stages() - before
    found = json.loads((Path(store.local_path(store.stage_path(new))) / "timing.json").read_text(encoding="utf-8"))
    assert found["int8"] is True and found["runtime"] == "executorch" and "int8" in found["lowered"]
    assert set(found["latency_ms"]) == {"8"} and found["machine"]["runtime"].startswith("executorch")
    again = time_candidates(ctx, [dict(r) for r in rows], settings)[0]
    assert again["executorch_p50_ms"] == timed["executorch_p50_ms"] and stages() == before | {new}  # reused
