"""Export: turn a compress stage into a verified bundle an app ships (hf, onnx, coreml, ...).

::

    result = export_stage("artifacts/run/stages/<key>", "artifacts/run/export", ("hf", "onnx", "coreml"),
                          test_split=raw_test, metadata={"author": "me", "license": "Apache-2.0"})
    result.exported["onnx"].checks     # what was verified, each with its figure and ok
    result.failed                      # {"coreml": Failure(op="new_ones", fallback="try --format onnx ...")}
    format_verification(result)        # a rich table: max abs diff, argmax agreement, sizes
    stage, recipe = resolve_stage(ctx.store, candidate="c12")   # or the selected candidate

Each format is an exporter plugin (``alambic_register_exporters``, see :mod:`alambic.ship.exporter`):
a class with an ``id``, a frozen ``Options`` dataclass and ``export(source, folder, options) -> Exported``,
which writes its files into ``folder`` and verifies them. A format that raises is recorded (the error, the op that
failed when the message names one, a fallback to try) and the others are still exported.

The bundle is built in a scratch folder beside ``out_dir`` and renamed into place (the store's
``build_artifact``), so a reader sees the previous export or the new one, whole::

    export/hf/ onnx/ coreml/    one folder per format that exported
    export/verification.json    every check, per format; the failed formats and their fallbacks; with
                                data.golden, the candidate's and the teacher's figures there and the gate's verdict
    export/README.md            for the app developer: files, inputs/outputs, tokenization, labels
    export/baseline.json        what `alambic monitor` compares production predictions with
    export/manifest.json        files (sha256, size), formats, input/output spec, metrics, recipe

``test_split`` holds raw rows (``text``, ``label``), tokenized here with the stage's own
tokenizer (a pruned vocabulary has its own), or already tokenized rows (``input_ids``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from alambic.errors import AlambicError, did_you_mean
from alambic.fingerprint import stable_hash
from alambic.manager import build_registry
from alambic.ship.baseline import write_baseline
from alambic.ship.exporter import STRUCTURE, Exported, ExportSource, Failure, load_source
from alambic.store import Store

if TYPE_CHECKING:

    from alambic.store import Manifest

log = logging.getLogger(__name__)

DEFAULT_FORMATS = ("hf", "onnx", "coreml")
EXPORT_DIR = "export"
VERIFICATION_FILE = "verification.json"
README_FILE = "README.md"


# --- export ---------------------------------------------------------------------------------


@dataclass
class ExportResult:
    path: Path
    exported: dict[str, Exported]
    failed: dict[str, Failure]
    verification: dict[str, Any]
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and all(e.ok for e in self.exported.values())


def export_stage(stage_dir: str | Path, out_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS, *,
                 test_split: Any = None, recipe: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                 max_length: int | None = None, max_examples: int = 2000, registry: Any = None,
                 golden_split: Any = None, golden: Mapping[str, Any] | None = None,
                 calibration_split: Any = None) -> ExportResult:
    """Export a compress stage in each of ``formats`` into ``out_dir``, verify, write the bundle.

    :param test_split: rows to verify on (raw ``text``/``label``, or tokenized); None = checks
        that need data are skipped.
    :param recipe: how the candidate was made (its results row); default: from record.json.
    :param metadata: ``author``, ``license``, ``description`` (and ``version``) for the model files.
    :param options: per format id, that exporter's options, e.g. ``{"coreml": {"epochs": 5}}``.
    :param max_length: the longest input (tokens) the exported models take; default: the tokenizer's.
    :param golden_split: data.golden's raw rows, for the monitoring baseline (``baseline.json``,
        :mod:`alambic.ship.baseline`) beside the test split's.
    :param calibration_split: the run's train rows (raw or tokenized): exporters that calibrate int8
        activations (ExecuTorch) calibrate on a seeded sample of them, never on the rows they verify on.
    :param golden: verification.json's ``golden`` section (:func:`alambic.search.golden.export_gate`):
        the candidate on data.golden, the teacher's figures, the gate's verdict.
    """
    if registry is None:
        registry = build_registry()
    formats = list(dict.fromkeys(formats))
    exporters = [registry["exporters"].get(f) for f in formats]
    for name in options or {}:
        if name not in formats:
            raise AlambicError(f"options given for format '{name}', which is not exported ({', '.join(formats)})")
    chosen = {cls.id: cls.options((options or {}).get(cls.id)) for cls in exporters}
    source = load_source(stage_dir, test_split=test_split, recipe=recipe, metadata=metadata,
                         max_length=max_length, max_examples=max_examples, calibration_split=calibration_split)
    out = Path(out_dir).expanduser().resolve()
    inputs = {"stage": source.record.get("key", str(source.stage_dir)), "formats": formats,
              "options": {k: dataclasses.asdict(v) for k, v in chosen.items()}, "metadata": source.metadata,
              "max_length": source.max_length}
    # a new hash every time: a re-export replaces the bundle (a content key would keep a stale one)
    build = Store.open(out.parent).build_artifact(out.name, kind="export",
                                                  config_hash=f"{stable_hash(inputs)[:16]}-{uuid.uuid4().hex[:8]}")
    exported, failed = {}, {}
    with build as tmp:
        for cls in exporters:
            folder = tmp / cls.id
            folder.mkdir()
            try:
                exported[cls.id] = cls.export(source, folder, chosen[cls.id])
            except Exception as exc:  # noqa: BLE001 - one format's failure must not stop the others
                failed[cls.id] = cls.failure(exc)
                log.warning("%s", failed[cls.id].message)
                log.debug("%s export failed", cls.id, exc_info=True)
                shutil.rmtree(folder, ignore_errors=True)
        verification = _verification(source, exported, failed) | ({"golden": dict(golden)} if golden else {})
        (tmp / VERIFICATION_FILE).write_text(json.dumps(verification, ensure_ascii=False, indent=2, default=str)
                                             + "\n", encoding="utf-8")
        (tmp / README_FILE).write_text(bundle_readme(source, exported, failed), encoding="utf-8")
        write_baseline(tmp, source, golden=golden_split)  # what `alambic monitor` compares production with
        build.meta.update(_manifest_meta(source, exported, failed, inputs))
    return ExportResult(out, exported, failed, verification, build.manifest)


def _verification(source: ExportSource, exported: Mapping[str, Exported], failed: Mapping[str, Failure]) -> dict:
    found: dict[str, Any] = {"stage": str(source.stage_dir), "runtime": source.runtime,
                             "quantizer": source.quantization.get("quantizer"), "max_length": source.max_length,
                             "test_rows": 0 if source.test is None else len(source.test)}
    if source.test is not None and min(source.test["label"]) >= 0:
        labels = source.test["label"]
        predicted = source.reference_logits.argmax(-1)
        found["source_test_accuracy"] = float(sum(int(p == y) for p, y in zip(predicted, labels)) / len(labels))
    found["formats"] = {name: e.to_dict() for name, e in exported.items()}
    found["failed"] = {name: dataclasses.asdict(f) | {"message": f.message} for name, f in failed.items()}
    return found


def _manifest_meta(source: ExportSource, exported: Mapping[str, Exported], failed: Mapping[str, Failure],
                   inputs: Mapping[str, Any]) -> dict[str, Any]:
    record = source.record
    return {"formats": list(exported), "failed": {k: f.message for k, f in failed.items()},
            "io": {name: e.spec for name, e in exported.items()}, "labels": source.labels,
            "max_length": source.max_length, "metadata": source.metadata, "inputs": dict(inputs),
            "verified": {name: e.ok for name, e in exported.items()},
            "metrics": {"before": record.get("before_headline"), "after": record.get("after_headline"),
                        "validation_accuracy": record.get("validation_accuracy"),
                        "quantized_agreement": record.get("agreement")},
            "recipe": source.recipe,
            "source": {"stage": str(source.stage_dir), "runtime": source.runtime,
                       "artifact": record.get("artifact"), "quantization": record.get("quantization")}}


# --- the bundle's README --------------------------------------------------------------------


def tokenization_note(tokenizer: Any, max_length: int) -> str:
    """How the app tokenizes, in the words of the model's own tokenizer (WordPiece or Unigram)."""
    kind = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"] if tokenizer is not None else "WordPiece"
    pad = getattr(tokenizer, "pad_token_id", 0) or 0
    tail = (f"truncated to {max_length} tokens; `attention_mask` is 1 for real tokens and 0 for padding "
            f"(id {pad}). Segment ids (`token_type_ids`) are all 0. `coreml/` adds `tokenizer_config.json` "
            f"(swift-transformers loads the folder) and `tokenizer_vectors.json` (texts and their ids, for the "
            f"app's tests: examples/ios/TokenizerCheck).")
    if kind == "Unigram":
        return ("Every folder ships `tokenizer.json`: a SentencePiece Unigram vocabulary (XLM-R style: its "
                "normalizer, `▁` for spaces), cut to the pieces the task uses; tokenize with it exactly as "
                f"training did (Hugging Face tokenizers, swift-transformers), `<s> text </s>`, {tail}")
    return ("Every folder ships `vocab.txt` and `tokenizer.json`: tokenize with them exactly as training did "
            f"(BERT WordPiece, lower-cased, one token per Chinese character), `[CLS] text [SEP]`, {tail}")


