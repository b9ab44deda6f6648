"""Pruning: TextPruner (TransformerPruner, VocabularyPruner) beside alambic's pruners, at equal size.

alambic prunes the distilled student with ``compress`` (heads then FFN, under the run's guard,
without and with recovery distillation); TextPruner then gets the sizes alambic kept (heads per
layer on average, FFN width) and the same importance rows. Every model, either tool's, is loaded
here and scored by alambic's own ``evaluate`` on the same splits, so the table compares the
pruning and nothing else.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peer_bench.common import Setup, save
from peer_bench.venvs import run_side, versions

#: alambic's recipes: the same steps, each step followed (or not) by an epoch of recovery distillation
STEPS = {"heads:0.25, ffn:0.3": "heads:0.25,ffn:0.3",
         "heads:0.25, ffn:0.3, 1 recovery epoch each": "heads:0.25+1,ffn:0.3+1"}
VOCAB_STEPS = "vocab"
#: TextPruner's recipe for a classifier: its transformer_pruning example (iterative, 4 iterations), and
#: its defaults otherwise (the same number of heads and FFN neurons in every layer, the loss as signal)
RECIPE = {"pruning_method": "iterative", "n_iters": 4, "head_even_masking": True, "ffn_even_masking": True,
          "use_logits": False}


def measure(folder: str | Path, splits: dict[str, Any]) -> dict[str, Any]:
    """Structure, size and scores of a saved model: the same code for every tool's folder."""
    from transformers import AutoModelForSequenceClassification

    from alambic.compress.pruning import heads_per_layer
    from alambic.train.loop import evaluate
    from alambic.train.models import params

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    scores = {name: evaluate(model, splits[name]) for name in ("validation", "test")}
    heads, count = heads_per_layer(model), params(model)
    return {"heads_per_layer": heads, "heads": sum(heads), "ffn": model.config.intermediate_size,
            "vocab": model.get_input_embeddings().num_embeddings, "params": count, "fp32_mb": count * 4 / 1e6,
            **{name: {k: s[k] for k in ("accuracy", "macro_f1", "examples")} for name, s in scores.items()}}


