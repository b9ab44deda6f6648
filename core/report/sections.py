"""The report's sections, in order (:data:`SECTIONS`): each turns the gathered run into a Section, or
says in one line which input it lacks; and a candidate's speed-up against the teacher (:func:`speed_up`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.data.dataset import describe_data
from alambic.errors import AlambicError
from alambic.machine import label, summary
from alambic.report import html_page as draw
from alambic.report.document import Image, Items, Section, Table
from alambic.report.gather import candidate_scores, candidate_threads, compress_stage, ok_rows
from alambic.report.teacher import METRICS_FILE, p50_ms
from alambic.search.algorithms import proxied
from alambic.search.plot import plot_front
from alambic.search.select import SELECTED
from alambic.ship.export import EXPORT_DIR, VERIFICATION_FILE

if TYPE_CHECKING:
    from alambic.report.gather import GatheredRun
    from alambic.report.teacher import Teacher

RUNTIME_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}
SPLITS = ("validation", "test")


def _absent(id: str, title: str, why: str) -> Section:
    return Section(id, title, [why], missing=why)


def _num(value: Any, spec: str = ",.2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{int(value) if spec[-1:] == 'd' else value:{spec}}{suffix}"  # a count a pandas column made float


def _data_section(run: GatheredRun) -> Section:
    if run.ctx is None:
        return _absent("data", "Data", "No run config given (RUN is a run directory): the data summary needs it.")
    data, config = run.ctx.prepared, run.ctx.config
    splits = dict(data.tokenized) | ({"golden": run.golden} if run.golden is not None else {})
    summary = describe_data(splits, data.report, max_length=config.tokenizer.max_length)
    stats = ("p50", "p90", "p99", "max")
    sizes = [[name, f"{s['rows']:,}", *(str(s.get("tokens", {}).get(k, "-")) for k in stats),
              _num(s.get("tokens", {}).get("over_max_length"), ".2%")] for name, s in summary["splits"].items()]
    labels = [[str(i), name, *(f"{s['labels'][name]:,}" for s in summary["splits"].values())]
              for i, name in enumerate(summary["label_names"])]
    blocks: list[Any] = [
        f"Source `{config.data.source}`, {len(labels)} labels; tokens counted with [CLS] and [SEP] (max_length "
        f"{config.tokenizer.max_length}); data fingerprint `{summary['fingerprint'][:12]}`.",
        Table(["split", "rows", *(f"tokens {s}" for s in stats), "> max_length"], sizes),
        Table(["id", "label", *summary["splits"]], labels)]
    return Section("data", "Data", blocks + ([Items(summary["warnings"])] if summary["warnings"] else []))


def _teacher_section(run: GatheredRun) -> Section:
    if run.teacher is None:
        why = ("No trained teacher in the store yet: run `alambic teacher RUN`." if run.ctx else
               "No run config given: the teacher is found by its config.")
        return _absent("teacher", "Teacher", why)
    t = run.teacher
    scores = {split: t.metrics[split] for split in SPLITS if split in t.metrics}
    scores |= {"golden": run.golden_scores["teacher"]} if run.golden_scores.get("teacher") else {}
    rows = [[split, _num(s.get("accuracy"), ".4f"), _num(s.get("macro_f1"), ".4f"), _num(s.get("examples"), ",")]
            for split, s in scores.items()]
    blocks: list[Any] = [
        Table(["split", "accuracy", "macro-F1", "examples"], rows),
        (f"{t.metrics.get('params', 0):,} parameters, trained in {t.metrics.get('wall_time_s', '?')} s; stage "
         f"`{t.key[:12]}`. Timed here, fp32, batch 1, as the candidates are:"),
        Table(["runtime", "threads", "size MB", "p50 ms", "p90 ms", "tokens", ""], _timed_rows(t))]
    return Section("teacher", "Teacher", blocks + [f"Not timed in {_runtime_label(rt)}: {why}"
                                                   for rt, why in t.untimed.items()])


def _timed_rows(t: Teacher) -> list[list[str]]:
    rows = []
    for n in sorted({n for _, n in t.timed}):
        for i, (rt, m) in enumerate(t.at(n).items()):  # fastest first: the baseline
            h = m.headline()
            rows.append([_runtime_label(rt), str(n), _num(h["size_mb"]), _num(h["latency_p50_ms"]),
                         _num(h["latency_p90_ms"]), str(h["latency_length"]),
                         "the fastest: every speed-up's baseline" if i == 0 else ""])
    return rows


# --- speed-up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedUp:
    """A candidate's p50 against the teacher's, split exactly: ``total = runtime × compression``."""

    baseline: str  # the teacher's fastest runtime here: what the total is against
    runtime: str  # the candidate's runtime: the teacher timed in it (fp32) is where the split falls
    runtime_share: float  # teacher in ``baseline`` ÷ teacher in ``runtime``
    compression_share: float  # teacher in ``runtime`` ÷ the candidate, in that runtime

    @property
    def total(self) -> float:
        return self.runtime_share * self.compression_share


def speed_up(teacher_p50: dict[str, float], runtime: str, p50: float | None) -> SpeedUp | None:
    """The speed-up of a candidate timed at ``p50`` ms in ``runtime``, against the teacher's p50 by
    runtime (same threads and lengths); None when either side was not timed."""
    timed = {rt: ms for rt, ms in teacher_p50.items() if ms}
    if runtime not in timed or not p50 or (isinstance(p50, float) and math.isnan(p50)):
        return None
    baseline = min(timed, key=timed.__getitem__)
    return SpeedUp(baseline, runtime, timed[baseline] / timed[runtime], timed[runtime] / p50)


def _speed_up(run: GatheredRun, r: dict[str, Any]) -> SpeedUp | None:
    if run.teacher is None:
        return None
    timed = run.teacher.at(int(r.get("latency_threads") or 0))
    return speed_up({rt: p50_ms(m) for rt, m in timed.items()}, str(r.get("runtime")), r.get("latency_p50_ms"))


def _runtime_label(runtime: str, quantization: Any = None) -> str:
    """``ONNX Runtime dynamic-int8``, ``PyTorch fp32``: the runtime and what the weights are."""
    precision = quantization if quantization and quantization != "none" else "fp32"
    return f"{RUNTIME_NAMES.get(runtime, runtime)} {precision}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}×"


# --- candidates -----------------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> str:
    return _num(a / b, ".2f", "×") if a and b else "-"


def _teacher_rows(run: GatheredRun) -> list[dict[str, Any]]:
    """The teacher as rows of the candidates table: one per runtime timed, the fastest first."""
    t = run.teacher
    if t is None:
        return []
    threads = int(run.selected_row.get("latency_threads") or candidate_threads(run)[0])
    accuracy = {f"{p}_{k}": t.metrics.get(split, {}).get(k) for p, split in (("val", "validation"), ("test", "test"))
                for k in ("accuracy", "macro_f1")}
    return [m.headline() | accuracy | {"candidate_id": "teacher", "runtime": rt, "quantization": "none",
                                       "latency_threads": threads, "peak_mem_mb": None}
            for rt, m in t.at(threads).items()]


def _candidates_section(run: GatheredRun) -> Section:
    if run.results is None:
        return _absent("candidates", "Candidates", "No search results yet (results.parquet): run `alambic search RUN`.")
    golden, chosen = bool(run.golden_scores), (run.selected or {}).get("candidate_id")
    teacher = _teacher_rows(run)
    size = teacher[0]["size_mb"] if teacher else None  # the baseline: the teacher in its fastest runtime

    def line(mark: str, r: dict[str, Any]) -> list[str]:
        score, s = run.golden_scores.get(r["candidate_id"]) or {}, _speed_up(run, r)
        return [mark, r["candidate_id"], *(str(r.get(k) or "") for k in ("student", "pruning", "quantization",
                "runtime")), *(_num(r.get(k), ".4f") for k in ("val_accuracy", "val_macro_f1", "test_accuracy",
                                                               "test_macro_f1")),
                *([_num(score.get("accuracy"), ".4f")] if golden else []), _num(r.get("params"), ","),
                *(_num(r.get(k)) for k in ("size_mb", "latency_p50_ms", "latency_p90_ms")),
                _num(r.get("peak_mem_mb"), ",.1f"), *(_times(getattr(s, k, None)) for k in
                                                      ("total", "runtime_share", "compression_share")),
                _ratio(size, r.get("size_mb"))]

    rows = [line("teacher, baseline" if i == 0 else "teacher", r) for i, r in enumerate(teacher)]
    ok = sorted(ok_rows(run.results), key=lambda r: (not r["on_front"], -(r["val_accuracy"] or 0), r["size_mb"] or 0))
    for r in ok:
        marks = (("selected", r["candidate_id"] == chosen), ("knee", r.get("knee")), ("front", r["on_front"]))
        rows.append(line(", ".join(m for m, on in marks if on), r))
    headers = ["", "candidate", "student", "pruning", "quant", "runtime", "val accuracy", "val macro-F1",
               "test accuracy", "test macro-F1", *(["golden accuracy"] if golden else []), "params", "size MB",
               "p50 ms", "p90 ms", "peak MB", "speed-up", "= runtime", "× compression", "smaller"]
    blocks: list[Any] = [Table(headers, rows, _candidates_caption(run, len(ok)),
                               tuple(i for i, r in enumerate(rows) if r[1] == chosen))]
    failed = [r for _, r in run.results[run.results["status"] != "ok"].iterrows()]
    if failed:
        blocks += [f"{len(failed)} failed candidate(s):", Items([
            f"`{r['candidate_id']}` {r.get('student')} / {r.get('pruning')} / {r.get('quantization')}: {r.get('error')}"
            for r in failed])]
    return Section("candidates", "Candidates", blocks)


def _candidates_caption(run: GatheredRun, ok: int) -> str:
    machines = sorted({str(r.get("latency_machine")) for r in ok_rows(run.results) if r.get("latency_machine")})
    text = (f"{ok} measured candidates, {int(run.results['on_front'].sum())} on the Pareto front. Validation "
            "accuracy: what every choice is made on; test accuracy: measured once, reported only. Latency: batch 1 "
            "on the CPU at the reference length, timed after the search one candidate at a time"
            + (f" on {'; '.join(machines)}" if machines else "") + "; peak MB: a fresh process running the "
            "artifact once. ")
    if run.teacher is None:
        return text + "No teacher timed here: no speed-up, no size ratio."
    return text + ("Speed-up = the teacher's p50 in its fastest runtime here (the baseline row, fp32, same threads "
                   "and lengths) ÷ the candidate's = runtime × compression: runtime = the teacher in that runtime ÷ "
                   "the teacher in the candidate's runtime (fp32 both); compression = the teacher in the candidate's "
                   "runtime ÷ the candidate. Smaller = the baseline's size ÷ the candidate's.")


def _front_section(run: GatheredRun) -> Section:
    if run.results is None or not (run.results["status"] == "ok").any():
        return _absent("front", "Pareto front", "No measured candidate yet: nothing to plot.")
    with tempfile.TemporaryDirectory(prefix="alambic-report-") as tmp:
        png = plot_front(run.results, Path(tmp) / "front.png").read_bytes()
    knee = ", ".join(run.results[run.results["knee"]]["candidate_id"]) or "-"
    return Section("front", "Pareto front", [
        (f"Validation accuracy (what the front and the selection use) against size, coloured by latency p50; test "
         f"accuracy drawn beside, reported only; the front joined; its knee: `{knee}`. Latency and memory were "
         f"timed after the search, one candidate at a time.{_proxy_note(run)}"),
        Image("front.png", png, "Pareto front: validation accuracy against size")])


def _proxy_note(run: GatheredRun) -> str:
    """What Tune optimized in place of the objectives a trial cannot time (nsga2, tpe)."""
    search = run.ctx.config.search if run.ctx is not None else None
    if search is None or search.algorithm not in ("nsga2", "tpe"):
        return ""
    return "".join(f" During the {search.algorithm} search, Tune optimized {proxy} in place of {metric} (a trial "
                   f"times nothing)." for metric, proxy in proxied(search.objectives).items())


def _selected_section(run: GatheredRun) -> Section:
    sel, row = run.selected, run.selected_row
    if sel is None:
        return _absent("selected", "Selected model", "No selection yet (selected.json): run `alambic select RUN`.")
    facts = [("candidate", f"`{sel['candidate_id']}`"), ("policy", sel.get("summary", "")),
             *((k, row.get(k)) for k in ("student", "pruning", "quantization", "runtime")),
             ("validation accuracy (chosen on)", _accuracy(row, "val")),
             ("test accuracy (reported only)", _accuracy(row, "test")),
             ("size", _num(row.get("size_mb"), ",.2f", " MB")),
             ("latency p50 / p90", (f"{_num(row.get('latency_p50_ms'))} / {_num(row.get('latency_p90_ms'))} ms at "
                                    f"{_num(row.get('latency_threads'), 'd')} thread(s)")),
             ("artifact", f"`{row.get('artifact')}`"), ("selected at", sel.get("selected_at", ""))]
    blocks: list[Any] = [Table(["", ""], [[k, str(v)] for k, v in facts]),
                         f"{sel.get('qualifying', '?')} of {sel.get('considered', '?')} measured candidates qualify "
                         f"({sel.get('failed', 0)} failed). Why this one:", Items(list(sel.get("reasons", [])))]
    return Section("selected", "Selected model", blocks + (["Notes:", Items(sel["notes"])] if sel.get("notes") else []))


def _accuracy(row: dict[str, Any], split: str) -> str:
    examples = row.get(f"{split}_examples")  # a float once a pandas column held a null
    return _num(row.get(f"{split}_accuracy"), ".4f") + (f" on {int(examples):,} rows" if examples else "")


def _against_section(run: GatheredRun) -> Section:
    title = "Selected model against its teacher and student"
    row = run.selected_row
    if not row:
        return _absent("against", title, "No selection yet (selected.json): run `alambic select RUN`.")
    blocks = _speed_up_blocks(run, row) if run.teacher else [
        ("No teacher here (it needs the run config and a trained teacher): no speed-up, and accuracy against the "
         "distilled student only.")]
    return Section("against", title, [*blocks, _drops(run, row)])


def _speed_up_blocks(run: GatheredRun, row: dict[str, Any]) -> list[Any]:
    t, threads, s = run.teacher, int(row.get("latency_threads") or 0), _speed_up(run, row)
    timed = t.at(threads)
    if s is None:
        why = t.untimed.get(str(row.get("runtime")), "no latency measured on one side")
        return [(f"No speed-up: the candidate and the teacher are not both timed in "
                 f"{_runtime_label(row.get('runtime'))} at {threads} thread(s) ({why}).")]
    candidate = f"`{row['candidate_id']}` ({row.get('student')}; {row.get('pruning')})"
    teacher = f"teacher `{t.key[:12]}`"
    roles = {s.baseline: "the baseline: its fastest runtime here", s.runtime: "in the candidate's runtime"}
    if s.baseline == s.runtime:
        roles[s.runtime] = "the baseline (its fastest runtime here), in the candidate's runtime"
    sides = [["candidate (shipped)", candidate, _runtime_label(s.runtime, row.get("quantization")), str(threads),
              _num(row.get("latency_p50_ms"))]]
    sides += [[f"teacher: {roles.get(rt, 'a reference only, not the baseline')}", teacher, _runtime_label(rt),
               str(threads), _num(p50_ms(m))] for rt, m in timed.items()]
    length = next(iter(timed.values())).headline()["latency_length"]
    where = f"the candidate on {row.get('latency_machine') or 'the machine the search timed it on'}"
    text = (f"Speed-up {s.total:,.2f}× against the {teacher} in {_runtime_label(s.baseline)} (its fastest here) = "
            f"runtime {s.runtime_share:,.2f}× (the teacher: {_runtime_label(s.baseline)} → "
            f"{_runtime_label(s.runtime)}) × compression {s.compression_share:,.2f}× (the teacher → {candidate}, both "
            f"in {RUNTIME_NAMES.get(s.runtime, s.runtime)}); {threads} thread(s), {length} tokens, batch 1.")
    blocks: list[Any] = [text, Table(["side", "model", "runtime", "threads", f"p50 ms ({length} tokens)"], sides,
                                     f"The teacher timed here ({label()}); {where}.")]
    distilled = _distilled_from(run, row)
    if distilled and distilled != t.key:
        blocks.append(f"Note: this candidate was distilled from teacher `{distilled[:12]}`, not the run's current "
                      f"teacher `{t.key[:12]}`: the comparisons with the teacher are against the current one.")
    return blocks


def _distilled_from(run: GatheredRun, row: dict[str, Any]) -> str | None:
    """The teacher key the candidate's distilled student records (its distill stage's metrics.json)."""
    if not row.get("distill_key"):
        return None
    try:
        path = run.store.local_path(run.store.stage_path(str(row["distill_key"])))
        return json.loads((path / METRICS_FILE).read_text(encoding="utf-8")).get("teacher")
    except (AlambicError, OSError, ValueError):
        return None


def _drops(run: GatheredRun, row: dict[str, Any]) -> Table:
    """Accuracy points the shipped model lost against the distilled student and the teacher, per split."""
    shipped = {split: row.get(f"{p}_accuracy") for p, split in (("val", "validation"), ("test", "test"))}
    against = [("distilled student, before pruning and quantization",
                {"validation": row.get("student_val_accuracy"), "test": row.get("student_test_accuracy")})]
    if run.teacher:
        against.append((f"teacher `{run.teacher.key[:12]}`",
                        {split: run.teacher.metrics.get(split, {}).get("accuracy") for split in SPLITS}))
    rows = [[who, split, _num(ref[split], ".4f"), _num(shipped[split], ".4f"),
             _num(100 * (ref[split] - shipped[split]), "+.2f") if None not in (ref[split], shipped[split]) else "-"]
            for who, ref in against for split in SPLITS]
    return Table(["against", "split", "its accuracy", "shipped accuracy", "drop (points)"], rows,
                 "Drop = 100 × (its accuracy − the shipped model's), on the same split; negative: the shipped model "
                 "is the more accurate. The shipped model: its row's val_accuracy and test_accuracy.")


def _guard_section(run: GatheredRun) -> Section:
    if not run.selected_row:
        return _absent("guard", "Guard decisions", "No selection yet: the decisions are the selected candidate's.")
    _, record = compress_stage(run, run.selected_row, SELECTED)
    guard, decisions = record.get("guard", {}), record.get("decisions", [])
    blocks: list[Any] = [f"Each step is evaluated on the validation split: one costing more than "
                         f"{guard.get('max_drop', '?')} points is retried at half strength "
                         f"({guard.get('retries', '?')} times), then reverted."]
    headers = ["step", "attempt", "strength", "validation before", "after", "drop (points)", "outcome", "note"]
    rows = [[d["step"], str(d["attempt"]), _num(d.get("strength"), "g"), _num(d["accuracy_before"], ".4f"),
             _num(d["accuracy_after"], ".4f"), _num(d["drop_points"], "+.2f"), d["outcome"], d.get("note", "")]
            for d in decisions]
    blocks.append(Table(headers, rows) if rows else "No compression step: nothing to guard.")
    if record.get("agreement"):
        a = record["agreement"]
        blocks.append(f"The quantized graph against its fp32 ONNX source on {a['examples']:,} test rows: argmax "
                      f"agreement {a['argmax_agreement']:.2%} ({'ok' if a['ok'] else 'below'} {a['threshold']:.0%}), "
                      f"max |logit diff| {a['max_abs_diff']:.4f}.")
    return Section("guard", "Guard decisions", blocks)


def _quality_section(run: GatheredRun) -> Section:
    row, title = run.selected_row, "Selected model on the test split"
    if run.ctx is None or not row:
        return _absent("quality", title, "Needs the run config and a selection (`alambic select RUN`).")

    data, teacher = run.ctx.prepared, run.teacher.metrics["test"] if run.teacher else None
    found = candidate_scores(run, row, data.raw["test"], f"{data.report.fingerprint}/test", SELECTED)
    names = data.label_names
    per_class = [[str(i), n, f"{c['support']:,}", *(f"{c[k]:.4f}" for k in ("precision", "recall", "f1")),
                  _num(teacher["per_class"][n]["f1"], ".4f") if teacher else "-"]
                 for i, (n, c) in enumerate(found["per_class"].items())]
    shares = {"true labels": draw.shares(found["confusion"], axis=1)}
    shares |= {"teacher": draw.shares(teacher["confusion"], axis=0)} if teacher else {}
    shares["selected"] = draw.shares(found["confusion"], axis=0)
    blocks: list[Any] = [
        f"The shipped artifact ({row.get('runtime')}) on {found['examples']:,} test rows: accuracy "
        f"{found['accuracy']:.4f}, macro-F1 {found['macro_f1']:.4f}."
        + ("" if draw.draws_names(names) else " The pictures name labels by id (no CJK font installed here)."),
        Table(["id", "label", "support", "precision", "recall", "F1", "teacher F1"], per_class),
        Image("confusion.png", draw.confusion_png(found["confusion"], names), "confusion matrix"),
        Table(["label", *(f"{k} %" for k in shares)], [[n, *(f"{100 * v[i]:.1f}" for v in shares.values())]
                                                      for i, n in enumerate(names)],
              "Share of the test rows per label: the true labels, then the predictions.")]
    if teacher:
        tvd = 0.5 * sum(abs(a - b) for a, b in zip(shares["selected"], shares["teacher"], strict=True))
        blocks.append(f"Prediction distribution against the teacher's: total variation distance {100 * tvd:.2f} "
                      "points.")
    blocks.append(Image("predictions.png", draw.distribution_png(shares, names), "prediction distribution"))
    return Section("quality", title, blocks)


def _export_section(run: GatheredRun) -> Section:
    if not run.store.exists(f"{EXPORT_DIR}/{VERIFICATION_FILE}"):
        return _absent("export", "Export", "No export yet (export/verification.json): run `alambic export RUN`.")
    found = run.store.read_json(f"{EXPORT_DIR}/{VERIFICATION_FILE}")
    formats = found.get("formats", {})
    rows = [[name, c["name"], c.get("covers", ""), c["value"], {True: "ok", False: "FAILED", None: ""}[c["ok"]]]
            for name, f in formats.items() for c in f.get("checks", [])]
    rows += [[name, f"size {file}", "structure", f"{size / 1e6:,.2f} MB", ""] for name, f in formats.items()
             for file, size in f.get("sizes", {}).items()]
    blocks: list[Any] = [f"Formats {', '.join(formats) or 'none'}, verified on {found.get('test_rows', 0):,} test rows "
                         f"against the source (its test accuracy {_num(found.get('source_test_accuracy'), '.4f')}). "
                         "Covers: *runtime*, the shipped file run by its own runtime; *source graph*, the PyTorch "
                         "graph given to the converter, not the converted file; *structure*, the file read back "
                         "without predicting; *needs a Mac*, not run here.",
                         Table(["format", "check", "covers", "result", ""], rows)]
    if found.get("failed"):
        blocks.append(Items([f["message"] for f in found["failed"].values()]))
    manifest = run.store.load_manifest(EXPORT_DIR)
    if manifest is not None:
        blocks.append(f"Bundle `{EXPORT_DIR}/`: {len(manifest.files)} files, "
                      f"{sum(f.size for f in manifest.files) / 1e6:,.2f} MB, written {manifest.created_at}.")
    shipped, chosen = Path(str(found.get("stage", ""))).name, Path(str(run.selected_row.get("stage", ""))).name
    if chosen and shipped != chosen:  # selected again since the export
        blocks.append(f"Note: the bundle is of stage `{shipped[:12]}`, not the selected candidate's `{chosen[:12]}`: "
                      "run `alambic export RUN` again.")
    return Section("export", "Export", blocks)


def _machine_section(run: GatheredRun) -> Section:
    seen: Counter[tuple[str, ...]] = Counter()
    for row in ok_rows(run.results):  # timed after the search, on the node that ran it
        runtime = RUNTIME_NAMES.get(str(row.get("runtime")), str(row.get("runtime")))
        seen[str(row.get("latency_machine") or "-"), runtime, _num(row.get("latency_threads"), "d")] += 1
    rows = [[f"{n} candidate(s)", *key] for key, n in seen.items()]
    if run.teacher:  # a teacher-measure stage is keyed by the machine: it was timed here
        rows += [["the teacher", label(), RUNTIME_NAMES[rt], str(n)] for rt, n in sorted(run.teacher.timed)]
    rows.append(["this report", label(), "", ""])
    caption = (f"This machine: {summary()}. Latency and memory hold for the machine they were timed on (a speed-up "
               "across two machines compares the machines too); a phone differs (phone_latency_factor).")
    return Section("machine", "Machine", [Table(["timed", "machine", "runtime", "threads"], rows, caption)])


SECTIONS = (_data_section, _teacher_section, _candidates_section, _front_section, _selected_section,
            _against_section, _guard_section, _quality_section, _export_section, _machine_section)


__all__ = ["SECTIONS", "SpeedUp", "speed_up"]
