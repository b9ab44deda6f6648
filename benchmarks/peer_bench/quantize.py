"""quantize: Hugging Face Optimum's ONNX Runtime tooling against alambic's shipped int8 graph, on the
same student.

Optimum (side/optimum_int8.py, its own venv) exports the student, optimizes the export at each level
(ORTOptimizer, AutoOptimizationConfig O1-O3) and quantizes the export and each optimized graph to
dynamic int8 (ORTQuantizer, AutoQuantizationConfig with this CPU's preset, per tensor and per channel).
Every graph, alambic's included, is measured here by the same code, each in its own tool's runtime
setting (alambic's session; ORT's defaults, as ORTModel loads a graph) and, for transparency, the other.
Optimum's best int8 graph is chosen on validation; test accuracy is reported.
"""

from __future__ import annotations

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

LEVELS = ["O1", "O2", "O3"]
PER_CHANNEL = [False, True]
#: the export and three optimizations take seconds for a 4-layer student; a hung step must still end
SIDE_TIMEOUT_S = 3600
#: an int8 graph keeps the student when its validation accuracy is within this many points of it
KEEP_POINTS = 1.0
#: two graphs are of equal accuracy when their test accuracies are within this many points
EQUAL_POINTS = 0.3
GOAL_SPEEDUP = 1.5
#: ONNX Runtime's int8 operators, as dynamic quantization writes them
INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization", "QGemm",
            "DynamicQuantizeLinear")


def run(setup: Setup, args: Any) -> str:
    """Measure every graph, pick Optimum's best int8 graph on validation, judge the goal per length."""
    ship = shipped(setup)
    side = run_side("optimum", "optimum_int8.py",
                    {"student": str(setup.student.path), "out": str(setup.work / "optimum" / "graphs"),
                     "levels": LEVELS, "per_channel": PER_CHANNEL},
                    setup.work / "optimum", setup.venvs, timeout=SIDE_TIMEOUT_S)
    rows = [_row(setup, "alambic dynamic-int8 (shipped)", "alambic", "int8", ship["graph"], True,
                 stage_time(ship), None if ship["graph"] else "the guard reverted the quantization")]
    if "error" in side:
        rows.append({"graph": "Optimum (all graphs)", "tool": "Optimum", "error": side["error"]})
    for graph in side.get("graphs", []):
        rows.append(_row(setup, f"Optimum {graph['name']}", "Optimum", graph["precision"], graph["path"], False,
                         f"{graph['seconds']} s", None) | {"per_channel": graph["per_channel"]})
    rows += [{"graph": f"Optimum {s['name']}", "tool": "Optimum", "error": s["why"]} for s in side.get("skipped", [])]
    time_in_turns(setup, rows)
    reference = student_validation(setup, ship)
    best = _best(rows, reference)
    save(rows + [{"side": {k: v for k, v in side.items() if k != "graphs"}, "student_validation": reference,
                  "best": best and best["graph"]}], setup.work / "quantize.json")
    return "\n".join([_intro(setup, ship, side, reference), "", *_table(rows, setup.lengths), "",
                      *_verdict(rows[0], best, setup.lengths, reference)])


def _row(setup: Setup, name: str, tool: str, precision: str, path: str | None, alambic_session: bool, made: str,
         error: str | None) -> dict[str, Any]:
    return graph_row(setup, path, alambic_session, error, graph=name, tool=tool, precision=precision, made=made)


def _best(rows: list[dict[str, Any]], reference: float) -> dict[str, Any] | None:
    """Optimum's fastest int8 graph (mean p50 over lengths, ORT defaults) among those whose validation
    accuracy is within ``KEEP_POINTS`` of the student's."""
    kept = [r for r in rows if r["tool"] == "Optimum" and r.get("precision") == "int8" and "own" in r
            and 100 * (reference - r["own"]["val_accuracy"]) <= KEEP_POINTS]
    return min(kept, key=lambda r: mean_p50(r["own"]), default=None)


def _intro(setup: Setup, ship: dict[str, Any], side: dict[str, Any], reference: float) -> str:
    fused = ship["quantization"].get("fused_ops", {})
    return (
        "### quantize: Hugging Face Optimum vs alambic's shipped int8 graph\n\n"
        f"The same student ({setup.student.student}, {setup.student.key[:12]}; validation {pct(reference)} %). "
        f"alambic: `compress(ctx, student, [], \"dynamic-int8\")` under the guard (max_drop "
        f"{ship['guard']['max_drop']} point on validation): ORT's transformer optimizer fuses the export "
        f"({', '.join(f'{k} {v}' for k, v in fused.items()) or 'nothing fused'}"
        f"{'' if 'SkipLayerNormalization' in fused else '; SkipLayerNormalization left out'}), "
        f"then dynamic int8 of MatMul/Attention and the embeddings, per tensor; its time is the compress stage's "
        f"({stage_work(ship)}). "
        f"Optimum ({peer_versions('optimum', setup)}): `ORTModelForSequenceClassification.from_pretrained(export="
        f"True)`, `ORTOptimizer` with `AutoOptimizationConfig` {', '.join(LEVELS)}, `ORTQuantizer` with "
        f"`AutoQuantizationConfig.{side.get('preset', '?')}(is_static=False, per_channel=False/True)` (this CPU: "
        f"{', '.join(side.get('cpu_flags', [])) or '?'}) of the export and of each optimized graph; its time is each "
        f"step's own. ORTQuantizer cannot type the fused O2/O3 graphs (rows below say why): they are quantized "
        f"again after ORT's `quant_pre_process(skip_optimization=True, auto_merge=True)`, the pre-processing "
        f"ORT's quantizer advises (its time included). Measured here (ONNX Runtime of alambic's environment), "
        f"{setup.threads} threads, batch 1, "
        f"every graph and load setting timed in turns ({ROUNDS} rounds of {max(1, setup.runs // ROUNDS)} runs at each "
        f"length, after a pause and 5 warm-up; the median of the rounds' p50 / p90); accuracy on "
        f"{len(setup.tokenized['test']):,} test / "
        f"{len(setup.tokenized['validation']):,} validation rows. Each graph in its tool's load setting (alambic: "
        f"ORT's optimizations minus SkipLayerNormFusion; Optimum: ORT defaults, as ORTModel loads it); the last "
        f"latency column loads it the other way. Optimum's best int8 graph: the fastest (mean p50) whose validation "
        f"accuracy is within {KEEP_POINTS:g} point of the student's; equal accuracy: test within "
        f"{EQUAL_POINTS:g} point.")


