"""core/ship/export.py: a compress stage exported to hf, onnx and coreml, verified, bundled atomically;
one format failing leaves the others; which stage a run exports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from alambic.errors import AlambicError, PluginError
from alambic.ship.export import export_stage, format_verification, resolve_stage
from alambic.ship.exporter import load_source


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 160 headlines whose label is their first character, a 2-layer roberta-l4 trained on
    them, and its compress stage (vocabulary pruned, dynamic INT8 for ONNX Runtime)."""
    from alambic.compress.chain import compress
    from alambic.compress.records import MeasureSettings, parse_steps
    from tests.conftest import train_tiny_run

    root = tmp_path_factory.mktemp("export-run")
    rows = [f"{'体财'[i % 2]}育新闻第{i}条\t{'体育' if i % 2 == 0 else '财经'}" for i in range(160)]
    ctx, folder = train_tiny_run(root, rows, guard={"max_drop": 1.0, "retries": 0},
                                 export={"author": "alambic tests", "license": "Apache-2.0", "description": "体育 or 财经"})
    settings = MeasureSettings(lengths=(8,), runs=2, warmup=0, memory=False)
    record = compress(ctx, folder, parse_steps("vocab"), "dynamic-int8", measure=settings)
    return root, ctx, record


@pytest.fixture(scope="module")
def exported(run):
    root, ctx, record = run
    result = export_stage(record.path, root / "export", test_split=ctx.prepared.raw["test"],
                          metadata=ctx.config.export.model_dump(), max_length=16, registry=ctx.registry)
    return result


def table_text(result) -> str:
    console = Console(width=220, record=True)
    console.print(format_verification(result))
    return console.export_text()


def test_all_three_formats_are_exported_and_verified(exported):
    assert not exported.failed, table_text(exported)
    # every check passes but ONNX's ~1/4 size ratio: a 2 x 64 graph is mostly fixed overhead (Core ML's
    # package is held to its weights as held instead, which a small model meets)
    failing = [c.name for e in exported.exported.values() for c in e.checks if c.ok is False]
    assert failing == ["model.onnx (int8) size vs fp32"] or not failing, table_text(exported)
    sized = next(c for c in exported.exported["coreml"].checks
                 if c.name == "Classifier.mlpackage size vs its weights as held")
    assert sized.ok and sized.data["weights_bytes"] < sized.data["bytes"] <= sized.data["bound"]
    assert set(exported.exported) == {"hf", "onnx", "coreml"}
    bundle = exported.path
    for name in ("hf/model.safetensors", "hf/config.json", "hf/vocab.txt", "hf/tokenizer.json", "hf/README.md",
                 "onnx/model.onnx", "onnx/config.json", "onnx/vocab.txt",
                 "coreml/Classifier.mlpackage/Manifest.json", "coreml/UpdatableClassifier.mlmodel",
                 "coreml/vocab.txt", "coreml/tokenizer.json", "manifest.json", "verification.json", "README.md"):
        assert (bundle / name).is_file(), name
    assert not list(bundle.parent.glob(".export.tmp-*")), "the scratch folder was renamed into place"


def test_every_check_says_what_it_covered(exported):
    """verification.json, the table and the bundle README say, for each check, whether the shipped
    file ran in its runtime, the converter's PyTorch input was compared, the file was read back, or
    a Mac is needed; Core ML's own predictions are never claimed on Linux."""
    from alambic.ship.exporter import COVERS

    found = json.loads((exported.path / "verification.json").read_text(encoding="utf-8"))["formats"]
    covers = {(fmt, c["name"]): c["covers"] for fmt, f in found.items() for c in f["checks"]}
    assert set(covers.values()) <= set(COVERS)
    assert covers[("onnx", "ONNX Runtime vs PyTorch (test split)")] == "runtime"
    assert covers[("hf", "transformers.pipeline labels = source model's")] == "runtime"
    assert covers[("coreml", "wrapper vs PyTorch model (eager, padded batches)")] == "source graph"
    assert covers[("coreml", "Classifier.mlpackage spec loads")] == "structure"
    assert covers[("coreml", "Core ML weights read back and scored (fp16 compute, test split)")] == "weights scored"
    assert covers[("coreml", "Core ML weights read back = the converted module's, up to their precision")] \
        == "weights scored"
    mac = [c for c in found["coreml"]["checks"] if c["covers"] == "needs a Mac"]
    assert [c["name"] for c in mac] == ["prediction by the Core ML runtime vs ONNX Runtime / PyTorch",
                                        "one MLUpdateTask on UpdatableClassifier.mlmodel",
                                        "the app's tokenizer (swift-transformers) gives tokenizer_vectors.json"]
    assert all(c["ok"] is None for c in mac) and "check_coreml.py" in mac[0]["value"]
    assert "| check | covers | result | ok |" in (exported.path / "README.md").read_text(encoding="utf-8")
    assert "covers" in table_text(exported)


