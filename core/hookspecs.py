"""Every hook alambic calls, grouped by the phase (sub-package of core/) that calls it.

Two families:

* **Registrar hooks** (``alambic_register_*``) are handed a :class:`~alambic.registry.KindRegistry`
  and add plugin classes to it, keyed by the class's stable ``id``. Built-in plugins use them
  exactly as a third-party package does (entry-point group ``alambic``).
* **Lifecycle hooks** (``alambic_after_*``) are called with the run context as a run progresses.

The run, with the place each lifecycle hook fires::

    config = load_config(path)
    data = DATASETS[config.data.source].load(config.data)      # tokenized, cached
    teacher = train_or_load_teacher(config.teacher, data)
    # <alambic_after_teacher>
    for candidate in search(config.search):                    # one Ray Tune trial each
        student = distill(candidate)                           # Ray Train
        # <alambic_after_distill>
        model = quantize(prune(student))                       # each step guarded
        record = measure(model)
        # <alambic_after_candidate_measured>
    # <alambic_after_search>
    front -> select -> export -> report

Only :data:`alambic.hookimpl` is public; the spec marker stays private to this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from alambic.registry import KindRegistry

_hookspec = pluggy.HookspecMarker("alambic")


# --- data: alambic.data ---------------------------------------------------------------------


@_hookspec
def alambic_register_datasets(register: KindRegistry) -> None:
    """Add data sources (classes with ``id`` and ``load(data_config) -> DatasetDict``).

    :param register: call ``register.add(SourceClass)`` for each data source.
    """


# --- train: alambic.train (teacher, distillation) -------------------------------------------


@_hookspec
def alambic_register_model_sources(register: KindRegistry) -> None:
    """Add sources of pretrained models other than the hub (a subclass of
    :class:`alambic.model_sources.ModelSource`): ``<id>:<model>`` names one of its models in
    ``teacher.model`` or a student's ``init``, converted once into a transformers folder.

    :param register: call ``register.add(SourceClass)`` for each source.
    """


@_hookspec
def alambic_register_students(register: KindRegistry) -> None:
    """Add student architectures (classes with ``id``, ``build(num_labels, **overrides)``).

    :param register: call ``register.add(StudentClass)`` for each student.
    """


@_hookspec
def alambic_register_distill_losses(register: KindRegistry) -> None:
    """Add distillation loss terms (logits KD, hidden-state MSE, attention transfer, ...).

    :param register: call ``register.add(LossClass)`` for each loss.
    """


@_hookspec
def alambic_after_teacher(context: Any, teacher: Any) -> None:
    """Called once the teacher is trained or loaded, before any distillation.

    :param context: the run context (config, store, run directory).
    :param teacher: the teacher's record (path in the store, metrics).
    """


@_hookspec
def alambic_after_distill(context: Any, student: Any) -> None:
    """Called after each distillation finishes (or is reused from the store).

    :param context: the run context.
    :param student: the distilled student's record (student id, settings, metrics, path).
    """


# --- compress: alambic.compress (prune, quantize) -------------------------------------------


@_hookspec
def alambic_register_pruners(register: KindRegistry) -> None:
    """Add pruning methods (heads, layers, FFN width, magnitude, vocabulary, ...).

    :param register: call ``register.add(PrunerClass)`` for each pruner.
    """


@_hookspec
def alambic_register_quantizers(register: KindRegistry) -> None:
    """Add quantization methods (dynamic/static INT8, FP16, ...).

    :param register: call ``register.add(QuantizerClass)`` for each quantizer.
    """


# --- search: alambic.search (measured candidates, selection) --------------------------------


@_hookspec
def alambic_after_candidate_measured(context: Any, record: Any) -> None:
    """Called after a candidate is measured (accuracy, size, latency, memory).

    :param context: the run context.
    :param record: the candidate's result row, as a dict.
    """


@_hookspec
def alambic_register_selection_policies(register: KindRegistry) -> None:
    """Add selection policies that pick one candidate from the Pareto front (device tiers, ...).

    :param register: call ``register.add(PolicyClass)`` for each policy.
    """


@_hookspec
def alambic_after_search(context: Any, results: Any) -> None:
    """Called once the search is over, with every candidate's result.

    :param context: the run context.
    :param results: the results table (one row per candidate).
    """


# --- ship: alambic.ship (export) ------------------------------------------------------------


@_hookspec
def alambic_register_exporters(register: KindRegistry) -> None:
    """Add export formats (hf, onnx, coreml, ...).

    :param register: call ``register.add(ExporterClass)`` for each exporter.
    """
