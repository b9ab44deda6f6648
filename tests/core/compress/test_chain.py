"""core/compress/chain.py: prune and quantize a trained model under the guard, measure
before and after, store the result and its record, reuse it."""

from __future__ import annotations

import json

import pytest
import yaml
from rich.console import Console

from alambic.compress import chain as compress_module
from alambic.compress.chain import compress
from alambic.compress.pruning import Pruner
from alambic.compress.records import MeasureSettings, format_record, parse_steps
from alambic.config import PruningStep
from alambic.errors import AlambicError
from alambic.fingerprint import model_digest
from tests.core.compress.test_guard import Scramble

FAST = MeasureSettings(lengths=(8, 16), threads=1, runs=3, warmup=1)


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 160 headlines whose label is their first character, and a 2-layer roberta-l4
    trained on them (its folder holds its tokenizer)."""
    from tests.conftest import train_tiny_run

    root = tmp_path_factory.mktemp("run")
    _, folder = train_tiny_run(root, [f"{'好坏'[i % 2]}消息第{i}条\t{i % 2}" for i in range(160)])
    return root, folder


def test_compress_prunes_quantizes_measures_and_is_reused(trained, monkeypatch):
    from alambic.run import RunContext

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    ctx.registry["pruners"].add(Scramble)  # a step made to hurt accuracy
    steps = parse_steps("ffn:0.25,scramble:0.8,vocab", ctx.registry)
    printed = []
    record = compress(ctx, folder, steps, "dynamic-int8", measure=FAST, on_decision=printed.append)

    assert not record.reused and record.path.is_dir()
    assert printed == record.decisions
    # the guard: the step made to hurt is retried at half strength twice, then reverted
    scramble = [d for d in record.decisions if d.plugin == "scramble"]
    assert [(d.outcome, d.strength) for d in scramble] == [("retried", 0.8), ("retried", 0.4), ("reverted", 0.2)]
    assert all(d.drop_points > 1.0 for d in scramble)
    outcomes = {s["step"]: s["outcome"] for s in record.record["steps"]}
    assert outcomes["scramble:0.8"] == "reverted"
    assert outcomes["vocab"] == "kept" and outcomes["quant:dynamic-int8"] == "kept"
    assert all(d.drop_points <= 1.0 for d in record.decisions if d.outcome == "kept")

    # the files: the pruned model, the quantized graph, the record
    files = {p.relative_to(record.path).as_posix() for p in record.path.rglob("*") if p.is_file()}
    assert {"model/model.safetensors", "model/config.json", "model/vocab.txt", "record.json",
            "quantized/model.int8-dynamic.onnx", "manifest.json"} <= files
    assert record.artifact == record.path / "quantized" / "model.int8-dynamic.onnx"
    assert record.runtime == "onnxruntime" == record.after.runtime

    # measured before (PyTorch, the input folder) and after (ONNX Runtime, the artifact), on test
    before, after = record.before, record.after
    test_rows = len(ctx.prepared.tokenized["test"])
    assert before.examples == after.examples == test_rows
    assert after.params < before.params  # the vocabulary (and FFN) went
    assert after.size_bytes < before.size_bytes / 2  # int8
    assert set(after.files) == {"model.int8-dynamic.onnx", "vocab.txt"}
    assert set(before.files) == {"model.safetensors", "config.json", "vocab.txt"}
    for m in (before, after):
        assert m.threads == 1 and m.machine["threads"] == 1 and m.machine["cpu"]
        assert set(m.latency_ms) == {"8", "16"} and m.memory["peak_rss_bytes"] > 0
    # the quantized graph against its fp32 source, on the whole test split
    agreement = record.agreement
    assert agreement["examples"] == test_rows and agreement["split"] == "test"
    assert agreement["argmax_agreement"] >= 0.99 and agreement["ok"] is True

    saved = json.loads((record.path / "record.json").read_text(encoding="utf-8"))
    assert saved["decisions"] == [d.to_dict() for d in record.decisions]
    assert saved["agreement"] == agreement and saved["before"] == before.to_dict()
    console = Console(width=200, record=True)
    for table in format_record(record):
        console.print(table)
    text = console.export_text()
    assert "reverted" in text and "retried" in text and "argmax agreement" in text and "before" in text

    # the same call again: reused, nothing re-run
    monkeypatch.setattr(compress_module, "guarded_step", lambda *a, **k: pytest.fail("ran again"))
    ctx2 = RunContext.open(root / "run.yaml", quiet=True)
    ctx2.registry["pruners"].add(Scramble)
    again = compress(ctx2, folder, steps, "dynamic-int8", measure=FAST)
    assert again.reused and again.key == record.key and again.path == record.path
    assert again.decisions == record.decisions and again.after == record.after


def test_without_quantizer_the_pruned_folder_is_the_artifact(trained):
    from alambic.run import RunContext

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    settings = MeasureSettings(lengths=(8,), threads=1, runs=2, warmup=0, memory=False)
    record = compress(ctx, folder, parse_steps("vocab"), None, measure=settings)
    assert record.runtime == "pytorch" and record.artifact == record.path / "model"
    assert record.agreement is None and record.after.memory == {}
    assert record.after.params < record.before.params
    assert [d.outcome for d in record.decisions] == ["kept"]


def test_compress_refuses_bad_inputs(trained, tmp_path):
    from alambic.errors import PluginError
    from alambic.run import RunContext

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    with pytest.raises(AlambicError, match="folder not found"):
        compress(ctx, tmp_path / "nowhere", [], None)
    with pytest.raises(PluginError, match="did you mean 'dynamic-int8'"):
        compress(ctx, folder, [], "dynamic-int9")
    with pytest.raises(AlambicError, match="unknown option 'per_chanel'"):
        compress(ctx, folder, [], "dynamic-int8", {"per_chanel": True})
    with pytest.raises(AlambicError, match="without a quantizer"):
        compress(ctx, folder, [], None, {"per_channel": True})


def test_cli_compress_prints_before_after_and_the_guard(trained):
    from tests.core.test_cli import alambic

    root, folder = trained
    done = alambic("compress", str(root / "run.yaml"), "--model", str(folder), "--steps", "ffn:0.25,vocab",
                   "--quant", "dynamic-int8", "--quant-option", "per_channel=true", "--lengths", "8",
                   "--runs", "2", "--no-memory", cwd=root)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "guard ffn:0.25 (try 0): validation accuracy" in out and "guard vocab (try 0)" in out
    assert "before" in out and "after" in out and "argmax agreement" in out
    assert "ships:" in out and "model.int8-dynamic.onnx (onnxruntime)" in out

    as_json = alambic("compress", str(root / "run.yaml"), "--model", str(folder), "--steps", "ffn:0.25,vocab",
                      "--quant", "dynamic-int8", "--quant-option", "per_channel=true", "--lengths", "8",
                      "--runs", "2", "--no-memory", "--json", cwd=root)
    record = json.loads(as_json.stdout)
    assert record["reused"] is True and record["runtime"] == "onnxruntime"
    assert [s["outcome"] for s in record["steps"]] == ["kept", "kept", "kept"]


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "head:0.3"], "did you mean 'heads'"),
    (["--quant-option", "per_channel"], "expected key=value"),
    (["--lengths", "x"], "--lengths 'x'"),
])
def test_cli_compress_bad_arguments_are_one_clear_error(trained, args, message):
    from tests.core.test_cli import alambic

    root, folder = trained
    done = alambic("compress", str(root / "run.yaml"), "--model", str(folder), *args, cwd=root)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_candidates_that_differ_only_in_quantizer_prune_once(trained, monkeypatch):
    from alambic.run import RunContext

    root, folder = trained
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    settings = MeasureSettings(lengths=(8,), threads=1, runs=2, warmup=0, memory=False)
    steps = parse_steps("ffn:0.5")
    first = compress(ctx, folder, steps, None, measure=settings)
    assert not first.prune_reused and first.prune_key
    assert (first.path / "model" / "model.safetensors").is_file()  # the stage ships whole
    calls = []
    monkeypatch.setattr(compress_module, "_prune", lambda *a, **k: calls.append(a) or pytest.fail("pruned again"))
    second = compress(ctx, folder, steps, "fp16", measure=settings)
    assert second.prune_reused and second.prune_key == first.prune_key and not second.reused
    assert [d["step"] for d in second.record["decisions"]] == ["ffn:0.5", "quant:fp16"]
    assert second.runtime == "onnxruntime" and not calls


# --- recovery distillation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def recovering(tmp_path_factory):
    """The run of ``trained`` with a tiny teacher and the distill settings recovery trains with."""
    from tests.conftest import train_tiny_run

    root = tmp_path_factory.mktemp("recovering")
    _, folder = train_tiny_run(
        root, [f"{'好坏'[i % 2]}消息第{i}条\t{i % 2}" for i in range(160)],
        teacher={"architecture": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}, "epochs": 3,
                 "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0},
        distill={"batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0})
    return root, folder


def test_a_recovered_step_is_distilled_from_the_teacher_before_the_guard_judges_it(recovering):
    from alambic.compress.chain import prune
    from alambic.run import RunContext

    root, folder = recovering
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    ctx.registry["pruners"].add(Scramble)
    hurt = PruningStep(pruner="scramble", amount=0.1)
    plain = prune(ctx, folder, [hurt])  # the noise costs far more than 1 point: reverted
    assert plain.record["steps"] == [{"step": "scramble:0.1", "outcome": "reverted"}]

    recovered = prune(ctx, folder, [hurt.model_copy(update={"recover_epochs": 3})])
    decision = recovered.record["decisions"][0]
    assert decision["outcome"] == "kept" and decision["attempt"] == 0  # the retrained model passed at once
    assert recovered.record["steps"] == [{"step": "scramble:0.1+3", "outcome": "kept"}]
    recovery = recovered.record["pruning"][0]["recovery"]
    assert recovery["epochs"] == 3 and recovery["validation"]["accuracy"] == decision["accuracy_after"]
    assert recovered.key != plain.key and recovered.record["inputs"]["recovery"]["teacher"]
    kinds = [ctx.store.load_manifest(ctx.store.stage_path(k)).kind for k in ctx.store.list("stages")
             if ctx.store.load_manifest(ctx.store.stage_path(k))]
    assert {"teacher", "teacher-logits"} <= set(kinds)  # the run's teacher, trained for the recovery


def test_a_step_without_recovery_keeps_its_stage_key(recovering):
    """Stages made before recover_epochs existed stay valid: a step without recovery hashes as then."""
    from alambic.compress.chain import prune
    from alambic.fingerprint import stable_hash
    from alambic.run import RunContext

    root, folder = recovering
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    record = prune(ctx, folder, [PruningStep(pruner="ffn", amount=0.5)])
    before = {"stage": "prune", "model": model_digest(folder), "data": ctx.prepared.tokenized_key,
              "steps": [{"pruner": "ffn", "amount": 0.5, "options": {}}], "guard": ctx.config.guard.model_dump()}
    assert record.key == stable_hash(before)[:32]


def test_recovery_after_magnitude_pruning_is_refused(recovering):
    from alambic.compress.chain import prune
    from alambic.run import RunContext

    root, folder = recovering
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    with pytest.raises(AlambicError, match="magnitude.*regrow the zeroed weights"):
        prune(ctx, folder, [PruningStep(pruner="magnitude", amount=0.5, recover_epochs=1)])


def test_cli_compress_recovers_a_step_with_a_progress_bar(recovering):
    from tests.core.test_cli import alambic

    root, folder = recovering
    done = alambic("compress", str(root / "run.yaml"), "--model", str(folder), "--steps", "ffn:0.5+1",
                   "--lengths", "8", "--runs", "2", "--no-memory", cwd=root)
    assert done.returncode == 0, done.stderr
    assert "guard ffn:0.5+1 (try 0): validation accuracy" in done.stdout
    assert "recovery ffn:0.5+1" in done.stderr  # the bar, on stderr


# --- the chain's budget, vocabulary pruning judged on what ships ------------------------------


def test_the_guard_holds_a_budget_for_the_whole_chain(trained):
    """Before: each step was judged against the previous one only, so a chain of steps each within
    max_drop could cost many times it. guard.max_total_drop bounds the drop against the student."""
    from alambic.run import RunContext

    root, folder = trained
    config = yaml.safe_load((root / "run.yaml").read_text(encoding="utf-8"))
    config["guard"] = {"max_drop": 100.0, "max_total_drop": 1.0, "retries": 0}  # any one step may cost all
    (root / "chain.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    ctx = RunContext.open(root / "chain.yaml", quiet=True)
    ctx.registry["pruners"].add(Scramble)
    record = compress(ctx, folder, parse_steps("scramble:0.8", ctx.registry), None,
                      measure=MeasureSettings(lengths=(), memory=False))
    [decision] = record.decisions
    assert decision.drop_points > 1.0 and decision.total_drop_points == decision.drop_points
    assert decision.outcome == "reverted" and "max_total_drop" in decision.note
    assert record.record["validation_accuracy"]["after"] == record.record["validation_accuracy"]["before"]
    # the record says what the shipped model costs against the student, on validation and on test
    assert record.record["validation"]["accuracy"] == record.record["validation_accuracy"]["after"]
    assert record.after.latency_ms == {} and record.after.accuracy == record.before.accuracy


class Spy(Pruner):
    """Test pruner: keeps the model, records the validation rows it was handed."""

    id = "spy"
    seen: list = []

    @classmethod
    def prune(cls, model, options, context):
        from alambic.compress.pruning import PruneResult

        cls.seen.append([list(ids) for ids in context.validation["input_ids"]])
        return PruneResult(model)


def test_after_vocabulary_pruning_the_splits_are_tokenized_again_as_shipped(tmp_path):
    """Before: after `vocab` the later steps and the guard read the old ids remapped one by one, so
    "plays" (play ##s, with ##s pruned) read as [play, UNK]; the shipped tokenizer reads one [UNK]."""
    from alambic.run import RunContext
    from tests.conftest import SHARED_DATA, train_tiny_run

    rows = lambda word: [f"{'好坏'[i % 2]}消息 {word} 第{i}条\t{i % 2}" for i in range(60)]  # noqa: E731
    for name, word in (("dev.tsv", "plays"), ("test.tsv", "plays")):
        (tmp_path / name).write_text("\n".join(rows(word)) + "\n", encoding="utf-8")
    data = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv", "format": "tsv", "header": False,
            "text_column": 0, "label_column": 1}
    tokenizer = {"name_or_path": str(SHARED_DATA / "bert-base-chinese" / "vocab.txt"), "max_length": 16}
    _, folder = train_tiny_run(tmp_path, rows("playing") * 2, data=data, tokenizer=tokenizer)
    ctx = RunContext.open(tmp_path / "run.yaml", quiet=True)
    ctx.registry["pruners"].add(Spy)
    Spy.seen.clear()
    record = compress(ctx, folder, parse_steps("vocab,spy", ctx.registry), None,
                      measure=MeasureSettings(lengths=(), memory=False))
    from transformers import AutoTokenizer

    pruned = AutoTokenizer.from_pretrained(record.path / "model")
    assert pruned.tokenize("plays") == ["[UNK]"]  # ##s is not in the pruned vocabulary: one [UNK]
    shipped = [pruned(row.split("\t")[0], truncation=True, max_length=16)["input_ids"] for row in rows("plays")]
    [seen] = Spy.seen
    assert seen == shipped