def test_hf_pipeline_and_onnx_runtime_predict_as_the_source(exported):
    verification = json.loads((exported.path / "verification.json").read_text(encoding="utf-8"))
    rows = verification["test_rows"]
    assert rows > 20 and verification["source_test_accuracy"] == 1.0
    checks = {f: {c["name"]: c for c in v["checks"]} for f, v in verification["formats"].items()}
    pipeline = checks["hf"]["transformers.pipeline labels = source model's"]
    assert pipeline["ok"] and pipeline["data"] == {"agreement": 1.0, "examples": rows}
    ort = checks["onnx"]["ONNX Runtime vs PyTorch (test split)"]
    # an int8 graph is held to the guard's budget on accuracy (agreement is reported, not a gate)
    assert ort["ok"] and ort["data"]["examples"] == rows and ort["data"]["budget_points"] == 1.0
    assert ort["data"]["accuracy"] >= ort["data"]["reference_accuracy"] - 0.01
    assert ort["data"]["argmax_agreement"] >= 0.995 and ort["data"]["max_abs_diff"] < 0.1  # int8 noise only
    assert checks["onnx"]["opset >= 17"]["ok"] and checks["onnx"]["onnx.checker (full)"]["ok"]
    assert checks["coreml"]["traced classifier vs PyTorch model (batch 1)"]["data"]["max_abs_diff"] < 1e-4
    assert "the candidate's dynamic-int8 graph" in verification["formats"]["onnx"]["notes"][0]


def test_the_shipped_onnx_is_the_candidates_int8_graph(run, exported):
    _, _, record = run
    shipped = (exported.path / "onnx" / "model.onnx").read_bytes()
    assert shipped == record.artifact.read_bytes()
    sizes = json.loads((exported.path / "verification.json").read_text())["formats"]["onnx"]["checks"]
    ratio = next(c for c in sizes if c["name"].startswith("model.onnx (int8) size"))["data"]
    assert 0 < ratio["ratio"] < 1 and ratio["fp32_bytes"] > ratio["bytes"]  # ~1/4 needs a real-size model
    io = json.loads((exported.path / "manifest.json").read_text(encoding="utf-8"))["meta"]["io"]["onnx"]
    assert io["onnxruntime_session"] == {"disabled_optimizers": ["SkipLayerNormFusion"]}  # as it was measured


