from __future__ import annotations

import json

import pytest

from alambic.config import DistillConfig
from alambic.errors import AlambicError, ConfigError
from alambic.train import distributed
from alambic.train.distill import distill, distill_settings
from tests.core.train.test_teacher import TINY, tiny_run  # noqa: F401  (fixture)

SIZES = {"roberta-l4": TINY, "tinybert-4l": TINY}


@pytest.fixture
def run_with_students(tiny_run, write_config, minimal_config, tmp_path):  # noqa: F811
    config = {**minimal_config, "store": str(tmp_path / "artifacts"),
              "tokenizer": {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16},
              "teacher": {"architecture": TINY, "epochs": 1, "batch_size": 8},
              "distill": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
              "search": {"students": ["roberta-l4"], "student_sizes": SIZES}}
    from alambic.run import RunContext

    return lambda: RunContext.open(write_config(config), quiet=True)


def test_settings_overrides_are_validated_like_the_config():
    assert distill_settings(DistillConfig(), {"alpha": 0.5}).alpha == 0.5
    with pytest.raises(ConfigError) as info:
        distill_settings(DistillConfig(), {"temprature": 2, "alpha": 3})
    problems = sorted(info.value.problems)
    assert problems[0].startswith("alpha: Input should be less than or equal to 1")
    assert problems[1].startswith("temprature: unknown key (did you mean 'temperature'?)")


def test_distill_uses_cached_logits_and_is_memoized(run_with_students, monkeypatch):
    ctx = run_with_students()
    record = distill(ctx, "roberta-l4", local=True)
    assert not record.reused and record.student == "roberta-l4"
    assert record.metrics["online_teacher"] is False
    assert record.metrics["settings"]["losses"] == ["kd"]
    metrics = json.loads((record.path / "metrics.json").read_text())
    assert metrics["test"]["examples"] == len(ctx.prepared.tokenized["test"])
    kinds = [ctx.store.load_manifest(f"stages/{k}").kind for k in ctx.store.list("stages")]
    assert sorted(kinds) == ["distill", "teacher", "teacher-logits", "tokenizer"]

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("trained again"))
    assert distill(run_with_students(), "roberta-l4", local=True).reused


def test_a_second_student_reuses_the_teacher_logits(run_with_students):
    ctx = run_with_students()
    distill(ctx, "roberta-l4", local=True)
    distill(ctx, "tinybert-4l", {"temperature": 2.0}, local=True)
    kinds = [ctx.store.load_manifest(f"stages/{k}").kind for k in ctx.store.list("stages")]
    assert kinds.count("teacher-logits") == 1 and kinds.count("distill") == 2


def test_intermediate_losses_run_the_teacher_online(run_with_students):
    record = distill(run_with_students(), "tinybert-4l",
                     {"losses": ["kd", "hidden-mse", "attention-kl", "embedding-mse"]}, local=True)
    assert record.metrics["online_teacher"] is True


def test_settings_change_the_stage(run_with_students):
    ctx = run_with_students()
    first = distill(ctx, "roberta-l4", local=True)
    second = distill(ctx, "roberta-l4", {"temperature": 2.0}, local=True)
    assert first.key != second.key and not second.reused


def test_unknown_student_is_a_clear_error(run_with_students):
    with pytest.raises(AlambicError, match="unknown students id 'roberta-l5' \\(did you mean 'roberta-l4'\\?\\)"):
        distill(run_with_students(), "roberta-l5", local=True)


def test_batches_are_sorted_by_length_only_when_asked():
    from alambic.config import TeacherConfig
    from alambic.train.distill import train_settings
    from alambic.train.teacher import teacher_settings

    assert not train_settings(DistillConfig()).bucket and not teacher_settings(TeacherConfig()).bucket
    assert train_settings(DistillConfig(bucket_by_length=True)).bucket
    assert teacher_settings(TeacherConfig(bucket_by_length=True)).bucket


# --- where a student's weights start -----------------------------------------------------------


