"""``alambic personalize BUNDLE FEEDBACK``: the phone's update of the head, run off the phone, measured.

::

    result = personalize("export/", "feedback.tsv", golden="golden.tsv")   # or config=..., for data.golden
    result.updated, result.reason     # False when fewer than min_samples rows would update the head
    result.figures["held_out"]        # {"rows": 60, "before": 0.72, "after": 0.93}
    format_personalization(result)    # a rich table

What it does, in the order the app's ``MLUpdateTask`` would (examples/ios/README.md):

1. read ``coreml/UpdatableClassifier.mlmodel``: the head (inner product + softmax), its loss and
   its optimizer's settings, from the spec (:mod:`alambic.ship.personalize_spec`);
2. read the feedback (text, corrected label: :mod:`alambic.ship.personalize_feedback`) and hold
   out a seeded part of it (``holdout``, 20%) to measure on; the rest updates the head, when it
   holds at least ``min_samples`` rows (30, the documents' minimum before an update); else no
   update, said as such (not an error);
3. the frozen encoder's pooled vectors of every text (:mod:`alambic.ship.personalize_features`);
4. the update: mini-batch SGD on the mean cross-entropy (:mod:`alambic.ship.personalize_update`);
5. accuracy before and after on the held-out feedback and on a golden set (the user's labels
   vs the rest of the world's), and what changed;
6. write ``--out`` (default ``<bundle>-personalized/``): ``head.npz`` (weight, bias, fp32),
   ``UpdatableClassifier.personalized.mlmodel`` (the bundle's model holding that head),
   ``personalization.json`` (the rule, the rows, the figures) and ``update_inputs.json``: the rows
   as the app feeds ``MLUpdateTask`` (token ids and mask, label name, part: update or held_out), the
   settings used and the off-device result on the held-out rows, for the macOS check that runs the
   same update in Core ML (examples/ios/UpdateCheck). The bundle is left as it is: its
   ``UpdatableClassifier.mlmodel`` is the app's "reset to the initial model".
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from alambic.errors import AlambicError
from alambic.ship.coreml_export import save_spec
from alambic.ship.exporter import load_source
from alambic.ship.personalize_features import Encoder
from alambic.ship.personalize_feedback import Feedback, read_feedback, read_golden
from alambic.ship.personalize_spec import Head, UpdatableModel, UpdateRule, read_updatable
from alambic.ship.personalize_update import probabilities, sgd_update

MODEL_FILE = "UpdatableClassifier.mlmodel"
PERSONALIZED_FILE = "UpdatableClassifier.personalized.mlmodel"
HEAD_FILE, RECORD_FILE, INPUTS_FILE = "head.npz", "personalization.json", "update_inputs.json"
MIN_SAMPLES = 30
MOVED = 0.05  # a golden label whose accuracy moved this much is shown in the table


@dataclass
class PersonalizeResult:
    bundle: Path
    feedback: str
    updated: bool
    reason: str  # why there was no update, or ""
    rule: UpdateRule
    rows: dict[str, int]  # feedback, update, held_out, golden
    encoder: str = ""  # where the encoder's weights came from, in words
    figures: dict[str, Any] = field(default_factory=dict)  # held_out / golden / update: rows, before, after
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    out: Path | None = None
    written: list[str] = field(default_factory=list)
    reset: Path | None = None  # the bundle's own updatable model: the app's "reset to the initial model"

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found.update(bundle=str(self.bundle), out=str(self.out) if self.out else None,
                     reset=str(self.reset) if self.reset else None)
        return found


def personalize(bundle: str | os.PathLike[str], feedback: str | os.PathLike[str], *,
                out: str | os.PathLike[str] | None = None, golden: str | os.PathLike[str] | None = None,
                config: Any = None, min_samples: int = MIN_SAMPLES, holdout: float = 0.2, seed: int = 0,
                encoder_weights: str = "mlmodel", stage: str | os.PathLike[str] | None = None,
                learning_rate: float | None = None, batch_size: int | None = None, epochs: int | None = None,
                quiet: bool = True) -> PersonalizeResult:
    """Update the bundle's head on ``feedback`` as the phone would, and measure it (see the module doc).

    :param golden: a file in the feedback format; with ``config`` (a RunConfig), a file in the run's
        data format instead, and without ``golden`` the config's ``data.golden``.
    :param learning_rate, batch_size, epochs: what the app may set in MLModelConfiguration; None =
        the spec's defaults. Each is checked against what the spec allows.
    """
    if not 0 <= holdout < 1:
        raise AlambicError(f"--holdout must be in [0, 1), got {holdout}")
    if min_samples < 1:
        raise AlambicError(f"--min-samples must be >= 1, got {min_samples}")
    path, coreml = find_model(bundle)
    model = read_updatable(path)
    rule = model.rule_with(learning_rate=learning_rate, batch_size=batch_size, epochs=epochs)
    rows = read_feedback(feedback, model.labels)
    gold = _golden(model, golden, config)
    update, held = split(len(rows), holdout, seed)
    counts = {"feedback": len(rows), "update": len(update), "held_out": len(held), "golden": len(gold) if gold else 0}
    result = PersonalizeResult(Path(bundle), rows.path, False, "", rule, counts, reset=path.resolve())
    if len(update) < min_samples:
        result.reason = (f"{len(update)} feedback rows would update the head ({len(rows)} in {rows.path}, "
                         f"{len(held)} held out to measure), fewer than --min-samples {min_samples}: no update")
        return result
    encoder = _encoder(model, coreml, bundle, stage, encoder_weights)
    result.encoder = encoder.loaded
    features = encoder.features(rows.texts, quiet=quiet, desc="feedback")
    targets = np.asarray(rows.targets)
    head, result.losses = sgd_update(model.head, features[update], targets[update], rule, seed)
    result.updated = True
    result.figures = {"update": _before_after(model.head, head, features[update], targets[update]),
                      "held_out": _before_after(model.head, head, features[held], targets[held])}
    if gold is not None:
        gold_features = encoder.features(gold.texts, quiet=quiet, desc="golden")
        result.figures["golden"] = _before_after(model.head, head, gold_features, np.asarray(gold.targets),
                                                 model.labels)
    result.out = Path(out) if out is not None else _default_out(bundle)
    inputs = update_inputs(model, result, rows, token_ids(encoder, rows.texts), (update, held), head,
                           features, seed)
    result.written = write_outputs(result, model, head, inputs)
    return result


def find_model(bundle: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(the updatable .mlmodel, the folder of the app's tokenizer files) of an export bundle, its
    coreml/ folder, or the .mlmodel itself."""
    path = Path(bundle)
    for candidate in (path / "coreml" / MODEL_FILE, path / MODEL_FILE, path):
        if candidate.is_file() and candidate.suffix == ".mlmodel":
            return candidate, candidate.parent
    raise AlambicError(f"{bundle}: no coreml/{MODEL_FILE} (export the bundle with `alambic export RUN --format "
                       f"coreml`, whose option coreml.updatable is on by default)")