def test_manifest_lists_every_file_with_its_sha256(exported):
    manifest = json.loads((exported.path / "manifest.json").read_text(encoding="utf-8"))
    files = {p.relative_to(exported.path).as_posix() for p in exported.path.rglob("*") if p.is_file()}
    assert {f["path"] for f in manifest["files"]} == files - {"manifest.json"}
    for entry in manifest["files"]:
        data = (exported.path / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
    meta = manifest["meta"]
    assert manifest["kind"] == "export" and meta["formats"] == ["hf", "onnx", "coreml"] and meta["failed"] == {}
    assert meta["labels"] == ["体育", "财经"] and meta["max_length"] == 16
    assert meta["recipe"]["quant"] == "dynamic-int8" and meta["recipe"]["prune_key"]
    assert meta["recipe"]["steps"] == [{"step": "vocab", "outcome": "kept"},
                                       {"step": "quant:dynamic-int8", "outcome": "kept"}]
    assert meta["io"]["onnx"]["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    assert meta["io"]["coreml"]["Classifier.mlpackage"]["outputs"][0]["name"] == "label"
    assert meta["metrics"]["after"]["accuracy"] == 1.0


def test_readmes_tell_the_app_developer_and_the_model_card_how_it_was_made(exported):
    readme = (exported.path / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# 体育 or 财经") and "Labels (2): 体育, 财经" in readme
    assert "vocab.txt" in readme and "MLUpdateTask" in readme and "Float32" in readme
    assert "max \\|diff\\|" in readme  # table cells escape the pipe
    card = (exported.path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-classification" in card and "license: Apache-2.0" in card
    assert "- vocab: kept" in card and "quant:dynamic-int8" in card and '"quant": "dynamic-int8"' in card
    assert re.search(r"Measured in onnxruntime: validation accuracy \d\.\d{4}, test accuracy \d\.\d{4}, ", readme)


def test_the_readme_takes_the_latency_the_search_timed_and_names_each_split(run):
    """A search's candidates are timed after the search (the results row), not in their stage."""
    from alambic.ship.export import bundle_readme

    _, _, record = run
    row = {"candidate_id": "c1", "val_accuracy": 0.91, "test_accuracy": 0.9, "latency_p50_ms": 1.234,
           "latency_threads": 2.0, "latency_machine": "Xeon, 2 cores, ci"}
    readme = bundle_readme(load_source(record.path, recipe=row), {}, {})
    after, validation = record.record["after_headline"], record.record["validation"]
    assert (f"Measured in onnxruntime: validation accuracy {validation['accuracy']:.4f}, test accuracy "
            f"{after['accuracy']:.4f}, {after['size_mb']:.2f} MB, p50 latency 1.23 ms at 2 thread(s) on Xeon, 2 "
            "cores, ci.") in readme


def test_verification_table_is_printed(exported):
    text = table_text(exported)
    for expected in ("argmax", "max |diff|", "exactly one updatable layer", "size Classifier.mlpackage", "ok"):
        assert expected in text


def test_a_failing_format_leaves_the_others_and_names_op_and_fallback(run, tmp_path, monkeypatch):
    from alambic.ship import coreml_export

    root, ctx, record = run

    def no_such_op(*args, **kwargs):
        raise RuntimeError("PyTorch convert function for op 'new_ones' not implemented.")

    monkeypatch.setattr(coreml_export, "convert_classifier", no_such_op)
    result = export_stage(record.path, tmp_path / "bundle", ("onnx", "coreml", "hf"),
                          test_split=ctx.prepared.raw["test"], max_length=16, registry=ctx.registry)
    assert set(result.exported) == {"onnx", "hf"} and set(result.failed) == {"coreml"}
    failure = result.failed["coreml"]
    assert failure.op == "new_ones" and "--format onnx" in failure.fallback and "iOS15" in failure.fallback
    assert failure.message.startswith("coreml export failed at op 'new_ones': RuntimeError")
    assert (tmp_path / "bundle" / "onnx" / "model.onnx").is_file() and (tmp_path / "bundle" / "hf").is_dir()
    assert not (tmp_path / "bundle" / "coreml").exists()
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["meta"]["formats"] == ["onnx", "hf"] and "new_ones" in manifest["meta"]["failed"]["coreml"]
    verification = json.loads((tmp_path / "bundle" / "verification.json").read_text(encoding="utf-8"))
    assert verification["failed"]["coreml"]["op"] == "new_ones"
    assert "not exported" in (tmp_path / "bundle" / "README.md").read_text(encoding="utf-8")


def test_core_ml_weights_that_lose_more_than_the_guard_fail_the_format(run, tmp_path, monkeypatch):
    """The read-back weights are scored on the test split: weights that no longer give the source's
    answers (here the classifier's, negated as a broken conversion might) fail the Core ML format."""
    import alambic.plugins.exporters as exporters
    from alambic.ship.coreml_scoring import read_back

    def broken(path):
        read = read_back(path)
        negated = {name: -value for name, value in read.weights.items() if name.startswith("classifier")}
        return dataclasses.replace(read, weights=read.weights | negated)

    monkeypatch.setattr(exporters, "read_back", broken)
    root, ctx, record = run
    result = export_stage(record.path, tmp_path / "export", ("coreml",), test_split=ctx.prepared.raw["test"],
                          max_length=16, registry=ctx.registry, options={"coreml": {"updatable": False}})
    assert "the Core ML weights lose more than the guard allows" in result.failed["coreml"].message
    assert "budget 1" in result.failed["coreml"].message


def test_bad_formats_and_options_are_refused_before_any_work(run, tmp_path):
    _, ctx, record = run
    with pytest.raises(PluginError, match="unknown exporters id 'onxx' \\(did you mean 'onnx'\\?\\)"):
        export_stage(record.path, tmp_path / "x", ("onxx",), registry=ctx.registry)
    with pytest.raises(AlambicError, match="exporter 'coreml': unknown option 'epoch' \\(did you mean 'epochs'"):
        export_stage(record.path, tmp_path / "x", ("coreml",), options={"coreml": {"epoch": 3}}, registry=ctx.registry)
    with pytest.raises(AlambicError, match="options given for format 'coreml', which is not exported"):
        export_stage(record.path, tmp_path / "x", ("onnx",), options={"coreml": {}}, registry=ctx.registry)
    with pytest.raises(AlambicError, match="is not a compress stage folder"):
        load_source(tmp_path)
    assert not (tmp_path / "x").exists()


# --- which stage ----------------------------------------------------------------------------


def test_stage_is_resolved_from_results_and_selection(run, tmp_path):
    from alambic.store import Store

    _, _, record = run
    store = Store.open(tmp_path / "run")
    with pytest.raises(AlambicError, match="no selected candidate.*alambic search RUN.*alambic select RUN"):
        resolve_stage(store)
    store.write_json("selected.json", {"candidate_id": "c1", "policy": "tier", "summary": "tier high"})
    with pytest.raises(AlambicError, match="no search results yet.*--stage DIR"):
        resolve_stage(store)
    shutil.copytree(record.path, tmp_path / "run" / "stages" / "abc")  # a link out of the run is refused
    table = pa.table({"candidate_id": ["c0", "c1", "c2"], "stage": ["stages/abc", "stages/abc", None],
                      "status": ["ok", "ok", "failed"], "val_accuracy": [0.9, 0.95, None]})
    pq.write_table(table, tmp_path / "run" / "results.parquet")
    path, recipe = resolve_stage(store)
    assert path == tmp_path / "run" / "stages" / "abc" and recipe["candidate_id"] == "c1"
    assert recipe["selected"]["summary"] == "tier high" and recipe["val_accuracy"] == 0.95
    assert resolve_stage(store, candidate="c0")[1]["candidate_id"] == "c0"
    with pytest.raises(AlambicError, match="no candidate 'c9'.*3 candidates"):
        resolve_stage(store, candidate="c9")
    with pytest.raises(AlambicError, match="candidate c2 has status 'failed'"):
        resolve_stage(store, candidate="c2")
    assert resolve_stage(store, stage="stages/abc") == (tmp_path / "run" / "stages" / "abc", None)
    with pytest.raises(AlambicError, match="not both"):
        resolve_stage(store, candidate="c0", stage=record.path)
    with pytest.raises(AlambicError, match="--stage: folder not found"):
        resolve_stage(store, stage=tmp_path / "nowhere")


# --- paths read from records ---------------------------------------------------------------


def tampered(record, folder, **changes):
    """A copy of the compress stage whose record.json says ``changes`` (dotted keys: quantization.source)."""
    stage = shutil.copytree(record.path, folder)
    found = json.loads((stage / "record.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        head, _, tail = key.replace("__", ".").rpartition(".")
        (found[head] if head else found)[tail] = value
    (stage / "record.json").write_text(json.dumps(found), encoding="utf-8")
    return stage


@pytest.mark.parametrize("key, value", [("artifact", "/etc/passwd"), ("artifact", "../../secret.onnx"),
                                        ("quantization__source", "/etc/passwd"),
                                        ("quantization__source", "quantized/../../../secret.onnx")])
def test_a_record_path_outside_its_stage_stops_the_export_before_any_work(run, tmp_path, key, value):
    """A tampered record.json must not make export copy (or measure) a file outside the stage."""
    from alambic.paths import UnsafePathError

    _, ctx, record = run
    (tmp_path / "secret.onnx").write_bytes(record.artifact.read_bytes())  # a graph the onnx format would ship
    stage = tampered(record, tmp_path / "a" / "stage", **{key: value})
    shown = key.replace("__", ".")
    with pytest.raises(UnsafePathError, match=rf"{stage.resolve()}/record\.json: {shown} '{re.escape(value)}' "
                                              rf"(is absolute or climbs out with '\.\.'|leads outside)"):
        export_stage(stage, tmp_path / "bundle", ("onnx",), test_split=ctx.prepared.raw["test"],
                     max_length=16, registry=ctx.registry)
    assert not (tmp_path / "bundle").exists()


def test_a_stage_symlinked_out_of_its_record_is_refused(run, tmp_path):
    from alambic.paths import UnsafePathError

    _, ctx, record = run
    stage = tampered(record, tmp_path / "stage", artifact="quantized/escape/secret.onnx")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.onnx").write_bytes(record.artifact.read_bytes())
    (stage / "quantized" / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"record\.json: artifact 'quantized/escape/secret\.onnx' leads outside"):
        export_stage(stage, tmp_path / "bundle", ("onnx",), max_length=16, registry=ctx.registry)


@pytest.mark.parametrize("stage", ["/etc", "../../etc", "stages/../../x"])
def test_a_results_rows_stage_outside_the_run_is_refused(tmp_path, stage):
    from alambic.paths import UnsafePathError
    from alambic.store import Store

    store = Store.open(tmp_path / "run")
    (tmp_path / "run").mkdir()
    pq.write_table(pa.table({"candidate_id": ["c1"], "stage": [stage], "status": ["ok"]}),
                   tmp_path / "run" / "results.parquet")
    with pytest.raises(UnsafePathError, match=rf"results\.parquet \(candidate c1\): stage '{re.escape(stage)}' "
                                              r"is absolute or climbs out"):
        resolve_stage(store, candidate="c1")


# --- command line ---------------------------------------------------------------------------


def test_cli_export_of_a_stage_prints_the_verification_table(run, tmp_path):
    from tests.core.test_cli import alambic

    root, _, record = run
    done = alambic("export", str(root / "run.yaml"), "--stage", str(record.path), "--format", "onnx,hf",
                   "--out", str(tmp_path / "cli-export"), "--option", "onnx.opset=18", cwd=root)
    assert done.returncode == 0, done.stderr
    assert "export verification" in done.stdout and "ONNX Runtime vs PyTorch" in done.stdout
    assert "transformers.pipeline" in done.stdout and "bundle:" in done.stdout
    manifest = json.loads((tmp_path / "cli-export" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["meta"]["formats"] == ["onnx", "hf"]
    assert manifest["meta"]["metadata"]["author"] == "alambic tests"


def test_cli_export_in_the_neural_engine_layout_verifies_that_layout(run, tmp_path):
    """--option coreml.layout=ane: Classifier.mlpackage holds the (B, C, 1, S) graph of 1x1
    convolutions, and the verification covers that layout against the PyTorch model."""
    from tests.core.test_cli import alambic

    root, _, record = run
    out = tmp_path / "ane-export"
    done = alambic("export", str(root / "run.yaml"), "--stage", str(record.path), "--format", "coreml", "--out",
                   str(out), "--option", "coreml.layout=ane", "--option", "coreml.updatable=false", cwd=root)
    assert done.returncode == 0, done.stderr
    checks = {c["name"]: c for c in json.loads((out / "verification.json").read_text(encoding="utf-8"))
              ["formats"]["coreml"]["checks"]}
    assert checks["ane layout vs PyTorch model (eager, padded batches)"]["ok"] is True
    assert checks["traced classifier (ane layout) vs PyTorch model (batch 1)"]["ok"] is True
    assert checks["Neural Engine layout: 1x1 convolutions in the program"]["ok"] is True
    # the candidate's dynamic int8, in Core ML's terms, read back and scored as the app holds it
    assert checks["Core ML weights as the candidate's compression (read back)"]["ok"] is True
    assert checks["Core ML weights read back = the converted module's, up to their precision"]["ok"] is True
    assert checks["Core ML weights read back and scored (fp16 compute, test split)"]["ok"] is True
    assert checks["tokenizer files load in swift-transformers (class and component types)"]["ok"] is True
    assert (out / "coreml" / "tokenizer_vectors.json").is_file()
    coreml = out / "coreml"
    assert (coreml / "Classifier.mlpackage").is_dir() and not (coreml / "UpdatableClassifier.mlmodel").exists()


def test_cli_export_of_a_tampered_record_says_which_file_and_key(run, tmp_path):
    from tests.core.test_cli import alambic

    root, _, record = run
    stage = tampered(record, tmp_path / "stage", artifact="../../../../../../etc/passwd")
    done = alambic("export", str(root / "run.yaml"), "--stage", str(stage), "--format", "onnx",
                   "--out", str(tmp_path / "bundle"), cwd=root)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert f"{stage.resolve()}/record.json: artifact '../../../../../../etc/passwd'" in said
    assert "expected a path relative to" in said and not (tmp_path / "bundle").exists()


def test_cli_export_without_a_search_says_what_to_run(run):
    from tests.core.test_cli import alambic

    root, _, _ = run
    done = alambic("export", str(root / "run.yaml"), cwd=root)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "alambic select RUN" in done.stderr and "--stage DIR" in done.stderr


def test_the_folder_loads_with_optimum_when_installed(exported):
    optimum = pytest.importorskip("optimum.onnxruntime", reason="optimum is not installed")
    model = optimum.ORTModelForSequenceClassification.from_pretrained(exported.path / "onnx")
    assert model.config.id2label == {0: "体育", 1: "财经"}


def test_a_model_with_a_sentencepiece_tokenizer_exports_with_it(run, tmp_path):
    """A teacher-layers student of the e5 teacher reads with an XLM-R Unigram tokenizer (no
    vocab.txt): every format ships its tokenizer.json, verified on text it tokenizes itself, and the
    bundle's README and Core ML metadata describe that tokenizer, not WordPiece."""
    import torch
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import BertForSequenceClassification

    from alambic.train.models import Size, bert_config
    from tests.plugins.test_vocabulary import xlmr_like

    root, ctx, _ = run
    texts = list(ctx.prepared.raw["train"]["text"])
    spm = SentencePieceUnigramTokenizer()
    spm.train_from_iterator(texts, vocab_size=300, show_progress=False, unk_token="<unk>",
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer = xlmr_like(spm._tokenizer)
    torch.manual_seed(0)
    config = bert_config(Size(layers=1, hidden=32, heads=2, ffn=64), 2, ["体育", "财经"],
                         vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path / "unigram-model"
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = export_stage(folder, tmp_path / "export", test_split=ctx.prepared.raw["test"],
                          metadata={"description": "unigram"}, max_length=16, registry=ctx.registry)
    assert not result.failed, table_text(result)
    agreement = [c for e in result.exported.values() for c in e.checks if "labels" in c.name and c.ok is False]
    assert agreement == [], table_text(result)
    for name in ("hf/tokenizer.json", "onnx/tokenizer.json", "coreml/tokenizer.json"):
        assert (result.path / name).is_file(), name
    assert not (result.path / "onnx" / "vocab.txt").exists()
    readme = (result.path / "README.md").read_text(encoding="utf-8")
    assert "SentencePiece Unigram" in readme and "`<s> text </s>`" in readme and "(id 1)" in readme
    assert "WordPiece" not in readme
    assert "vocabulary=tokenizer.json" in table_text(result)