def _table(rows: list[dict[str, Any]], lengths: list[int]) -> list[str]:
    head = ["graph", "val acc %", "test acc %", "size MB", *(f"p50 / p90 ms @{n}" for n in lengths),
            "mean p50 ms, other load", "made in"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "own" not in r:
            lines.append(f"| {r['graph']} | " + " | ".join(["-"] * (len(head) - 2)) + f" | {r['error']} |")
            continue
        own, other = r["own"], r["other"]
        cells = [r["graph"], pct(own["val_accuracy"]), pct(own["accuracy"]), f"{own['size_mb']:.1f}",
                 *latency_cells(own, lengths), f"{mean_p50(other):.2f}", r["made"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict(ours: dict[str, Any], best: dict[str, Any] | None, lengths: list[int], reference: float) -> list[str]:
    """The goal per length, from the measured figures; on a miss, what differs between the graphs.
    Accuracy holds when alambic's test accuracy is not more than ``EQUAL_POINTS`` below Optimum's."""
    goal = f"alambic's shipped graph at least {GOAL_SPEEDUP:g}x faster than Optimum's best int8 graph at equal accuracy"
    if "own" not in ours:
        return [f"**goal** ({goal}): not judged: alambic's graph: {ours['error']}"]
    if best is None:
        return [f"**goal** ({goal}): not judged: no Optimum int8 graph within {KEEP_POINTS:g} point of the "
                f"student's validation accuracy ({pct(reference)} %)"]
    gap = 100 * (ours["own"]["accuracy"] - best["own"]["accuracy"])
    equal = gap >= -EQUAL_POINTS
    accuracy = ("equal, within" if abs(gap) <= EQUAL_POINTS else "alambic higher by more than" if equal
                else "alambic lower by more than")
    speedups = {n: best["own"]["p50_ms"][n] / ours["own"]["p50_ms"][n] for n in lengths}
    met = equal and all(s >= GOAL_SPEEDUP for s in speedups.values())
    per_length = ", ".join(f"@{n} {best['own']['p50_ms'][n]:.2f} / {ours['own']['p50_ms'][n]:.2f} ms = {s:.2f}x "
                           f"{'met' if s >= GOAL_SPEEDUP else 'missed'}" for n, s in speedups.items())
    lines = [f"**goal** ({goal}): Optimum's best is {best['graph']}; test accuracy {pct(ours['own']['accuracy'])} "
             f"vs {pct(best['own']['accuracy'])} ({gap:+.2f} point: {accuracy} {EQUAL_POINTS:g} point, "
             f"{'met' if equal else 'missed'}); speed-up (Optimum p50 / alambic p50) {per_length}: "
             f"**{'met' if met else 'missed'}**."]
    if not met:
        lines.append("why: " + _why(ours, best))
    return lines


def _why(ours: dict[str, Any], best: dict[str, Any]) -> str:
    """What differs between the two graphs as saved (ORT fuses more at load), and the load setting's share."""
    return (f"alambic's graph: {_summary(ours['path'])}; Optimum's: {_summary(best['path'])}. Both run on ONNX "
            f"Runtime's dynamic int8 kernels. Each loaded the other way: alambic's {mean_p50(ours['other']):.2f} ms, "
            f"Optimum's {mean_p50(best['other']):.2f} ms mean p50 (own way: {mean_p50(ours['own']):.2f} vs "
            f"{mean_p50(best['own']):.2f}).")


def _summary(path: str) -> str:
    """A graph in a few words: its nodes, fused operators, int8 operators and fp32 MatMuls left."""
    from alambic.compress.onnx_export import FUSED_OPS
    from alambic.compress.onnx_quant import op_counts

    counts = op_counts(path)

    def listed(ops: tuple[str, ...]) -> str:
        return ", ".join(f"{op} {counts[op]}" for op in ops if counts.get(op)) or "none"

    return (f"{sum(counts.values())} nodes, fused {listed(FUSED_OPS)}, "
            f"int8 {listed(INT8_OPS)}, fp32 MatMul {counts.get('MatMul', 0)}")
