from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

from alambic import manager
from alambic.errors import PluginError
from alambic.manager import build_registry, disabled_plugins, get_plugin_manager
from alambic.registry import KINDS


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Replace the `alambic` entry-point group with modules written into tmp_path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    entry_points: list[importlib.metadata.EntryPoint] = []
    monkeypatch.setattr(manager.importlib.metadata, "entry_points",
                        lambda group: [ep for ep in entry_points if ep.group == group])

    def add(name: str, source: str) -> None:
        # unique per test: Python caches imported modules by name
        module = f"fake_plugin_{name}_{''.join(c for c in tmp_path.name if c.isalnum())}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        entry_points.append(importlib.metadata.EntryPoint(name, module, "alambic"))

    return add


STUDENT_PLUGIN = """
    import alambic

    class {cls}:
        \"\"\"A student for tests.\"\"\"
        id = "{id}"

    @alambic.hookimpl
    def alambic_register_students(register):
        register.add({cls})
"""


def test_plugins_register_through_hooks(fake_plugins):
    fake_plugins("one", STUDENT_PLUGIN.format(cls="One", id="one-student"))
    registry = build_registry(get_plugin_manager(env={}))
    entry = registry["students"].entries["one-student"]
    assert entry.source.name == "one" and entry.description == "A student for tests."
    assert registry["students"].get("one-student").__name__ == "One"


def test_plugin_raising_at_import_is_reported_and_others_load(fake_plugins):
    fake_plugins("broken", "raise RuntimeError('no GPU driver here')\n")
    fake_plugins("fine", STUDENT_PLUGIN.format(cls="Fine", id="fine-student"))
    registry = build_registry(get_plugin_manager(env={}))
    assert registry["students"].ids() == ["fine-student"]
    [(source, error)] = registry.failures
    assert source.name == "broken" and error == "RuntimeError: no GPU driver here"


def test_duplicate_id_names_both_plugins(fake_plugins):
    fake_plugins("first", STUDENT_PLUGIN.format(cls="A", id="same"))
    fake_plugins("second", STUDENT_PLUGIN.format(cls="B", id="same"))
    with pytest.raises(PluginError) as info:
        build_registry(get_plugin_manager(env={}))
    message = str(info.value)
    assert "students id 'same' is registered twice" in message
    assert "'first'" in message and "'second'" in message


def test_disable_env_blocks_a_plugin(fake_plugins):
    fake_plugins("one", STUDENT_PLUGIN.format(cls="One", id="one-student"))
    fake_plugins("two", STUDENT_PLUGIN.format(cls="Two", id="two-student"))
    pm = get_plugin_manager(env={"ALAMBIC_DISABLE_PLUGINS": " two , other"})
    assert build_registry(pm)["students"].ids() == ["one-student"]


def test_disabled_plugins_parsing():
    assert disabled_plugins({"ALAMBIC_DISABLE_PLUGINS": "a,, b ,"}) == {"a", "b"}
    assert disabled_plugins({}) == set()


def test_misspelled_hook_is_reported_not_fatal(fake_plugins):
    fake_plugins("typo", """
        import alambic

        @alambic.hookimpl
        def alambic_register_studnets(register):
            pass
    """)
    fake_plugins("fine", STUDENT_PLUGIN.format(cls="Fine", id="fine-student"))
    registry = build_registry(get_plugin_manager(env={}))
    assert registry["students"].ids() == ["fine-student"]
    [(source, error)] = registry.failures
    assert source.name == "typo" and "alambic_register_studnets" in error


def test_bad_plugin_id_is_rejected(fake_plugins):
    fake_plugins("bad", STUDENT_PLUGIN.format(cls="Bad", id="Has Spaces"))
    with pytest.raises(PluginError, match="needs a class attribute `id`"):
        build_registry(get_plugin_manager(env={}))


def test_unknown_id_lookup_suggests(fake_plugins):
    fake_plugins("one", STUDENT_PLUGIN.format(cls="One", id="roberta-l4"))
    registry = build_registry(get_plugin_manager(env={}))
    with pytest.raises(PluginError, match="unknown students id 'roberta-l5' \\(did you mean 'roberta-l4'\\?\\)"):
        registry["students"].get("roberta-l5")


def test_builtins_come_from_the_alambic_distribution():
    registry = build_registry(get_plugin_manager(env={}))
    assert not registry.failures, registry.failures
    assert set(registry.kinds) == set(KINDS)
    for kind in ("datasets", "students"):
        entries = registry[kind].entries.values()
        assert entries and all(e.source.package == "alambic" for e in entries)
    assert {"files", "hf"} <= set(registry["datasets"].ids())
    assert {"roberta-l4", "tinybert-4l", "mobilebert-adapter"} <= set(registry["students"].ids())