@pytest.fixture
def pretrained_teacher(tmp_path):
    """A 'pretrained' 3-layer teacher folder with its own tokenizer (bert-base-chinese's 21128-token
    vocabulary), as a hub checkpoint saved with save_pretrained would be."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from alambic.train.models import Size, bert_config
    from tests.conftest import VOCAB

    if not VOCAB.is_file():
        pytest.skip(f"bert-base-chinese's vocabulary not found at {VOCAB}")
    torch.manual_seed(0)
    folder = tmp_path / "pretrained-teacher"
    BertForSequenceClassification(bert_config(Size(layers=3, hidden=32, heads=2, ffn=64), 2)).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(folder)
    return folder


@pytest.fixture
def run_with_pretrained_teacher(pretrained_teacher, write_config, minimal_config, tmp_path):
    """The teacher reads with its own tokenizer (bert-base-chinese's, pruned to the train split's
    pieces); students built from config read with the run's trained 200-token vocabulary."""
    from alambic.run import RunContext

    def make(**search):
        config = {**minimal_config, "store": str(tmp_path / "artifacts"),
                  "tokenizer": {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16},
                  "teacher": {"model": str(pretrained_teacher), "epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
                  "distill": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
                  "search": {"students": ["roberta-l4"], **search}}
        return RunContext.open(write_config(config), quiet=True)

    return make


def test_a_pretrained_teacher_reads_with_its_own_pruned_tokenizer(run_with_pretrained_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alambic.train.teacher import train_teacher

    ctx = run_with_pretrained_teacher()
    record = train_teacher(ctx, local=True)
    tokenizer = AutoTokenizer.from_pretrained(record.path)
    assert len(tokenizer) < 21128 and "第" in tokenizer.get_vocab()  # the train split's pieces only
    model = AutoModelForSequenceClassification.from_pretrained(record.path)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    kinds = [ctx.store.load_manifest(f"stages/{k}").kind for k in ctx.store.list("stages")]
    assert "teacher-vocab" in kinds


def test_distillation_between_two_tokenizers_goes_through_the_cached_logits(run_with_pretrained_teacher):
    from transformers import AutoTokenizer

    from alambic.data.tokenize import tokenizer_fingerprint

    ctx = run_with_pretrained_teacher(student_sizes=SIZES)
    record = distill(ctx, "roberta-l4", local=True)
    teacher_tok = AutoTokenizer.from_pretrained(ctx.store.local_path(ctx.store.stage_path(record.metrics["teacher"])))
    student_tok = AutoTokenizer.from_pretrained(record.path)
    assert tokenizer_fingerprint(teacher_tok) != tokenizer_fingerprint(student_tok)
    assert tokenizer_fingerprint(student_tok) == tokenizer_fingerprint(ctx.prepared.tokenizer)
    assert record.metrics["online_teacher"] is False and record.metrics["init"] == "random"
    with pytest.raises(AlambicError, match=r"compare the teacher's and the student's tokens.*losses: \[kd\]"):
        distill(ctx, "roberta-l4", {"losses": ["kd", "hidden-mse"]}, local=True)


def test_a_student_starts_from_a_saved_folder_keyed_by_its_content(run_with_pretrained_teacher, tmp_path,
                                                                   monkeypatch):
    """The hub path through a local folder: weights and tokenizer come from the folder; the stage
    is keyed by the weights' content, not by the folder's path."""
    import shutil

    import torch
    from transformers import BertTokenizerFast

    from alambic.plugins.students import RobertaL4
    from alambic.train.distill import build_student, student_init
    from alambic.train.teacher import train_teacher
    from tests.conftest import VOCAB

    torch.manual_seed(1)
    folder = tmp_path / "chinese_roberta_L-4_H-512"
    RobertaL4.build(2, **TINY).base_model.save_pretrained(folder)  # an encoder without a head, as on the hub
    BertTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(folder)
    ctx = run_with_pretrained_teacher(student_init={"roberta-l4": str(folder)})
    init = student_init(ctx, RobertaL4, None, train_teacher(ctx, local=True), {})
    assert init.kind == "weights" and len(init.tokenizer) == 21128  # the folder's own tokenizer
    student = build_student({"student_class": RobertaL4, "label_names": ["0", "1"], "vocab_size": 0,
                             "sizes": {}, "init": init})
    from transformers import BertModel

    reference = BertModel.from_pretrained(folder)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)

    record = distill(ctx, "roberta-l4", local=True)
    assert record.metrics["init"] == str(folder) and record.metrics["tokenizer_from"] == str(folder)
    copy = shutil.copytree(folder, tmp_path / "elsewhere")
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("trained again"))
    assert distill(ctx, "roberta-l4", local=True, init=str(copy)).reused  # same content, other path
    monkeypatch.undo()
    RobertaL4.build(2, **TINY).base_model.save_pretrained(copy)  # other weights (seeded differently)
    assert not distill(ctx, "roberta-l4", local=True, init=str(copy)).reused