def bundle_readme(source: ExportSource, exported: Mapping[str, Exported], failed: Mapping[str, Failure]) -> str:
    """The app developer's page: what each folder holds, the interface, tokenization, the checks."""
    lines = [f"# {source.metadata.get('description') or 'Text classifier'}", "",
             f"Labels ({len(source.labels)}): {', '.join(source.labels)}. Inputs up to {source.max_length} tokens.",
             ""]
    measured = measured_line(source)
    lines += [measured, ""] if measured else []
    lines += ["## Tokenization", "", tokenization_note(source.tokenizer, source.max_length), ""]
    for name, result in exported.items():
        lines += [f"## {name}/", ""]
        lines += [f"- `{n}`: {size / 1e6:.2f} MB" for n, size in result.sizes.items()]
        for kind in ("inputs", "outputs", "training_inputs"):
            for model, spec in _specs(result.spec):
                if spec.get(kind):
                    described = ", ".join(f"`{f['name']}` {f.get('dtype', f.get('type', ''))} {_shape(f)}".strip()
                                          for f in spec[kind])
                    lines.append(f"- {model}{kind.replace('_', ' ')}: {described}")
        lines += [f"- note: {n}" for n in result.notes] + [""]
        lines += ["| check | covers | result | ok |", "| --- | --- | --- | --- |"]
        lines += [f"| {_cell(c.name)} | {c.covers} | {_cell(c.value)} | {_mark(c.ok)} |" for c in result.checks] + [""]
    for failure in failed.values():
        lines += [f"## {failure.format}: not exported", "", failure.message, ""]
    if source.test is not None:  # write_baseline wrote baseline.json
        lines += ["## Monitoring", "", "`baseline.json` is what `alambic monitor BUNDLE LOGS...` compares the app's "
                  "prediction logs with: log one JSON object a line with `timestamp` (ISO 8601), `label` (its name), "
                  "`confidence` (or `probs`, in label order) and, optionally, `text`.", ""]
    if "coreml" in exported:
        lines += ["See `examples/ios/README.md` in alambic for Swift: tokenization, prediction and an "
                  "`MLUpdateTask` on `UpdatableClassifier.mlmodel`.", ""]
    return "\n".join(lines)


