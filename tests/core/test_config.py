"""core/config.py: a run config loads into typed sections, paths resolved; bad YAML, files and shapes are refused."""

from __future__ import annotations

import pytest

from alambic.config import RunConfig, load_config
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


def test_missing_data_file_names_key_and_path(write_config, minimal_config, tmp_path):
    minimal_config["data"]["validation"] = "nowhere/dev.tsv"
    (problem,) = problems(write_config(minimal_config))
    assert problem == f"data.validation: file not found: {tmp_path / 'nowhere' / 'dev.tsv'}"


@pytest.mark.parametrize("where", ["train", "label_names"])
def test_a_nul_character_is_refused_naming_its_key(write_config, minimal_config, where):
    """Found by test_reliability.py::test_any_value_anywhere_validates_or_names_its_key: a NUL in a path
    made its resolution raise ValueError instead of a ConfigError."""
    minimal_config["data"][where] = "train.tsv\x00"
    assert "data." + where + ": contains a NUL character (\\x00)" in problems(write_config(minimal_config))


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


def test_a_student_init_folder_is_read_relative_to_the_config(write_config, minimal_config, tmp_path):
    (tmp_path / "weights").mkdir()
    minimal_config["search"] = {"students": ["roberta-l4"],
                                "student_init": {"roberta-l4": "weights", "tinybert-4l": "huawei-noah/TinyBERT_4L_zh"}}
    config = load_config(write_config(minimal_config), registry=fake_registry())
    assert config.search.student_init == {"roberta-l4": str((tmp_path / "weights").resolve()),
                                          "tinybert-4l": "huawei-noah/TinyBERT_4L_zh"}  # a hub id, as written