def attempt(row: dict[str, Any], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``row`` with what ``make`` found, or with why it failed: a failure is a row, the others go on."""
    try:
        return row | make()
    except Exception as exc:  # noqa: BLE001
        return row | {"error": f"{type(exc).__name__}: {exc}"}


def own_splits(setup: Setup, folder: Path) -> dict[str, Any]:
    """The splits as the folder's own tokenizer reads them (what ships with it)."""
    from alambic.train.models import own_tokenizer

    tokenizer = own_tokenizer(folder, str(folder))
    return setup.tokenized if tokenizer is None else setup.ctx.tokenize(tokenizer)[0]


def compressed(setup: Setup, steps: str) -> dict[str, Any]:
    """``compress`` with ``steps`` and no quantizer (scores only), measured from the folder it ships."""
    from alambic.compress.chain import compress
    from alambic.compress.records import SCORES_ONLY, parse_steps

    start = time.perf_counter()
    record = compress(setup.ctx, setup.student.path, parse_steps(steps, setup.ctx.registry), None,
                      measure=SCORES_ONLY)
    wall = time.perf_counter() - start
    guard = "; ".join(f"{d.step}" + ("" if d.strength is None else f" at {d.strength:g}") + f": {d.outcome}"
                      for d in record.decisions)
    return {"steps": steps, "dir": str(record.artifact), "wall_s": wall, "reused": record.prune_reused,
            "guard": guard, "record_test_accuracy": record.after.accuracy,
            "record_validation_accuracy": record.record.get("validation", {}).get("accuracy"),
            **measure(record.artifact, own_splits(setup, Path(record.artifact)))}


def importance_rows(setup: Setup) -> list[list[int]]:
    """The validation rows of the batches alambic's pruners score importance on
    (``PruneContext.importance_batches``: the first ``batches`` shuffled batches, seed ``seed``)."""
    from alambic.compress.pruning import PruneContext
    from alambic.train.loop import iterate

    context = PruneContext(validation=setup.tokenized["validation"])
    found = []
    for rows, _ in iterate(context.validation, context.batch_size, seed=context.seed, shuffle=True):
        if len(found) == context.batches:
            break
        found.append([int(i) for i in rows])
    return found


def importance_pad_id() -> int:
    """The id alambic's importance batches pad with (``iterate`` collates with ``collate``'s default,
    not the tokenizer's pad id; the attention mask hides it): TextPruner's batches are the same tensors."""
    import inspect

    from alambic.train.loop import collate

    return inspect.signature(collate).parameters["pad_id"].default


def target(row: dict[str, Any]) -> dict[str, int]:
    """TextPruner's target for an alambic row: its FFN width and heads per layer on average, rounded
    up when not whole (TextPruner takes a whole number per layer): never smaller than alambic's."""
    return {"heads": math.ceil(row["heads"] / len(row["heads_per_layer"])), "ffn": row["ffn"]}


def textpruner(setup: Setup, alambic: list[dict[str, Any]], rows: list[list[int]]) -> dict[str, Any]:
    """TextPruner's side script on the targets alambic's rows set, the importance ``rows`` and the texts."""
    work = setup.work / "prune-textpruner"
    work.mkdir(parents=True, exist_ok=True)
    raw = setup.ctx.prepared.raw
    texts = work / "texts.json"
    texts.write_text(json.dumps({name: list(raw[name]["text"]) for name in ("train", "test")}, ensure_ascii=False),
                     encoding="utf-8")
    targets = list({json.dumps(target(r), sort_keys=True): target(r) for r in alambic}.values())
    inputs = {"student": str(setup.student.path), "splits": setup.splits, "pad_id": importance_pad_id(),
              "importance_rows": rows, "targets": targets, "recipe": RECIPE, "texts": str(texts),
              "threads": setup.threads, "work": str(work)}
    return run_side("textpruner", "textpruner_prune.py", inputs, work, setup.venvs)


def vocab_splits(setup: Setup, kept: list[int]) -> dict[str, Any]:
    """The splits with ids mapped through TextPruner's kept ids (dropped ones become the unknown
    token): the tokenizer TextPruner writes for this model does not load (see the row's note)."""
    from alambic.compress.pruning import remap_tokens
    from alambic.train.models import own_tokenizer

    unk = kept.index(own_tokenizer(setup.student.path).unk_token_id)
    return {name: remap_tokens(setup.tokenized[name], kept, unk) for name in ("validation", "test")}


def peer_rows(setup: Setup, side: dict[str, Any], tool: str) -> list[dict[str, Any]]:
    """TextPruner's folders measured here, or rows saying why there are none."""
    if "error" in side:
        return [{"tool": tool, "recipe": f"{kind}Pruner", "kind": kind, "error": side["error"]}
                for kind in ("Transformer", "Vocabulary")]
    rows = []
    for found in side["transformer"]:
        t = found.pop("target")
        row = {"tool": tool, "recipe": f"TransformerPruner to {t['heads']} heads/layer, FFN {t['ffn']}",
               "kind": "Transformer", "target": t, **found}
        rows.append(row if "error" in found else attempt(row, lambda d=found["dir"]: measure(d, setup.tokenized)))
    found = side["vocabulary"]
    row = {"tool": tool, "recipe": "VocabularyPruner, train texts", "kind": "Vocabulary",
           **{k: v for k, v in found.items() if k != "kept_ids"}}
    if "error" not in found:
        row = attempt(row, lambda: measure(found["dir"], vocab_splits(setup, found["kept_ids"])))
    return rows + [row]


def cells(row: dict[str, Any]) -> str:
    """A table row: the structure, size and scores, or why the tool gave none."""
    if "error" in row:
        return f"| {row['tool']} | {row['recipe']} | failed: {row['error']} |" + " |" * 8
    heads = f"{row['heads']} ({'/'.join(map(str, row['heads_per_layer']))})"
    wall = "-" if row.get("wall_s") is None else "stored" if row.get("reused") else f"{row['wall_s']:.1f}"
    return (f"| {row['tool']} | {row['recipe']} | {heads} | {row['ffn']} | {row['vocab']:,} | {row['params']:,} | "
            f"{row['fp32_mb']:.1f} | {row['validation']['accuracy']:.4f} | {row['test']['accuracy']:.4f} | "
            f"{row['test']['macro_f1']:.4f} | {wall} |")


def verdict(name: str, ours: dict[str, Any], theirs: list[dict[str, Any]]) -> str:
    """The goal line for one alambic row against TextPruner's row of its size: the same FFN width and
    vocabulary, the same heads in all (or the few more TextPruner's whole heads per layer give: said so)."""
    found = [] if "error" in ours else [r for r in theirs if "error" not in r and r["heads"] >= ours["heads"]
                                        and (r["ffn"], r["vocab"]) == (ours["ffn"], ours["vocab"])]
    if not found:
        why = ours.get("error") or "; ".join(r["error"] for r in theirs if "error" in r) or "no row of that size"
        return f"- {name}: not measured ({why})"
    peer = min(found, key=lambda r: r["params"])
    a, b = ours["test"]["accuracy"], peer["test"]["accuracy"]
    size = (f"at {ours['params']:,} params" if peer["params"] == ours["params"] else
            f"alambic {ours['params']:,} params, TextPruner {peer['params']:,}: its heads per layer are whole "
            f"numbers, {peer['heads']} heads against alambic's {ours['heads']}")
    return (f"- alambic's pruned student ({name}) at least as accurate as TextPruner's at equal size: "
            f"**{'met' if a >= b else 'missed'}** (test {a:.4f} vs {b:.4f}; validation "
            f"{ours['validation']['accuracy']:.4f} vs {peer['validation']['accuracy']:.4f}; {size})")


def vocab_verdict(ours: dict[str, Any], theirs: list[dict[str, Any]]) -> str:
    """The goal line for vocabulary pruning: both keep the tokens of the same train texts, so the
    kept sizes should agree; when they do not, both are shown (met needs alambic's no larger)."""
    peer = theirs[0] if theirs else {"error": "no row"}
    if "error" in ours or "error" in peer:
        return f"- vocab: not measured ({ours.get('error') or peer['error']})"
    a, b = ours["test"]["accuracy"], peer["test"]["accuracy"]
    return (f"- alambic's vocabulary-pruned student at least as accurate as TextPruner's at equal size: "
            f"**{'met' if a >= b and ours['params'] <= peer['params'] else 'missed'}** (test {a:.4f} vs {b:.4f}; "
            f"validation {ours['validation']['accuracy']:.4f} vs {peer['validation']['accuracy']:.4f}; "
            f"{ours['vocab']:,} vs {peer['vocab']:,} tokens, {ours['params']:,} vs {peer['params']:,} params)")


def run(setup: Setup, args: Any) -> str:
    """Prune with both tools, measure every folder the same way, save the rows, render the section."""
    import alambic

    peer = versions("textpruner", setup.venvs)
    tool = f"TextPruner {peer.get('textpruner', '(not installed)')}"
    base = {"tool": f"alambic {alambic.__version__}"}
    student = base | {"recipe": "unpruned student"} | measure(setup.student.path, setup.tokenized)
    ours = {name: attempt(base | {"recipe": name}, lambda s=steps: compressed(setup, s))
            for name, steps in STEPS.items()}
    vocab = attempt(base | {"recipe": VOCAB_STEPS}, lambda: compressed(setup, VOCAB_STEPS))
    rows = importance_rows(setup)
    matched = [r for r in ours.values() if "error" not in r]
    side = (peer if "error" in peer else textpruner(setup, matched, rows) if matched
            else {"error": "no alambic row to match"})
    theirs = peer_rows(setup, side, tool)
    table = [student, *ours.values(), vocab, *theirs]
    save(table, setup.work / "prune.json")
    return render(setup, table, ours, vocab, theirs, peer, rows)


def render(setup: Setup, table: list[dict[str, Any]], ours: dict[str, Any], vocab: dict[str, Any],
           theirs: list[dict[str, Any]], peer: dict[str, str], rows: list[list[int]]) -> str:
    """The Markdown section: what was compared and how, the table, the goal lines."""
    guard, distill = setup.ctx.config.guard, setup.ctx.config.distill
    notes = [f"- alambic {r['recipe']}: guard {r['guard']}" for r in [*ours.values(), vocab] if r.get("guard")]
    notes += [f"- TextPruner {r['recipe']}: its tokenizer {r['tokenizer_reload']}; scored on ids mapped through "
              f"its kept ids" for r in theirs if r.get("tokenizer_reload")]
    return "\n".join([
        "### Pruning: TextPruner vs alambic's pruners, accuracy at equal size",
        "",
        f"The distilled student `{setup.student.student}` pruned by each tool. alambic: `compress` with the steps "
        f"shown, no quantizer, under the config's guard (max_drop {guard.max_drop:g} point, total "
        f"{guard.total_budget:g}, {guard.retries} retries at half strength); heads by |∂loss/∂gate| ranked across "
        f"layers (>= 1 a layer), FFN neurons the same count per layer; recovery: 1 epoch of distillation from the "
        f"teacher's cached logits after each step (T {distill.temperature:g}, alpha {distill.alpha:g}, lr "
        f"{distill.learning_rate:g}, batch {distill.batch_size}). TextPruner "
        f"({peer.get('error') or ', '.join(f'{k} {v}' for k, v in peer.items())}): "
        f"`TransformerPruner(TransformerPruningConfig("
        f"target_num_of_heads=<alambic's heads per layer, rounded up>, target_ffn_size=<alambic's FFN width>, "
        f"{', '.join(f'{k}={v!r}' for k, v in RECIPE.items())}))`, its dataloader the {len(rows)} validation "
        f"batches of {len(rows[0]) if rows else 0} rows alambic scores importance on, its adaptor the model's "
        f"cross-entropy; TextPruner has no recovery training, so it faces both alambic rows at their sizes. "
        f"Vocabulary: `VocabularyPruner(min_count=1)` on the {len(setup.tokenized['train']):,} train texts against "
        f"alambic's `vocab` (tokens the train split uses). Every model is loaded here and scored by alambic's "
        f"`evaluate` on the same splits (validation holds the importance rows, for both tools); fp32 MB = params "
        f"x 4; wall s = the pruning call (alambic's includes recovery and the guard's evaluations; stored: "
        f"reused from the store).",
        "",
        "| tool | recipe | heads kept (per layer) | FFN width | vocabulary | params | fp32 MB | validation acc | "
        "test acc | macro-F1 | wall s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(cells(r) for r in table),
        "",
        *notes,
        *(verdict(name, row, [r for r in theirs if r["kind"] == "Transformer"]) for name, row in ours.items()),
        vocab_verdict(vocab, [r for r in theirs if r["kind"] == "Vocabulary"]),
    ])