def measured_line(source: ExportSource) -> str:
    """What the shipped artifact scored, each figure named by its split, and its latency where it
    was timed (the search's timing pass, in the results row; else the compress stage's own)."""
    after, row = source.record.get("after_headline") or {}, source.recipe
    validation = source.record.get("validation") or {}
    parts = [f"validation accuracy {validation['accuracy']:.4f}"] if validation.get("accuracy") is not None else []
    parts += [f"test accuracy {after['accuracy']:.4f}"] if after.get("accuracy") is not None else []
    parts += [f"{after['size_mb']:.2f} MB"] if after.get("size_mb") is not None else []
    timed = row if row.get("latency_p50_ms") is not None else after
    if timed.get("latency_p50_ms") is not None:
        threads = timed.get("latency_threads") or timed.get("threads")
        text = f"p50 latency {timed['latency_p50_ms']:.2f} ms" + (f" at {int(threads)} thread(s)" if threads else "")
        parts.append(text + (f" on {row['latency_machine']}" if timed is row and row.get("latency_machine") else ""))
    return f"Measured in {source.runtime}: {', '.join(parts)}." if parts else ""


def _specs(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, spec) pairs: a format's spec, or one per model file (Core ML's two products)."""
    if any(k in spec for k in ("inputs", "outputs")):
        return [("", spec)]
    return [(f"{name} ", s) for name, s in spec.items() if isinstance(s, Mapping)]


def _shape(feature: Mapping[str, Any]) -> str:
    """(batch, sequence) or, for Core ML's flexible shapes, (1, 1..64)."""
    dims = feature.get("shape")
    if not dims:
        return ""
    text = [f"{d[0]}..{d[1]}" if isinstance(d, list) and d[0] != d[1] else str(d[0] if isinstance(d, list) else d)
            for d in dims]
    return f"({', '.join(text)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _mark(ok: bool | None) -> str:
    return {True: "ok", False: "FAILED", None: ""}[ok]


