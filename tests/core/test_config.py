from __future__ import annotations

import pytest

from alambic.config import RunConfig, check_plugin_ids, config_schema, key_path, load_config
from alambic.errors import ConfigError
from alambic.registry import PluginSource, Registry


def fake_registry() -> Registry:
    registry = Registry()
    for kind, ids in {"datasets": ["files", "hf"], "students": ["roberta-l4", "tinybert-4l"],
                      "pruners": ["heads", "ffn"], "quantizers": ["dynamic-int8"]}.items():
        registry[kind]._source = PluginSource("test")
        for plugin_id in ids:
            registry[kind].add(type(plugin_id, (), {"id": plugin_id}))
    return registry


def problems(path, registry=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, registry=registry)
    return info.value.problems


def test_minimal_config_loads_with_defaults_and_resolved_paths(write_config, minimal_config, tiny_tsv):
    config = load_config(write_config(minimal_config), registry=fake_registry())
    assert isinstance(config, RunConfig)
    assert config.data.train == str(tiny_tsv.resolve())
    assert config.guard.max_drop == 1.0 and config.guard.retries == 2
    assert config.ray.address is None and config.store == "artifacts"


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


def test_missing_data_file_names_key_and_path(write_config, minimal_config, tmp_path):
    minimal_config["data"]["validation"] = "nowhere/dev.tsv"
    (problem,) = problems(write_config(minimal_config))
    assert problem == f"data.validation: file not found: {tmp_path / 'nowhere' / 'dev.tsv'}"


def test_every_problem_reported_at_once(write_config, minimal_config):
    minimal_config["teacher"] = {"epochs": 0, "learning_rate": "fast", "batch_sise": 8}
    found = problems(write_config(minimal_config))
    assert [p.split(":")[0] for p in found] == [
        "teacher.epochs", "teacher.learning_rate", "teacher.batch_sise"]


def test_distillation_space_unknown_setting(write_config, minimal_config):
    minimal_config["search"] = {"students": ["roberta-l4"], "space": {"temprature": [1, 2]}}
    (problem,) = problems(write_config(minimal_config))
    assert problem.startswith("search.space:") and "did you mean 'temperature'" in problem


def test_yaml_syntax_error_names_line(write_config, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata: [unclosed\n", encoding="utf-8")
    (problem,) = problems(path)
    assert problem.startswith("line 3") or problem.startswith("line 2"), problem
    assert "YAML syntax error" in problem


@pytest.mark.parametrize("text, expected", [("", "an empty file"), ("- a\n- b\n", "list")])
def test_config_must_be_a_mapping(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    (problem,) = problems(path)
    assert expected in problem


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    (problem,) = problems(path)
    assert "python/object/apply:os.system" in problem and "plain values only" in problem


def test_missing_config_file(tmp_path):
    assert problems(tmp_path / "absent.yaml") == ["config file not found"]


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


def test_schema_lists_sections():
    schema = config_schema()
    assert {"name", "data", "tokenizer", "teacher", "search", "guard", "select", "export", "ray",
            "store"} <= set(schema["properties"])
    assert schema["required"] == ["name", "data", "tokenizer"]


def test_unknown_ids_reported_with_structural_problems(write_config, minimal_config):
    minimal_config["search"] = {"students": ["robreta-l4"], "trials": "many"}
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert [p.split(":")[0] for p in found] == ["search.trials", "search.students[0]"]


def test_wrongly_shaped_sections_do_not_crash_the_id_check(write_config, minimal_config):
    minimal_config["search"] = {"students": "roberta-l4", "pruning": ["heads"], "space": []}
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert found and all(p.startswith("search.") for p in found)


def test_a_student_init_folder_is_read_relative_to_the_config(write_config, minimal_config, tmp_path):
    (tmp_path / "weights").mkdir()
    minimal_config["search"] = {"students": ["roberta-l4"],
                                "student_init": {"roberta-l4": "weights", "tinybert-4l": "huawei-noah/TinyBERT_4L_zh"}}
    config = load_config(write_config(minimal_config), registry=fake_registry())
    assert config.search.student_init == {"roberta-l4": str((tmp_path / "weights").resolve()),
                                          "tinybert-4l": "huawei-noah/TinyBERT_4L_zh"}  # a hub id, as written


def test_unknown_model_sources_and_student_ids_in_init_are_named(write_config, minimal_config):
    minimal_config["teacher"] = {"model": "nanoe6:multilingual-e5-small"}
    minimal_config["search"] = {"students": ["roberta-l4"], "student_init": {"roberta-l5": "random"}}
    found = problems(write_config(minimal_config), registry=fake_registry())
    assert any(p.startswith("teacher.model: nanoe6:multilingual-e5-small: unknown model_sources id 'nanoe6'")
               for p in found), found
    assert any(p.startswith("search.student_init.roberta-l5: unknown students id 'roberta-l5' "
                            "(did you mean 'roberta-l4'?)") for p in found), found