def split(count: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows that update the head, rows held out to measure on), a seeded draw, each in file order."""
    order = np.random.default_rng(seed).permutation(count)
    held = int(round(count * holdout))
    return np.sort(order[held:]), np.sort(order[:held])


def _golden(model: UpdatableModel, golden: Any, config: Any) -> Feedback | None:
    if config is not None and (golden is not None or config.data.golden is not None):
        return read_golden(config.data, model.labels, golden)
    return read_feedback(golden, model.labels) if golden is not None else None


def _encoder(model: UpdatableModel, coreml: Path, bundle: Any, stage: Any, weights: str) -> Encoder:
    stage_dir = Path(stage) if stage is not None else stage_of(bundle)
    if not stage_dir.is_dir():
        raise AlambicError(f"the compress stage {stage_dir} (the encoder's architecture) is not there: pass "
                           f"--stage DIR, the stage folder the bundle was exported from")
    source = load_source(stage_dir)
    if source.labels != model.labels:
        raise AlambicError(f"{stage_dir}: its labels ({', '.join(source.labels)}) are not the bundle's "
                           f"({', '.join(model.labels)}): not the stage this bundle was exported from")
    return Encoder.load(source.model, coreml, model.max_length or source.max_length, spec=model.spec, weights=weights)


def stage_of(bundle: Any) -> Path:
    """The compress stage the bundle was exported from: manifest.json's ``meta.source.stage``."""
    root = bundle_root(bundle)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise AlambicError(f"{root}: no manifest.json to name the compress stage: pass --stage DIR")
    stage = ((json.loads(manifest.read_text(encoding="utf-8")).get("meta") or {}).get("source") or {}).get("stage")
    if not stage:
        raise AlambicError(f"{manifest}: meta.source.stage is missing: pass --stage DIR")
    return Path(stage)


def _before_after(before: Head, after: Head, features: np.ndarray, targets: np.ndarray,
                  labels: list[str] | None = None) -> dict[str, Any]:
    """Accuracy of the initial and the updated head on these rows, and how many predictions changed;
    per label (the rows whose label it is) when ``labels`` are given."""
    if len(targets) == 0:
        return {"rows": 0, "before": None, "after": None, "changed": 0}
    old, new = probabilities(before, features).argmax(-1), probabilities(after, features).argmax(-1)
    found: dict[str, Any] = {"rows": len(targets), "before": float((old == targets).mean()),
                             "after": float((new == targets).mean()), "changed": int((old != new).sum())}
    if labels is not None:
        found["per_label"] = {name: {"rows": int(mask.sum()), "before": float((old[mask] == i).mean()),
                                     "after": float((new[mask] == i).mean())}
                              for i, name in enumerate(labels) if (mask := targets == i).any()}
    return found


def token_ids(encoder: Encoder, texts: list[str]) -> list[list[int]]:
    """The ids the bundle's tokenizer gives each text, cut to the model's maximum length: the call
    :meth:`Encoder.features` makes, so the very ids the features were computed from."""
    found = encoder.tokenizer(list(texts), truncation=True, max_length=encoder.max_length)["input_ids"]
    return [[int(i) for i in ids] for ids in found]


