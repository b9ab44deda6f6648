"""tune: Intel Neural Compressor's accuracy-driven post-training quantization against alambic's guard,
on the same student, both allowed 1 point of validation accuracy.

alambic exports the student to the plain fp32 ONNX graph its own quantizers start from; Neural
Compressor (side/inc_tune.py, its own venv) tunes it with ``quantization.fit``: approach "auto"
(static first, then the ops that allow it fall back to dynamic, then ops to fp32, until the criterion
holds), calibrated on train rows, judged on validation, as the guard is. alambic's side is its shipped
``dynamic-int8`` graph, judged by the guard (``max_drop``). Both graphs are measured here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peer_bench.common import Setup, save
from peer_bench.shipped import (
    ROUNDS,
    graph_row,
    latency_cells,
    mean_p50,
    pct,
    peer_versions,
    shipped,
    stage_time,
    stage_work,
    student_validation,
    time_in_turns,
)
from peer_bench.venvs import run_side

#: Neural Compressor's settings: its documented approach that tries both static and dynamic, the same
#: 1 point as the guard (absolute, on a 0-1 accuracy), its default trial budget and early stop
#: (timeout 0: stop at the first configuration that meets the criterion), its default 100 calibration
#: rows (calibration_sampling_size), one row a batch so that no [PAD] enters a calibrated range
INC = {"approach": "auto", "tolerable_loss": 0.01, "max_trials": 100, "timeout": 0, "calib_batch_size": 1,
       "seed": 0}
#: each trial calibrates, quantizes and scores the validation split: generous, but it must end
SIDE_TIMEOUT_S = 4 * 3600
#: ONNX Runtime's int8 operators (QOperator format), quantize/dequantize nodes included
INT8_PREFIXES = ("QLinear", "MatMulInteger", "DynamicQuantize", "QuantizeLinear", "DequantizeLinear", "QAttention",
                 "QEmbedLayer", "QGemm")


def run(setup: Setup, args: Any) -> str:
    """Export, tune with Neural Compressor, measure both results, judge the goal on accuracy and size."""
    ship = shipped(setup)
    folder = setup.work / "inc"
    fp32 = _export(setup, folder / "student.fp32.onnx")
    inputs = {"fp32": str(fp32), "train": setup.splits["train"], "validation": setup.splits["validation"],
              "pad_id": setup.pad_id, "out": str(folder / "graphs"), "threads": setup.threads, **INC}
    side = run_side("neural-compressor", "inc_tune.py", inputs, folder, setup.venvs, timeout=SIDE_TIMEOUT_S)
    decision = ship["decision"] or {}
    ours = _row(setup, "alambic guard: dynamic-int8 (shipped)", ship["graph"], True, stage_time(ship),
                f"quant:dynamic-int8 {decision.get('outcome', '?')}", "1 (no half strength)",
                None if ship["graph"] else "the guard reverted the quantization")
    error = side.get("error") or (None if side.get("graph") else
                                  f"no configuration met the criterion in {side.get('trials')} trials")
    theirs = _row(setup, "Neural Compressor fit", side.get("graph"), False, f"{side.get('seconds', '-')} s",
                  _chosen(side), str(side.get("trials", "-")), error)
    start = _row(setup, "fp32 student (the graph both start from)", str(fp32), True, "-", "fp32", "-", None)
    rows = [ours, theirs, start]
    time_in_turns(setup, rows)
    save(rows + [{"side": side, "shipped": ship}], setup.work / "tune.json")
    return "\n".join([_intro(setup, ship, student_validation(setup, ship)), "", *_table(rows, setup.lengths), "",
                      *_verdict(ours, theirs)])


def _export(setup: Setup, path: Path) -> Path:
    """The student as alambic exports it before quantizing (the plain, unfused fp32 graph)."""
    from transformers import AutoModelForSequenceClassification

    from alambic.compress.onnx_export import export_onnx

    model = AutoModelForSequenceClassification.from_pretrained(setup.student.path)
    return export_onnx(model, path)


def _row(setup: Setup, name: str, path: str | None, alambic_session: bool, made: str, what: str, trials: str,
         error: str | None) -> dict[str, Any]:
    return graph_row(setup, path, alambic_session, error, graph=name, made=made, what=what, trials=trials)


def _chosen(side: dict[str, Any]) -> str:
    """What INC settled on: its per-op modes (static, dynamic, fp32 fallback), then the int8 nodes the
    saved graph holds and the fp32 MatMuls left in it."""
    if not side.get("graph"):
        return "-"
    by_mode: dict[str, int] = {}
    for key, count in side.get("modes", {}).items():
        mode = key.split(": ", 1)[1]
        by_mode[mode] = by_mode.get(mode, 0) + count
    ops = side.get("ops", {})
    int8 = [f"{op} {n}" for op, n in sorted(ops.items()) if op.startswith(INT8_PREFIXES)]
    modes = ", ".join(f"{mode} {n} ops" for mode, n in sorted(by_mode.items())) or "?"
    return f"{modes}; int8 nodes: {', '.join(int8) or 'none'}; fp32 MatMul {ops.get('MatMul', 0)}"


def _intro(setup: Setup, ship: dict[str, Any], reference: float) -> str:
    return (
        "### tune: Intel Neural Compressor's accuracy-driven quantization vs alambic's guard\n\n"
        f"The same student ({setup.student.student}, {setup.student.key[:12]}; validation {pct(reference)} %), "
        f"each tool allowed {ship['guard']['max_drop']:g} point of validation accuracy. alambic: `compress(ctx, "
        f"student, [], \"dynamic-int8\")`: fused graph, dynamic int8 incl. embeddings, kept if the validation drop "
        f"is within max_drop, else reverted (a quantizer has no half strength); its time is the compress stage's "
        f"({stage_work(ship)}). "
        f"Neural Compressor ({peer_versions('neural-compressor', setup)}): `quantization.fit` on alambic's plain "
        f"fp32 export, `PostTrainingQuantConfig(approach=\"{INC['approach']}\", accuracy_criterion="
        f"AccuracyCriterion(criterion=\"absolute\", tolerable_loss={INC['tolerable_loss']}), tuning_criterion="
        f"TuningCriterion(max_trials={INC['max_trials']}, timeout={INC['timeout']}))`, calibrated on 100 train rows "
        f"(INC's default sampling size; seeded random order, {INC['calib_batch_size']} row a batch), `eval_func` = "
        f"validation accuracy in ORT with its defaults; its time is `fit`'s wall time (baseline evaluation, "
        f"calibration, every trial). Measured here, {setup.threads} threads, batch 1, the graphs timed in turns "
        f"({ROUNDS} rounds of {max(1, setup.runs // ROUNDS)} runs at each length, after a pause and 5 warm-up; "
        f"the median of the rounds' p50 / p90); accuracy on {len(setup.tokenized['test']):,} test / "
        f"{len(setup.tokenized['validation']):,} "
        f"validation rows; each graph in its tool's load setting (alambic's session; ORT defaults), the last "
        f"latency column the other way.")


def _table(rows: list[dict[str, Any]], lengths: list[int]) -> list[str]:
    head = ["result", "what it chose", "val acc %", "test acc %", "size MB", "weights held MB",
            *(f"p50 / p90 ms @{n}" for n in lengths),
            "mean p50 ms, other load", "tuning time", "trials"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        own = r.get("own")
        if own is None:
            lines.append(f"| {r['graph']} | {r['error']} | " + " | ".join(["-"] * (len(head) - 4))
                         + f" | {r['made']} | {r['trials']} |")
            continue
        cells = [r["graph"], r["what"], pct(own["val_accuracy"]), pct(own["accuracy"]), f"{own['size_mb']:.1f}",
                 f"{own['weights_mb']:.1f}",
                 *latency_cells(own, lengths), f"{mean_p50(r['other']):.2f}", r["made"], r["trials"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Met when the guard's graph is at least as accurate (test and validation) and at most as large."""
    goal = "the guard's result no worse than Neural Compressor's on accuracy and size"
    if "own" not in ours or "own" not in theirs:
        missing = ours if "own" not in ours else theirs
        return [f"**goal** ({goal}): not judged: {missing['graph']}: {missing['error']}"]
    a, b = ours["own"], theirs["own"]
    checks = [("test accuracy", pct(a["accuracy"]), pct(b["accuracy"]), a["accuracy"] >= b["accuracy"]),
              ("validation accuracy", pct(a["val_accuracy"]), pct(b["val_accuracy"]),
               a["val_accuracy"] >= b["val_accuracy"]),
              ("size MB", f"{a['size_mb']:.2f}", f"{b['size_mb']:.2f}", a["size_mb"] <= b["size_mb"])]
    lines = [f"**goal** ({goal}): **{'met' if all(c[3] for c in checks) else 'missed'}**."]
    lines += [f"- {name}: alambic {x} vs Neural Compressor {y}: {'met' if ok else 'missed'}"
              for name, x, y, ok in checks]
    return lines
