"""Every hook is typed, documented, and exercised here (datasette's `test_plugin_hooks_have_tests`)."""

from __future__ import annotations

import inspect

import pytest

import alambic
from alambic import hookspecs
from alambic.manager import PluginManager, build_registry
from alambic.registry import KINDS

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("alambic_"))
LIFECYCLE = [h for h in HOOKS if h.startswith("alambic_after_")]


def test_registrar_hooks_match_the_kinds():
    assert sorted(KINDS.values()) == sorted(h for h in HOOKS if h.startswith("alambic_register_"))


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_params(hook):
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function) or ""
    for param in inspect.signature(function).parameters:
        assert f":param {param}:" in doc, f"{hook} does not document {param}"


class Recorder:
    """Implements every lifecycle hook and records the calls."""

    def __init__(self):
        self.calls = []

    @alambic.hookimpl
    def alambic_after_teacher(self, context, teacher):
        self.calls.append(("alambic_after_teacher", context, teacher))

    @alambic.hookimpl
    def alambic_after_distill(self, context, student):
        self.calls.append(("alambic_after_distill", context, student))

    @alambic.hookimpl
    def alambic_after_candidate_measured(self, context, record):
        self.calls.append(("alambic_after_candidate_measured", context, record))

    @alambic.hookimpl
    def alambic_after_search(self, context, results):
        self.calls.append(("alambic_after_search", context, results))


def test_recorder_covers_every_lifecycle_hook():
    assert sorted(h for h in vars(Recorder) if h.startswith("alambic_")) == LIFECYCLE


@pytest.mark.parametrize("hook", LIFECYCLE)
def test_lifecycle_hook_reaches_every_implementation(hook):
    recorders = [Recorder(), Recorder()]
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for i, recorder in enumerate(recorders):
        pm.register(recorder, name=f"recorder{i}")
    pm.check_pending()
    (param,) = [p for p in inspect.signature(getattr(hookspecs, hook)).parameters if p != "context"]
    getattr(pm.hook, hook)(context="ctx", **{param: "payload"})
    assert [r.calls for r in recorders] == [[(hook, "ctx", "payload")]] * 2


def test_registrar_hooks_hand_over_a_kind_registry():
    seen = {}

    class Spy:
        pass

    for kind, hook in KINDS.items():
        def impl(register, _kind=kind):
            seen[_kind] = register.kind
        impl.__name__ = hook
        setattr(Spy, hook, staticmethod(alambic.hookimpl(impl)))
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(Spy(), name="spy")
    build_registry(pm)
    assert seen == {kind: kind for kind in KINDS}