def update_inputs(model: UpdatableModel, result: PersonalizeResult, rows: Feedback, ids: list[list[int]],
                  parts: tuple[np.ndarray, np.ndarray], head: Head, features: np.ndarray, seed: int) -> dict[str, Any]:
    """update_inputs.json: what examples/ios/UpdateCheck feeds one ``MLUpdateTask`` and what it compares
    with. ``rows``: the update rows, then the held-out rows, each in file order, as the app feeds them
    (``input_ids`` and ``attention_mask`` as Float32 (1, T) arrays, ``label`` a String); ``off_device``:
    the held-out accuracy before and after, and the off-device heads' label for each held-out row,
    in the order of the held-out rows."""
    update, held = parts
    rule, labels = result.rule, model.labels
    entries = [{"part": part, "row": int(i), "text": rows.texts[i], "label": labels[rows.targets[i]],
                "input_ids": ids[i], "attention_mask": [1] * len(ids[i])}
               for part, indices in (("update", update), ("held_out", held)) for i in indices]
    figures = result.figures["held_out"]
    return {
        "model": MODEL_FILE,
        "model_sha256": hashlib.sha256(model.path.read_bytes()).hexdigest(),
        "labels": list(labels),
        "max_length": model.max_length,
        "features": {"input_ids": "Float32 (1, T)", "attention_mask": "Float32 (1, T)", "label": "String"},
        # spec_defaults: no --learning-rate/--batch-size/--epochs, so one MLUpdateTask with no
        # MLModelConfiguration.parameters runs this very rule (shuffle order aside)
        "settings": {"learning_rate": rule.learning_rate, "batch_size": rule.batch_size, "epochs": rule.epochs,
                     "shuffle": rule.shuffle, "momentum": rule.momentum, "seed": rule.seed,
                     "spec_defaults": rule == model.rule},
        "counts": {"update": len(update), "held_out": len(held)},
        "rows": entries,
        "off_device": {
            "held_out_before": figures["before"], "held_out_after": figures["after"],
            "predicted_before": [labels[i] for i in probabilities(model.head, features[held]).argmax(-1)],
            "predicted": [labels[i] for i in probabilities(head, features[held]).argmax(-1)],
            "losses": list(result.losses),
            "shuffle_seed": rule.seed if rule.seed is not None else seed,
        },
    }


def bundle_root(bundle: Any) -> Path:
    """The export folder of a bundle given as itself, its coreml/ folder or its .mlmodel."""
    root = Path(bundle).resolve()
    while root.suffix == ".mlmodel" or root.name == "coreml":
        root = root.parent
    return root


def _default_out(bundle: Any) -> Path:
    root = bundle_root(bundle)
    return root.parent / f"{root.name}-personalized"


def write_outputs(result: PersonalizeResult, model: UpdatableModel, head: Head,
                  inputs: dict[str, Any] | None = None) -> list[str]:
    """head.npz, the personalized .mlmodel, personalization.json and (given ``inputs``)
    update_inputs.json into ``result.out``."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / HEAD_FILE, weight=head.weight, bias=head.bias, labels=np.asarray(model.labels))
    save_spec(model.with_head(head), out / PERSONALIZED_FILE)
    written = [HEAD_FILE, PERSONALIZED_FILE, RECORD_FILE]
    if inputs is not None:
        (out / INPUTS_FILE).write_text(json.dumps(inputs, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(INPUTS_FILE)
    record = result.to_dict() | {"written": written, "head_layer": model.head_layer, "labels": model.labels}
    (out / RECORD_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return written


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def format_personalization(result: PersonalizeResult) -> Table:
    """Before and after, per set of rows: accuracy, and how many predictions the update changed."""
    table = Table("rows", "count", "before", "after", "change", "predictions changed",
                  title=f"personalize: {result.rule.describe()}")
    names = {"held_out": "held-out feedback", "golden": "golden set", "update": "feedback it learnt from"}
    for key in ("held_out", "golden", "update"):
        found = result.figures.get(key)
        if not found:
            continue
        rows = [(names[key], found)]
        # the golden labels the update moved most (>= MOVED): where the user's labels and the world's part
        moved = sorted(((n, v) for n, v in (found.get("per_label") or {}).items()
                        if abs(v["after"] - v["before"]) >= MOVED),
                       key=lambda item: item[1]["after"] - item[1]["before"])
        rows += [(f"  golden, label {name}", value) for name, value in moved[:3]]
        for name, value in rows:
            change = "" if value["before"] is None else f"{100 * (value['after'] - value['before']):+.1f} points"
            table.add_row(name, str(value["rows"]), _percent(value["before"]), _percent(value["after"]), change,
                          str(value.get("changed", "")))
    return table


__all__ = ["INPUTS_FILE", "MIN_SAMPLES", "PersonalizeResult", "find_model", "format_personalization", "personalize",
           "split", "stage_of", "token_ids", "update_inputs"]
