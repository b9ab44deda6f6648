from __future__ import annotations

import json

import pytest

from alambic import distributed
from alambic.config import DistillConfig
from alambic.distill import distill, distill_settings, parse_set
from alambic.errors import AlambicError, ConfigError
from tests.core.test_teacher import TINY, tiny_run  # noqa: F401  (fixture)

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


def test_parse_set_reads_yaml_values():
    assert parse_set(["temperature=2", "losses=[kd, hidden-mse]", "layer_map=null"]) == {
        "temperature": 2, "losses": ["kd", "hidden-mse"], "layer_map": None}
    with pytest.raises(AlambicError, match="expected key=value"):
        parse_set(["temperature"])


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
    from alambic.distill import train_settings
    from alambic.teacher import teacher_settings

    assert not train_settings(DistillConfig()).bucket and not teacher_settings(TeacherConfig()).bucket
    assert train_settings(DistillConfig(bucket_by_length=True)).bucket
    assert teacher_settings(TeacherConfig(bucket_by_length=True)).bucket
