"""core/config_problems.py: every problem of a run config on one line, naming its key path, the bad
value and what is allowed (did you mean ...?); plugin ids checked against the registry."""

from __future__ import annotations

from alambic.config import load_config
from alambic.config_problems import check_plugin_ids, key_path
from tests.core.test_config import fake_registry, problems


def test_typo_key_names_path_and_suggests(write_config, minimal_config):
    minimal_config["data"]["trian"] = minimal_config["data"].pop("train")
    found = problems(write_config(minimal_config))
    assert any(p.startswith("data.trian: unknown key (did you mean 'train'?)") for p in found), found


def test_unknown_top_level_section(write_config, minimal_config):
    minimal_config["serach"] = {"students": ["roberta-l4"]}
    (problem,) = problems(write_config(minimal_config))
    assert "serach: unknown key (did you mean 'search'?)" in problem


def test_wrong_type_names_key_and_value(write_config, minimal_config):
    minimal_config["teacher"] = {"epochs": "three"}
    (problem,) = problems(write_config(minimal_config))
    assert problem.startswith("teacher.epochs:") and "'three'" in problem and "integer" in problem


def test_out_of_range_value(write_config, minimal_config):
    minimal_config["guard"] = {"max_drop": -1}
    (problem,) = problems(write_config(minimal_config))
    assert problem.startswith("guard.max_drop:") and "greater than or equal to 0" in problem


def test_literal_choice_suggests(write_config, minimal_config):
    minimal_config["data"]["bad_rows"] = "skp"
    (problem,) = problems(write_config(minimal_config))
    assert "data.bad_rows" in problem and "'error' or 'skip'" in problem and "did you mean 'skip'" in problem


def test_unknown_student_id_suggests_and_lists_allowed(write_config, minimal_config):
    minimal_config["search"] = {"students": ["roberta-l4", "robreta-l4"]}
    (problem,) = problems(write_config(minimal_config), registry=fake_registry())
    assert problem.startswith("search.students[1]: unknown students id 'robreta-l4'")
    assert "did you mean 'roberta-l4'?" in problem and "allowed: roberta-l4, tinybert-4l" in problem


def test_unknown_pruner_and_quantizer(write_config, minimal_config):
    minimal_config["search"] = {
        "students": ["roberta-l4"],
        "pruning": [[{"pruner": "head", "amount": 0.25}]],
        "quantization": ["none", "dynamic_int8"],
    }
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert any("search.pruning[0][0].pruner" in p and "did you mean 'heads'" in p for p in found)
    assert any("search.quantization[1]" in p and "did you mean 'dynamic-int8'" in p for p in found)


def test_every_problem_reported_at_once(write_config, minimal_config):
    minimal_config["teacher"] = {"epochs": 0, "learning_rate": "fast", "batch_sise": 8}
    found = problems(write_config(minimal_config))
    assert [p.split(":")[0] for p in found] == [
        "teacher.epochs", "teacher.learning_rate", "teacher.batch_sise"]


def test_default_plugin_ids_are_not_checked_until_written(write_config, minimal_config):
    load_config(write_config(minimal_config), registry=fake_registry())
    assert check_plugin_ids(minimal_config, fake_registry()) == []
    minimal_config["export"] = {"formats": ["onnx"]}
    (problem,) = problems(write_config(minimal_config), registry=fake_registry())
    assert problem.startswith("export.formats[0]: unknown exporters id 'onnx'")


def test_key_path_formatting():
    assert key_path(("search", "students", 1)) == "search.students[1]"
    assert key_path(("search", "pruning", 0, 2, "pruner")) == "search.pruning[0][2].pruner"
    assert key_path(()) == "(top level)"


def test_unknown_ids_reported_with_structural_problems(write_config, minimal_config):
    minimal_config["search"] = {"students": ["robreta-l4"], "trials": "many"}
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert [p.split(":")[0] for p in found] == ["search.trials", "search.students[0]"]


def test_wrongly_shaped_sections_do_not_crash_the_id_check(write_config, minimal_config):
    minimal_config["search"] = {"students": "roberta-l4", "pruning": ["heads"], "space": []}
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert found and all(p.startswith("search.") for p in found)


def test_unknown_model_sources_and_student_ids_in_init_are_named(write_config, minimal_config):
    minimal_config["teacher"] = {"model": "nanoe6:multilingual-e5-small"}
    minimal_config["search"] = {"students": ["roberta-l4"], "student_init": {"roberta-l5": "random"}}
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert any(p.startswith("teacher.model: nanoe6:multilingual-e5-small: unknown model_sources id 'nanoe6'")
               for p in found), found
    assert any(p.startswith("search.student_init.roberta-l5: unknown students id 'roberta-l5' "
                            "(did you mean 'roberta-l4'?)") for p in found), found


def test_an_executorch_objective_needs_the_executorch_timing(write_config, minimal_config):
    objectives = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "executorch_p50_ms", "mode": "min"}]
    minimal_config["search"] = {"students": ["roberta-l4"], "objectives": objectives}
    (problem,) = problems(write_config(minimal_config), registry=fake_registry())
    assert problem == "search.objectives: executorch_p50_ms is measured only with search.measure.runtimes: [executorch]"
    minimal_config["search"]["measure"] = {"runtimes": ["executorch"]}
    assert load_config(write_config(minimal_config), registry=fake_registry()).search.measure.runtimes == ["executorch"]
