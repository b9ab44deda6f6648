"""core/ship/personalize*.py: the phone's update of the head, run off the phone, held to the updatable
model's spec (loss, optimizer, hyper-parameters read from the .mlmodel), on a tiny exported bundle."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch

from alambic.errors import AlambicError
from alambic.ship import coreml_export as cm
from alambic.ship.personalize import find_model, personalize, split
from alambic.ship.personalize_features import Encoder
from alambic.ship.personalize_feedback import read_feedback, read_golden
from alambic.ship.personalize_spec import encoder_tensors, read_updatable
from alambic.ship.personalize_update import batches, sgd_update
from tests.core.compress.test_onnx_export import synthetic_rows, tiny_classifier

LABELS = ["体育", "财经", "科技"]
MAX_LENGTH = 32
FIRST = 0x4E00  # token id i is the CJK character FIRST + i: one character, one WordPiece token


def text_of(ids: list[int]) -> str:
    """The text the test tokenizer turns into ``[CLS] ids [SEP]``."""
    return "".join(chr(FIRST + i) for i in ids[1:-1])


def write_tokenizer(folder) -> None:
    from transformers import BertTokenizerFast

    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(special.get(i, chr(FIRST + i)) for i in range(21128)) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))


def make_bundle(root, bits: int):
    """A stage folder (the tiny classifier, its tokenizer) and a bundle exported from it: coreml/ with
    UpdatableClassifier.mlmodel (lr 0.05, batch 4, 3 epochs; encoder fp16 or int8) and a manifest."""
    model = copy.deepcopy(tiny_classifier("roberta-l4"))
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {n: i for i, n in enumerate(LABELS)}
    stage, coreml = root / "stage", root / "bundle" / "coreml"
    for folder in (stage / "model", coreml):
        folder.mkdir(parents=True)
        write_tokenizer(folder)
    model.save_pretrained(stage / "model")
    spec = cm.updatable_pipeline(model, LABELS, MAX_LENGTH, learning_rate=0.05, batch_size=4, epochs=3,
                                 encoder_bits=bits)
    cm.describe(spec, {"user": {"labels": LABELS, "max_length": MAX_LENGTH, "vocabulary": "vocab.txt"}})
    cm.save_spec(spec, coreml / "UpdatableClassifier.mlmodel")
    manifest = {"meta": {"source": {"stage": str(stage)}, "labels": LABELS}}
    (root / "bundle" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root / "bundle", stage, model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("personalize"), 16)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("personalize-int8"), 8)


def feedback_rows(n: int, seed: int = 3, relabel: dict[int, int] | None = None) -> list[tuple[str, str]]:
    """Synthetic headlines (the keyword token decides the label), some labels moved as a user would."""
    rows = synthetic_rows(n, seed)
    return [(text_of(ids), LABELS[(relabel or {}).get(y, y)]) for ids, y in zip(rows["input_ids"], rows["label"])]


def write_tsv(path, rows) -> str:
    path.write_text("".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return str(path)


# --- the spec ------------------------------------------------------------------------------


def test_the_rule_and_the_head_are_read_from_the_mlmodel(bundle):
    folder, _, model = bundle
    found = read_updatable(folder / "coreml" / "UpdatableClassifier.mlmodel")
    rule = found.rule
    assert (rule.loss, rule.loss_input) == ("categorical cross-entropy", "label_probs")
    assert (rule.learning_rate, rule.batch_size, rule.epochs, rule.momentum) == (pytest.approx(0.05), 4, 3, 0.0)
    assert found.labels == LABELS and found.max_length == MAX_LENGTH and found.head_layer == "head"
    assert np.array_equal(found.head.weight, model.classifier.weight.detach().numpy())
    assert np.array_equal(found.head.bias, model.classifier.bias.detach().numpy())


def edited(source, target, **changes):
    """The saved .mlmodel with its update parameters changed in the spec, saved as ``target``."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(source))
    params = spec.pipelineClassifier.pipeline.models[-1].neuralNetworkClassifier.updateParams
    sgd = params.optimizer.sgdOptimizer
    sgd.learningRate.defaultValue = changes["lr"]
    sgd.miniBatchSize.defaultValue = changes["batch"]
    sgd.miniBatchSize.set.values[:] = [1, changes["batch"]]
    sgd.momentum.defaultValue = changes["momentum"]
    params.epochs.defaultValue = changes["epochs"]
    params.epochs.set.values[:] = [1, changes["epochs"]]
    params.shuffle.defaultValue = changes["shuffle"]
    cm.save_spec(spec, target)
    return target