def format_verification(result: ExportResult) -> Table:
    """A rich table of every check of every format, then the formats that failed."""
    table = Table("format", "check", "covers", "result", "", title=f"export verification: {result.path}")
    for name, exported in result.exported.items():
        for check in exported.checks:
            mark = {True: "[green]ok[/green]", False: "[red]FAILED[/red]", None: ""}[check.ok]
            table.add_row(name, escape(check.name), check.covers, escape(check.value), mark)
        for file, size in exported.sizes.items():
            table.add_row(name, escape(f"size {file}"), STRUCTURE, f"{size / 1e6:.2f} MB", "")
    for failure in result.failed.values():
        table.add_row(failure.format, "[red]not exported[/red]", "", escape(failure.message), "[red]FAILED[/red]")
    golden = result.verification.get("golden")
    if golden:
        gate = golden["gate"]
        mark = "[green]ok[/green]" if gate["passed"] else "[red]FAILED (forced)[/red]" if gate["forced"] else ""
        table.add_row("golden", "the gate: " + escape(", ".join(gate["limits"]) or "no limit set"),
                      f"{golden['scored_in']}, data.golden", escape(golden_line(golden)), mark)
    return table


def golden_line(golden: Mapping[str, Any]) -> str:
    """"accuracy 0.950 on 40 rows (teacher 0.975)", then what the gate missed."""
    teacher = golden.get("teacher")
    text = f"accuracy {golden['accuracy']:.3f} on {golden['rows']} rows"
    text += f" (teacher {teacher['accuracy']:.3f})" if teacher else " (the teacher not trained: no figure)"
    return "; ".join([text, *golden["gate"]["misses"]])


# --- which stage ----------------------------------------------------------------------------


def resolve_stage(store: Store, *, candidate: str | None = None, stage: str | Path | None = None
                  ) -> tuple[Path, dict[str, Any] | None]:
    """The compress stage to export and the candidate's results row (None for ``--stage``).

    ``stage``: that folder (relative paths are tried against the run directory too);
    ``candidate``: its row of ``results.parquet``; neither: the one ``selected.json`` names.
    """
    if candidate is not None and stage is not None:
        raise AlambicError("give --candidate or --stage, not both")
    if stage is not None:
        path = Path(stage).expanduser()
        if not path.exists() and not path.is_absolute() and store.exists(path.as_posix()):
            path = store.local_path(path.as_posix())
        if not path.is_dir():
            raise AlambicError(f"--stage: folder not found: {stage}")
        return path, None
    selected = None
    if candidate is None:
        if not store.exists("selected.json"):
            raise AlambicError(f"run directory {store.uri} has no selected candidate (selected.json): run "
                               f"`alambic search RUN` then `alambic select RUN`, or pass --candidate ID or --stage DIR")
        selected = store.read_json("selected.json")
        candidate = str(selected.get("candidate_id"))
    row = _results_row(store, candidate)
    if not row.get("stage"):
        raise AlambicError(f"candidate {candidate} has status {row.get('status')!r} and no compress stage to export")
    if selected is not None:  # why it was chosen belongs to how it was made
        row["selected"] = {k: selected.get(k) for k in ("policy", "summary", "selected_at")}
    return store.record_path(row["stage"], source=f"{store.uri}/results.parquet (candidate {candidate})",
                             key="stage"), row


def _results_row(store: Store, candidate: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    if not store.exists("results.parquet"):
        raise AlambicError(f"run directory {store.uri} has no search results yet (results.parquet): run "
                           f"`alambic search RUN` (then `alambic select RUN`), or pass --stage DIR")
    rows = pq.read_table(io.BytesIO(store.read_bytes("results.parquet"))).to_pylist()
    found = [r for r in rows if str(r.get("candidate_id")) == str(candidate)]
    if not found:
        ids = [str(r.get("candidate_id")) for r in rows]
        raise AlambicError(f"no candidate '{candidate}' in results.parquet{did_you_mean(candidate, ids)} "
                           f"({len(ids)} candidates)")
    return found[0]


__all__ = ["DEFAULT_FORMATS", "ExportResult", "export_stage", "format_verification", "resolve_stage"]