def test_a_student_from_the_teacher_layers(run_with_pretrained_teacher):
    import torch
    from transformers import AutoModelForSequenceClassification

    from alambic.plugins.students import TeacherLayers
    from alambic.train.distill import build_student, student_init
    from alambic.train.teacher import train_teacher

    ctx = run_with_pretrained_teacher(students=["teacher-layers"], student_sizes={"teacher-layers": {"layers": 1}})
    teacher = train_teacher(ctx, local=True)
    init = student_init(ctx, TeacherLayers, None, teacher, {"layers": 1})
    student = build_student({"student_class": TeacherLayers, "label_names": ["0", "1"], "vocab_size": 0,
                             "sizes": {"layers": 1}, "init": init})
    source = AutoModelForSequenceClassification.from_pretrained(teacher.path)
    assert student.config.num_hidden_layers == 1 and student.config.alambic_teacher_layers == [2]
    kept = dict(source.bert.encoder.layer[2].named_parameters())
    for name, value in student.bert.encoder.layer[0].named_parameters():
        assert torch.equal(value, kept[name]), name
    assert torch.equal(student.classifier.weight, source.classifier.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, source.bert.embeddings.word_embeddings.weight)

    record = distill(ctx, "teacher-layers", local=True)
    assert record.metrics["init"] == "teacher-layers" and record.metrics["tokenizer_from"] == "the teacher"
    assert distill(ctx, "teacher-layers", {"losses": ["kd", "hidden-mse"]}, local=True).metrics["online_teacher"]
    with pytest.raises(AlambicError, match="only 'layers' applies"):
        student_init(ctx, TeacherLayers, None, teacher, {"layers": 1, "hidden": 64})


def test_a_student_whose_embeddings_do_not_fit_its_tokenizer_fails_before_training(
        run_with_pretrained_teacher, tmp_path, monkeypatch):
    """The seeds' mistake: an English TinyBERT (30522 rows) with a Chinese tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "TinyBERT_General_4L_312D"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)  # no tokenizer: the run's is used
    ctx = run_with_pretrained_teacher()
    from alambic.train.teacher import train_teacher

    train_teacher(ctx, local=True)
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(AlambicError) as info:
        distill(ctx, "tinybert-4l", local=True, init=str(folder))
    message = str(info.value)
    assert "30522" in message and str(len(ctx.prepared.tokenizer)) in message
    assert str(folder) in message and "the tokenizer section" in message


def test_random_init_is_said_and_sizes_cannot_go_with_weights(run_with_pretrained_teacher, caplog, tmp_path):
    from alambic.plugins.students import RobertaL4, TeacherLayers
    from alambic.train.distill import student_init
    from alambic.train.teacher import train_teacher

    ctx = run_with_pretrained_teacher()
    teacher = train_teacher(ctx, local=True)
    with caplog.at_level("INFO", logger="alambic.train.distill"):
        assert student_init(ctx, RobertaL4, None, teacher, {}).kind == "random"
    assert "starts from random weights" in caplog.text
    with pytest.raises(AlambicError, match="both given"):
        student_init(ctx, RobertaL4, str(teacher.path), teacher, {"layers": 1})
    with pytest.raises(AlambicError, match="teacher-layers' is the student 'teacher-layers'"):
        student_init(ctx, RobertaL4, "teacher-layers", teacher, {})
    with pytest.raises(AlambicError, match="model directory not found"):
        student_init(ctx, RobertaL4, str(tmp_path / "nope" / "x"), teacher, {})
    assert student_init(ctx, TeacherLayers, None, teacher, {}).kind == "teacher-layers"