def reference_update(path, features, targets):
    """Core ML's update written from NeuralNetwork.proto, every setting read here from the file:
    Loss_CCE = -log(input[target]) on the softmax output, mean per mini-batch, SGD with the spec's
    learning rate, momentum, mini-batch size (the last batch partial) and epochs; rows in order."""
    import coremltools as ct

    head = ct.utils.load_spec(str(path)).pipelineClassifier.pipeline.models[-1].neuralNetworkClassifier
    params, layer = head.updateParams, next(layer for layer in head.layers if layer.isUpdatable)
    sgd = params.optimizer.sgdOptimizer
    assert params.lossLayers[0].WhichOneof("LossLayerType") == "categoricalCrossEntropyLossLayer"
    assert not params.shuffle.defaultValue
    linear = torch.nn.Linear(layer.innerProduct.inputChannels, layer.innerProduct.outputChannels)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(list(layer.innerProduct.weights.floatValue)).reshape(linear.weight.shape))
        linear.bias.copy_(torch.tensor(list(layer.innerProduct.bias.floatValue)))
    optimizer = torch.optim.SGD(linear.parameters(), lr=sgd.learningRate.defaultValue,
                                momentum=sgd.momentum.defaultValue)
    x, y, size = torch.from_numpy(features), torch.from_numpy(targets), sgd.miniBatchSize.defaultValue
    steps = 0
    for _ in range(params.epochs.defaultValue):
        for lo in range(0, len(y), size):
            probs = torch.softmax(linear(x[lo:lo + size]), -1)
            loss = -torch.log(probs[torch.arange(len(y[lo:lo + size])), y[lo:lo + size]]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return linear.weight.detach().numpy(), linear.bias.detach().numpy(), steps


@pytest.mark.parametrize("changes", [
    {"lr": 0.2, "batch": 5, "epochs": 2, "momentum": 0.0, "shuffle": False},
    {"lr": 0.03, "batch": 1, "epochs": 4, "momentum": 0.9, "shuffle": False},
    {"lr": 0.5, "batch": 64, "epochs": 1, "momentum": 0.0, "shuffle": False},  # one partial batch
])
def test_the_update_follows_the_spec_as_saved_not_restated_constants(bundle, tmp_path, changes):
    folder = bundle[0]
    path = edited(folder / "coreml" / "UpdatableClassifier.mlmodel", tmp_path / "edited.mlmodel", **changes)
    model = read_updatable(path)
    assert (model.rule.learning_rate, model.rule.batch_size, model.rule.epochs) == \
        (pytest.approx(changes["lr"]), changes["batch"], changes["epochs"])
    rng = np.random.default_rng(0)
    features = rng.normal(size=(23, model.head.weight.shape[1])).astype(np.float32)  # 23: a partial last batch
    targets = rng.integers(0, len(LABELS), 23)
    head, losses = sgd_update(model.head, features, targets, model.rule)
    weight, bias, steps = reference_update(path, features, targets)
    assert len(losses) == changes["epochs"] and steps == changes["epochs"] * -(-23 // changes["batch"])
    assert np.abs(head.weight - weight).max() < 1e-5 and np.abs(head.bias - bias).max() < 1e-5
    assert np.abs(head.weight - model.head.weight).max() > 1e-3  # it moved


def test_a_shuffled_update_sees_every_row_once_per_epoch(bundle):
    rule = read_updatable(bundle[0] / "coreml" / "UpdatableClassifier.mlmodel").rule
    assert rule.shuffle  # coremltools' builder asks for it; the device draws its own order
    epochs = list(batches(10, rule, seed=0))
    assert len(epochs) == rule.epochs and [len(b) for b in epochs[0]] == [4, 4, 2]
    assert all(sorted(np.concatenate(epoch).tolist()) == list(range(10)) for epoch in epochs)
    assert [np.concatenate(e).tolist() for e in epochs] != [list(range(10))] * rule.epochs


def test_what_an_app_may_set_is_checked_against_the_spec(bundle):
    model = read_updatable(bundle[0] / "coreml" / "UpdatableClassifier.mlmodel")
    assert model.rule_with(epochs=1, batch_size=1, learning_rate=0.3).epochs == 1
    with pytest.raises(AlambicError, match=r"--epochs 2: UpdatableClassifier.mlmodel allows one of 1, 3"):
        model.rule_with(epochs=2)
    with pytest.raises(AlambicError, match=r"--learning-rate 1.5: .* allows \[0, 1\]"):
        model.rule_with(learning_rate=1.5)


# --- the encoder ---------------------------------------------------------------------------


def test_the_encoder_holds_the_weights_the_mlmodel_holds(int8_bundle):
    """int8: every weight is the file's dequantized value (within a step of the stage's, not equal),
    and the position ids are the file's (exact: the export keeps constants out of the 8-bit pass)."""
    folder, stage, model = int8_bundle
    updatable = read_updatable(folder / "coreml" / "UpdatableClassifier.mlmodel")
    encoder = Encoder.load(copy.deepcopy(model), folder / "coreml", MAX_LENGTH, spec=updatable.spec)
    assert not encoder.matched["missing"] and "int8" in encoder.loaded
    file_values = {t.name: t.values for t in encoder_tensors(updatable.spec)}
    query = encoder.module.encoder.layer[0].attention.self.query.weight.detach().numpy()
    assert any(v.size == query.size and np.array_equal(v, query.ravel()) for v in file_values.values())
    assert 0 < np.abs(query - model.bert.encoder.layer[0].attention.self.query.weight.detach().numpy()).max() < 0.02
    assert encoder.module.embeddings.position_ids[0, :6].tolist() == [0, 1, 2, 3, 4, 5]
    fp32 = Encoder.load(copy.deepcopy(model), folder / "coreml", MAX_LENGTH, weights="stage")
    assert fp32.module.embeddings.position_ids[0, :6].tolist() == [0, 1, 2, 3, 4, 5]


def test_features_are_the_pooled_vectors_of_the_bundles_tokenizer(bundle):
    folder, _, model = bundle
    rows = synthetic_rows(12, seed=5)
    updatable = read_updatable(folder / "coreml" / "UpdatableClassifier.mlmodel")
    encoder = Encoder.load(copy.deepcopy(model), folder / "coreml", MAX_LENGTH, spec=updatable.spec)
    features = encoder.features([text_of(ids) for ids in rows["input_ids"]])
    reference = cm.wrapper(model, cm.POOLED)
    with torch.no_grad():
        expected = np.stack([reference.pooled(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.int32))[0]
                             .numpy() for ids in rows["input_ids"]])
    assert features.shape == (12, 64) and np.abs(features - expected).max() < 0.05  # fp16 weights vs fp32


def test_an_encoder_of_another_model_is_refused(bundle):
    folder, _, model = bundle
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.bert.pooler.dense.weight.mul_(2)
    updatable = read_updatable(folder / "coreml" / "UpdatableClassifier.mlmodel")
    with pytest.raises(AlambicError, match="not the stage's model.*pooler.dense.weight.*--encoder-weights stage"):
        Encoder.load(other, folder / "coreml", MAX_LENGTH, spec=updatable.spec)


# --- the command ---------------------------------------------------------------------------


def test_a_personalization_learns_the_users_labels_and_writes_the_head(bundle, tmp_path):
    """Keyword-1 rows are 财经 to the model, 科技 to this user: the update learns it, the golden set
    (everyone's labels) says what it cost, the new head is written, the bundle's model is the reset."""
    folder = bundle[0]
    original = (folder / "coreml" / "UpdatableClassifier.mlmodel").read_bytes()
    feedback = write_tsv(tmp_path / "feedback.tsv", feedback_rows(120, relabel={1: 2}))
    golden = write_tsv(tmp_path / "golden.tsv", feedback_rows(60, seed=9))
    result = personalize(folder, feedback, golden=golden, out=tmp_path / "out", learning_rate=0.5)
    assert result.updated and result.rows == {"feedback": 120, "update": 96, "held_out": 24, "golden": 60}
    held, gold = result.figures["held_out"], result.figures["golden"]
    assert held["after"] > held["before"] + 0.1, held
    assert gold["per_label"]["体育"]["after"] >= gold["per_label"]["体育"]["before"] - 0.1  # the rest holds
    assert result.losses[-1] < result.losses[0]
    written = np.load(tmp_path / "out" / "head.npz")
    personal = read_updatable(tmp_path / "out" / "UpdatableClassifier.personalized.mlmodel")
    initial = read_updatable(result.reset)
    assert np.array_equal(personal.head.weight, written["weight"]) and np.array_equal(personal.head.bias,
                                                                                      written["bias"])
    assert personal.rule == initial.rule != result.rule  # the file keeps its defaults; 0.5 was the app's pick
    assert np.abs(written["weight"] - initial.head.weight).max() > 1e-3
    assert hashlib.sha256(result.reset.read_bytes()).digest() == hashlib.sha256(original).digest()
    record = json.loads((tmp_path / "out" / "personalization.json").read_text(encoding="utf-8"))
    assert record["figures"]["held_out"] == held and record["rule"]["learning_rate"] == 0.5


def test_fewer_rows_than_the_minimum_make_no_update(bundle, tmp_path):
    from typer.testing import CliRunner

    from alambic import cli

    feedback = write_tsv(tmp_path / "few.tsv", feedback_rows(35))  # 28 to update with, 7 held out
    result = personalize(bundle[0], feedback, out=tmp_path / "out")
    assert not result.updated and not (tmp_path / "out").exists()
    assert "28 feedback rows would update the head (35 in" in result.reason and "--min-samples 30" in result.reason
    done = CliRunner().invoke(cli.app, ["personalize", str(bundle[0]), feedback, "--out", str(tmp_path / "o")])
    assert done.exit_code == 0 and "no update" in done.output, done.output
    done = CliRunner().invoke(cli.app, ["personalize", str(bundle[0]), feedback, "--min-samples", "20", "--json",
                                        "--out", str(tmp_path / "o")])
    assert done.exit_code == 0 and json.loads(done.output)["updated"], done.output


def test_the_command_writes_the_rows_and_the_result_for_the_macos_update_check(bundle, tmp_path):
    """update_inputs.json (read by examples/ios/UpdateCheck): every row as the app feeds MLUpdateTask
    (the tokenizer's ids, a mask of ones, the label name, its part), the spec's settings, and the
    off-device heads' labels on the held-out rows, consistent with the figures."""
    from typer.testing import CliRunner

    from alambic import cli

    feedback = feedback_rows(120, relabel={1: 2})
    source_ids = synthetic_rows(120, 3)["input_ids"]  # the ids feedback_rows wrote as text
    path = write_tsv(tmp_path / "feedback.tsv", feedback)
    done = CliRunner().invoke(cli.app, ["personalize", str(bundle[0]), path, "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "out" / "personalization.json").read_text(encoding="utf-8"))
    found = json.loads((tmp_path / "out" / "update_inputs.json").read_text(encoding="utf-8"))
    assert "update_inputs.json" in record["written"]
    model = bundle[0] / "coreml" / "UpdatableClassifier.mlmodel"
    assert found["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert found["labels"] == LABELS and found["max_length"] == MAX_LENGTH
    settings = found["settings"]
    assert (settings["learning_rate"], settings["batch_size"], settings["epochs"], settings["shuffle"]) == \
        (pytest.approx(0.05), 4, 3, True) and settings["spec_defaults"]
    update, held = split(120, 0.2, seed=0)
    assert found["counts"] == {"update": 96, "held_out": 24} == {k: record["rows"][k] for k in ("update", "held_out")}
    rows = found["rows"]
    assert [(r["part"], r["row"]) for r in rows] == [("update", i) for i in update] + [("held_out", i) for i in held]
    for row in rows:
        assert row["label"] == feedback[row["row"]][1] and row["text"] == feedback[row["row"]][0]
        assert row["input_ids"] == source_ids[row["row"]] and row["attention_mask"] == [1] * len(row["input_ids"])
    off = found["off_device"]
    truth = [r["label"] for r in rows if r["part"] == "held_out"]
    assert len(off["predicted"]) == len(off["predicted_before"]) == len(truth) == 24
    assert set(off["predicted"]) <= set(LABELS) and off["predicted"] != off["predicted_before"]
    held_out = record["figures"]["held_out"]
    assert off["held_out_after"] == held_out["after"] == pytest.approx(np.mean(np.equal(off["predicted"], truth)))
    assert off["held_out_before"] == held_out["before"] == \
        pytest.approx(np.mean(np.equal(off["predicted_before"], truth)))
    assert len(off["losses"]) == 3 and off["losses"] == record["losses"]
    # an app's pick (--learning-rate) is recorded as such: the Mac check runs the spec's own settings
    done = CliRunner().invoke(cli.app, ["personalize", str(bundle[0]), path, "--learning-rate", "0.5", "--json",
                                        "--out", str(tmp_path / "picked")])
    assert done.exit_code == 0, done.output
    picked = json.loads((tmp_path / "picked" / "update_inputs.json").read_text(encoding="utf-8"))["settings"]
    assert picked["learning_rate"] == 0.5 and not picked["spec_defaults"]


def test_the_bundle_is_found_from_its_folder_its_coreml_folder_or_its_model(bundle, tmp_path):
    folder = bundle[0]
    model = folder / "coreml" / "UpdatableClassifier.mlmodel"
    assert {find_model(p)[0] for p in (folder, folder / "coreml", model)} == {model}
    with pytest.raises(AlambicError, match="no coreml/UpdatableClassifier.mlmodel"):
        find_model(tmp_path)
    train, held = split(10, 0.2, seed=0)
    assert len(held) == 2 and sorted([*train, *held]) == list(range(10))


# --- the files ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "message"), [
    ("f.tsv", "好\t体育\n坏的一行\n", r"f.tsv:2: expected 2 tab-separated fields \(text, label\), got 1"),
    ("f.tsv", "好\t体育\n\n好\t体育新闻\n", r"f.tsv:3: field 'label': '体育新闻' is not one of the model's labels "
                                     r"\(体育, 财经, 科技\) \(did you mean '体育'\?\)"),
    ("f.tsv", "\t体育\n", r"f.tsv:1: field 'text' is empty"),
    ("f.csv", "headline,label\n好,体育\n", r"f.csv:1: the header must name the columns text and label; missing text"),
    ("f.csv", "text,label\n好,体育\n好\n", r"f.csv:3: field 'label' is missing"),
    ("f.jsonl", '{"text": "好", "label": "体育"}\n{"text": "好", "label": 1}\n',
     r"f.jsonl:2: field 'label' must be a string, got int"),
    ("f.jsonl", '{"text": "好", "label": "体育"}\n{"text": "好",\n', r"f.jsonl:2: not valid JSON"),
    ("f.json", "[]", r"feedback files are .tsv, .txt, .csv, .jsonl"),
    ("f.tsv", "\n\n", r"f.tsv: no feedback rows"),
])
def test_a_bad_feedback_file_names_its_line_and_field(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(AlambicError, match=message):
        read_feedback(tmp_path / name, LABELS)


def test_feedback_reads_in_each_format(tmp_path):
    (tmp_path / "a.tsv").write_text("text\tlabel\n好\t财经\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text('label,text\n财经,"好,的"\n', encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "好", "label": "财经", "id": 3}\n', encoding="utf-8")
    found = [read_feedback(tmp_path / f"a.{ext}", LABELS) for ext in ("tsv", "csv", "jsonl")]
    assert [(f.texts, f.targets) for f in found] == [(["好"], [1]), (["好,的"], [1]), (["好"], [1])]


def test_a_golden_file_reads_in_the_runs_data_format(tmp_path, write_config):
    from alambic.config import load_config

    (tmp_path / "train.tsv").write_text("".join(f"第{i}条\t{i % 3}\n" for i in range(12)), encoding="utf-8")
    (tmp_path / "golden.txt").write_text("好新闻\t2\n坏新闻\t0\n", encoding="utf-8")
    data = {"train": "train.tsv", "format": "tsv", "header": False, "text_column": 0, "label_column": 1,
            "label_type": "id", "label_names": LABELS}
    config = load_config(write_config({"name": "g", "data": data, "tokenizer": {"max_length": 16}}))
    golden = read_golden(config.data, LABELS, tmp_path / "golden.txt")
    assert (golden.texts, golden.targets) == (["好新闻", "坏新闻"], [2, 0])
    with pytest.raises(AlambicError, match=r"data.label_names \(体育, 财经, 科技\) differ from the model's labels"):
        read_golden(config.data, ["财经", "体育", "科技"], tmp_path / "golden.txt")
    with pytest.raises(AlambicError, match="the run config has no data.golden: pass --golden FILE"):
        read_golden(config.data, LABELS)
