"""core/config_reference.py: the JSON schema of a run config, and the Markdown reference README shows."""

from __future__ import annotations

from alambic.config_reference import config_reference, config_schema
from tests.conftest import PROJECT
from tests.core.test_cli import alambic


def test_schema_lists_sections():
    schema = config_schema()
    assert {"name", "data", "tokenizer", "teacher", "search", "guard", "select", "export", "ray",
            "store"} <= set(schema["properties"])
    assert schema["required"] == ["name", "data", "tokenizer"]


def test_readme_configuration_reference_is_the_schema():
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    assert config_reference() in readme, "README is out of date: paste `alambic config schema --markdown`"
    assert alambic("config", "schema", "--markdown").stdout == config_reference()
