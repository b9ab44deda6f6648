"""What the quantize and tune parts share: alambic's shipped int8 graph of the student, and ONNX graphs
measured (test and validation accuracy, size, latency) under either runtime setting.

Both are made once per run: the second part reads them from here, not from the store, so the
compress stage's time is still the one measured in this run, and no graph is timed twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from peer_bench.common import Setup, measure_graph
from peer_bench.venvs import versions

#: graphs compared by speed are timed in turns: ``ROUNDS`` rounds, each timing every graph for
#: runs / ROUNDS calls, the median of the rounds' p50 (p90) reported; a drift in the machine's speed
#: then falls on every graph alike (timing one graph after another had put 7-20% of drift between them)
ROUNDS = 5
#: before each turn: the previous session's ONNX Runtime threads spin-wait after a run and would
#: otherwise take the cores from the next graph; then warm-up calls
PAUSE_S, TURN_WARMUP = 0.05, 5
_SHIPPED: dict[str, dict[str, Any]] = {}
_MEASURED: dict[tuple[str, bool], dict[str, Any]] = {}


def shipped(setup: Setup) -> dict[str, Any]:
    """The student quantized as ``alambic compress --quant dynamic-int8`` ships it, under the run's
    guard: ``graph`` (None when the guard reverted the quantization), its stage's wall time, whether
    the stage came from the store, the guard's decision, the quantizer's report."""
    from alambic.compress.chain import compress

    key = str(setup.student.path)
    if key not in _SHIPPED:
        start = time.perf_counter()
        record = compress(setup.ctx, setup.student.path, [], "dynamic-int8")
        decision = record.decisions[-1] if record.decisions else None
        _SHIPPED[key] = {
            "graph": str(record.artifact) if record.runtime == "onnxruntime" else None,
            "stage": record.key, "reused": record.reused, "wall_time_s": record.record.get("wall_time_s"),
            "call_s": round(time.perf_counter() - start, 1), "guard": setup.ctx.config.guard.model_dump(),
            "decision": decision.to_dict() if decision else None,
            "quantization": record.record.get("quantization") or {},
            "measure": record.record.get("inputs", {}).get("measure")}
    return _SHIPPED[key]


def stage_time(ship: dict[str, Any]) -> str:
    """The compress stage's time as the table says it: measured here, or made before this run."""
    if ship["reused"]:
        return f"{ship['wall_time_s']} s (stage made before this run: reused from the store, not timed here)"
    return f"{ship['wall_time_s']} s"


def stage_work(ship: dict[str, Any]) -> str:
    """What the compress stage's wall time holds besides quantizing: the guard and its measuring."""
    measure = ship["measure"] if isinstance(ship["measure"], dict) else {}
    timing = (f"latency at {', '.join(map(str, measure['lengths']))} tokens x {measure.get('runs')} runs"
              f"{', peak memory' if measure.get('memory') else ''}, " if measure.get("lengths") else "")
    return (f"export, fusion, quantization, the guard's validation pass, and measuring the student before and the "
            f"graph after: {timing}test accuracy, agreement with the fp32 graph")


def student_validation(setup: Setup, ship: dict[str, Any]) -> float:
    """The fp32 student's validation accuracy as the guard saw it (its start), else as distilled."""
    if ship["decision"]:
        return ship["decision"]["accuracy_before"]
    return setup.student.metrics["validation"]["accuracy"]


def measure(setup: Setup, path: str | Path, alambic_session: bool) -> dict[str, Any]:
    """:func:`measure_graph` in the graph's own tool's load setting, once per graph."""
    key = (str(path), alambic_session)
    if key not in _MEASURED:
        _MEASURED[key] = measure_graph(setup, path, alambic_session=alambic_session)
    return _MEASURED[key]


def time_in_turns(setup: Setup, rows: list[dict[str, Any]]) -> None:
    """Batch-1 latency of every graph the rows measured, in each load setting measured, timed in
    turns (:data:`ROUNDS`) at each length; written into the rows' ``own``/``other`` dicts."""
    import numpy as np

    from alambic.compress.latency import onnx_latency_ms
    from alambic.compress.onnx_export import SLOW_FUSIONS, ort_session
    from peer_bench.side.exchange import Split

    targets: dict[tuple[str, bool], dict[str, Any]] = {}
    for row in rows:
        for side, setting in (("own", row.get("alambic_session")), ("other", not row.get("alambic_session"))):
            if side in row:
                targets[(str(row["path"]), setting)] = row[side]
    sessions = {key: ort_session(key[0], setup.threads, SLOW_FUSIONS if key[1] else ()) for key in targets}
    vocab_size = int(Split(setup.splits["test"]).ids.max()) + 1  # ids every graph accepts
    per_round = max(1, setup.runs // ROUNDS)
    for n in setup.lengths:
        found: dict[tuple[str, bool], list[dict[str, float]]] = {key: [] for key in sessions}
        for _ in range(ROUNDS):
            for key, session in sessions.items():
                time.sleep(PAUSE_S)
                found[key].append(onnx_latency_ms(session, vocab_size, n, per_round, warmup=TURN_WARMUP))
        for key, rounds in found.items():
            targets[key].setdefault("p50_ms", {})[n] = float(np.median([r["p50"] for r in rounds]))
            targets[key].setdefault("p90_ms", {})[n] = float(np.median([r["p90"] for r in rounds]))


def graph_row(setup: Setup, path: str | None, alambic_session: bool, error: str | None, **fields: Any
              ) -> dict[str, Any]:
    """A table row for one graph: ``fields``, and the graph measured in its own tool's setting
    (``own``) and the other (``other``); unmeasured when there is no graph or an ``error``."""
    row: dict[str, Any] = {**fields, "path": path, "error": error, "alambic_session": alambic_session}
    if path and not error:
        row["own"] = measure(setup, path, alambic_session)
        row["other"] = {}  # loaded the other way: latency only (time_in_turns), the weights are the same
    return row


def mean_p50(measured: dict[str, Any]) -> float:
    return sum(measured["p50_ms"].values()) / len(measured["p50_ms"])


def latency_cells(measured: dict[str, Any] | None, lengths: list[int]) -> list[str]:
    """``p50 / p90`` per length, '-' when not measured."""
    if measured is None:
        return ["-"] * len(lengths)
    return [f"{measured['p50_ms'][n]:.2f} / {measured['p90_ms'][n]:.2f}" for n in lengths]


def peer_versions(peer: str, setup: Setup) -> str:
    """``name version, ...`` of the peer's environment, or why it does not install."""
    found = versions(peer, setup.venvs)
    return found.get("error") or ", ".join(f"{k} {v}" for k, v in found.items())


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
