"""Compare two classifiers on the same inputs: is an adapter compatible with the model it replaces?

``alambic compare A B --config run.yaml`` answers with one dict (and two tables)::

    result = compare_dirs("ckpt/roberta-l4", "ckpt/mobilebert-adapter", "run.yaml", split="test")
    result["accuracy_diff"]   # {"points": B - A, "threshold": 1.0, "flag": |points| > 1}
    result["models"]["b"]     # accuracy, macro_f1, params, latency_ms p50/p90, memory
    result["layers"]          # per layer pair: linear CKA of hidden states, attention KL(A || B)

Layers are paired by the uniform map: when A and B have different depths, layer ``i`` (1-based) of
the shallower model pairs with layer ``round(i * L_big / L_small)`` of the deeper one (halves round
up), and the embedding outputs (layer 0) pair with each other. Widths may differ (CKA compares
representations of any widths); head counts may differ (attention maps are averaged over heads).

Representations are *[CLS]-free*: per example and layer, the hidden states are averaged over the
real tokens after [CLS] (padding excluded), so CKA does not hinge on one position that only the
classifier head reads.

torch and transformers are imported inside the functions, so ``import alambic.report.compare`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

# batch-1 latency, the peak RSS of a child process and the weights' bytes: alambic.compress's
from alambic.compress.latency import latency_ms
from alambic.compress.measure import weight_bytes
from alambic.compress.memory import peak_rss
from alambic.config import load_config
from alambic.data.dataset import SPLITS, column, load_data
from alambic.data.tokenize import prepare_tokenizer
from alambic.errors import AlambicError, did_you_mean
from alambic.machine import describe
from alambic.manager import build_registry
from alambic.train.metrics import macro_f1
from alambic.train.models import check_vocab, load_pretrained, params

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import Tensor

#: accuracy points between A and B above which the comparison is flagged (the guard's budget)
MAX_ACCURACY_DIFF = 1.0
EPS = 1e-12  # floor of attention probabilities before the log


# --- similarity measures ----------------------------------------------------------------------


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same N examples.

    ``x`` is (N, D1), ``y`` is (N, D2); widths may differ. Features are centred, then
    ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)`` in float64. 1 = the same up to rotation and scale;
    NaN when either side is constant (CKA is undefined there).
    """
    import torch

    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs (N, D1) and (N, D2), got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # (N, D1)
    y = y - y.mean(dim=0, keepdim=True)  # (N, D2)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2  # (D2, D1) -> scalar
    norm_x = torch.linalg.matrix_norm(x.T @ x)
    norm_y = torch.linalg.matrix_norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        return math.nan
    return float(cross / (norm_x * norm_y))


def _kl_rows(p_att: Tensor, q_att: Tensor, attention_mask: Tensor) -> tuple[float, int]:
    """Sum of KL(p || q) over real query rows, and the number of such rows."""
    import torch

    if p_att.ndim == 4:  # (B, H, T, T) -> head-averaged (B, T, T); head counts may differ
        p_att = p_att.mean(dim=1)
    if q_att.ndim == 4:
        q_att = q_att.mean(dim=1)
    if p_att.shape != q_att.shape or p_att.ndim != 3:
        raise ValueError(f"attention maps must be (B, [H,] T, T) alike, got {tuple(p_att.shape)} "
                         f"and {tuple(q_att.shape)}")
    real = attention_mask.to(torch.bool)  # (B, T)
    keys = real[:, None, :].to(torch.float64)  # (B, 1, T): padded keys get no mass

    def renormalized(att: Tensor) -> Tensor:
        att = att.detach().to(torch.float64) * keys  # (B, T, T)
        att = att / att.sum(dim=-1, keepdim=True).clamp_min(EPS)
        return att.clamp_min(EPS)

    p, q = renormalized(p_att), renormalized(q_att)
    kl = (p * (p.log() - q.log()) * keys).sum(dim=-1)  # (B, T): one KL per query row
    return float(kl[real].sum()), int(real.sum())


def attention_kl(p_att: Tensor, q_att: Tensor, attention_mask: Tensor) -> float:
    """Mean KL(p || q) of two attention maps over the real (non-padding) query rows.

    :param p_att: (B, H, T, T) or head-averaged (B, T, T); rows are query positions.
    :param q_att: the same, from the other model (H may differ: both are averaged over heads).
    :param attention_mask: (B, T), 1 for real tokens. Keys are restricted to real tokens and each
        row renormalized, so what a model puts on padding never counts.
    """
    total, rows = _kl_rows(p_att, q_att, attention_mask)
    return total / rows if rows else math.nan


def layer_pairs(layers_a: int, layers_b: int) -> list[tuple[int, int]]:
    """(layer of A, layer of B) by the uniform map, 1-based, embeddings (0, 0) first.

    The map is distillation's (:func:`alambic.train.losses.uniform_layer_map`, 0-based), the
    deeper model in the teacher's place.
    """
    from alambic.train.losses import uniform_layer_map  # imports torch

    small, big = min(layers_a, layers_b), max(layers_a, layers_b)
    mapped = uniform_layer_map(big, small) if small else []  # halves round up; no layers: embeddings only
    pairs = [(i + 1, layer + 1) for i, layer in enumerate(mapped)]
    if layers_a > layers_b:
        pairs = [(b, a) for a, b in pairs]
    return [(0, 0), *pairs]


# --- predictions ------------------------------------------------------------------------------


def compare_predictions(labels: Sequence[int], preds_a: Sequence[int], preds_b: Sequence[int],
                        max_diff: float = MAX_ACCURACY_DIFF) -> dict[str, Any]:
    """Accuracy and macro-F1 of each, the difference B - A in points (flagged above ``max_diff``),
    and the fraction of examples on which A and B predict the same label."""
    import numpy as np

    y, a, b = np.asarray(labels), np.asarray(preds_a), np.asarray(preds_b)
    if not len(y) or not (len(y) == len(a) == len(b)):
        raise ValueError(f"need as many predictions as labels (> 0), got {len(y)}, {len(a)}, {len(b)}")
    correct_a, correct_b = int(np.sum(a == y)), int(np.sum(b == y))
    points = 100 * (correct_b - correct_a) / len(y)  # from counts: exactly 1.0 for 10 in 1000
    return {
        "a": {"accuracy": correct_a / len(y), "macro_f1": macro_f1(y, a)},
        "b": {"accuracy": correct_b / len(y), "macro_f1": macro_f1(y, b)},
        "accuracy_diff": {"points": points, "threshold": max_diff, "flag": abs(points) > max_diff},
        "agreement": float(np.mean(a == b)),
    }


# --- models -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """BERT's SDPA attention logs that it falls back to eager to return attention maps: expected."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def label_names(model: Any) -> list[str]:
    """The classifier's label names, in id order."""
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def _check_compatible(model_a: Any, model_b: Any, names: tuple[str, str]) -> None:
    labels_a, labels_b = label_names(model_a), label_names(model_b)
    if labels_a != labels_b:
        raise AlambicError(
            f"the two models classify into different label sets: {names[0]} has {labels_a}, "
            f"{names[1]} has {labels_b}"
        )
    vocab_a = model_a.get_input_embeddings().num_embeddings
    vocab_b = model_b.get_input_embeddings().num_embeddings
    if vocab_a != vocab_b:
        raise AlambicError(
            f"the two models have different vocabularies: {names[0]} has {vocab_a} tokens, "
            f"{names[1]} has {vocab_b}; they cannot read the same inputs"
        )


def _batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[dict[str, Tensor], list[int]]]:
    """Padded batches (pad id 0, right padding) and their labels."""
    import torch

    cols = {k: column(dataset, k) for k in ("input_ids", "attention_mask", "token_type_ids", "label")
            if k in dataset.column_names}
    for start in range(0, len(dataset), batch_size):
        rows = slice(start, start + batch_size)
        width = max(len(ids) for ids in cols["input_ids"][rows])

        def padded(key: str) -> Tensor:
            return torch.tensor([list(r) + [0] * (width - len(r)) for r in cols[key][rows]])  # (B, T)

        batch = {"input_ids": padded("input_ids"), "attention_mask": padded("attention_mask")}
        batch["token_type_ids"] = (padded("token_type_ids") if "token_type_ids" in cols
                                   else torch.zeros_like(batch["input_ids"]))
        yield batch, cols["label"][rows]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, D) -> (B, D): mean over real tokens after [CLS] (all real ones if that is none)."""
    mask = attention_mask.clone()
    mask[:, 0] = 0
    mask = mask.where(mask.sum(dim=1, keepdim=True) > 0, attention_mask)
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)


def _describe_model(model: Any) -> dict[str, Any]:
    config = model.config
    return {"model_type": config.model_type, "layers": config.num_hidden_layers,
            "hidden": config.hidden_size, "heads": config.num_attention_heads, "params": params(model)}


def compare_models(model_a: Any, model_b: Any, dataset: Dataset, batch_size: int = 64,
                   max_examples: int = 2000, *, names: tuple[str, str] = ("A", "B"),
                   folders: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
                   latency_length: int = 32, latency_runs: int = 50, latency_warmup: int = 10,
                   max_diff: float = MAX_ACCURACY_DIFF) -> dict[str, Any]:
    """Run A and B on the same tokenized examples; return a JSON-serialisable comparison.

    :param dataset: columns ``input_ids``, ``attention_mask``, ``label`` (``token_type_ids``
        optional), unpadded; the first ``max_examples`` rows are used.
    :param names: how A and B are called in the result and in error messages (e.g. folders).
    :param folders: the save_pretrained folders of A and B: with them, the peak RSS of a fresh
        process running each is measured too (None = parameter and buffer bytes only).
    """
    import torch

    _check_compatible(model_a, model_b, names)
    missing = {"input_ids", "attention_mask", "label"} - set(dataset.column_names)
    if missing:
        raise AlambicError(f"compare: the dataset lacks column(s) {sorted(missing)} (tokenize it first)")
    if len(dataset) == 0 or max_examples < 1:
        raise AlambicError("compare: no examples to compare on")
    dataset = dataset.select(range(min(len(dataset), max_examples)))
    model_a.eval()
    model_b.eval()

    labels: list[int] = []
    preds: dict[str, list[int]] = {"a": [], "b": []}
    pooled: dict[str, list[list[Tensor]]] = {"a": [], "b": []}  # [layer][batch] -> (B, D)
    kl_sum: dict[tuple[int, int], float] = {}
    kl_rows: dict[tuple[int, int], int] = {}
    pairs: list[tuple[int, int]] = []
    with torch.inference_mode(), _quiet_transformers():
        for batch, batch_labels in _batches(dataset, batch_size):
            outs = {key: model(**batch, output_hidden_states=True, output_attentions=True)
                    for key, model in (("a", model_a), ("b", model_b))}
            if not pairs:
                pairs = layer_pairs(len(outs["a"].hidden_states) - 1, len(outs["b"].hidden_states) - 1)
                pooled = {k: [[] for _ in outs[k].hidden_states] for k in outs}
            labels += list(batch_labels)
            for key, out in outs.items():
                preds[key] += out.logits.argmax(dim=-1).tolist()
                for layer, hidden in enumerate(out.hidden_states):  # (B, T, D) each
                    pooled[key][layer].append(mean_pool(hidden, batch["attention_mask"]).double())
            if outs["a"].attentions is None or outs["b"].attentions is None:
                continue
            for la, lb in pairs[1:]:
                total, rows = _kl_rows(outs["a"].attentions[la - 1], outs["b"].attentions[lb - 1],
                                       batch["attention_mask"])
                kl_sum[la, lb] = kl_sum.get((la, lb), 0.0) + total
                kl_rows[la, lb] = kl_rows.get((la, lb), 0) + rows

    layers = []
    for la, lb in pairs:
        cka = linear_cka(torch.cat(pooled["a"][la]), torch.cat(pooled["b"][lb]))
        kl = kl_sum[la, lb] / kl_rows[la, lb] if kl_rows.get((la, lb)) else None
        layers.append({"a": la, "b": lb, "cka": None if math.isnan(cka) else cka, "attention_kl": kl})

    scores = compare_predictions(labels, preds["a"], preds["b"], max_diff=max_diff)
    models = {}
    for key, model, name in (("a", model_a, names[0]), ("b", model_b, names[1])):
        memory: dict[str, Any] = weight_bytes(model)
        if folders is not None:
            memory |= peak_rss(folders[0 if key == "a" else 1], latency_length)
        models[key] = {
            "name": str(name), **_describe_model(model), **scores[key],
            "latency_ms": latency_ms(model, latency_length, latency_runs, latency_warmup),
            "memory": memory,
        }
    return {
        "examples": len(labels),
        "labels": label_names(model_a),
        "models": models,
        "accuracy_diff": scores["accuracy_diff"],
        "agreement": scores["agreement"],
        "layers": layers,
        "layer_map": "uniform",
        "latency": {"batch_size": 1, "length": latency_length, "runs": latency_runs,
                    "warmup": latency_warmup, "torch_threads": torch.get_num_threads()},
        "machine": describe(),
    }


# --- folders ----------------------------------------------------------------------------------


def compare_dirs(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str],
                 config_path: str | os.PathLike[str], split: str = "test", max_examples: int = 2000,
                 *, batch_size: int = 64, memory: bool = True, latency_runs: int = 50,
                 latency_warmup: int = 10) -> dict[str, Any]:
    """Compare two save_pretrained classifier folders on a split of the run config's data.

    The tokenizer saved in folder A is used (else B's, else the config's); both models must match
    its vocabulary and each other's labels. ``memory=False`` skips the two child processes that
    measure peak RSS.
    """
    from transformers import AutoModelForSequenceClassification

    if split not in SPLITS:
        raise AlambicError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}; choose among {', '.join(SPLITS)}")
    folders = (Path(path_a).expanduser(), Path(path_b).expanduser())
    names = (str(path_a), str(path_b))
    for which, folder in zip("AB", folders, strict=True):
        if not folder.is_dir():
            raise AlambicError(f"model {which}: folder not found: {folder} (give a folder written by save_pretrained)")
        _check_classifier(folder, which)
    registry = build_registry()
    config = load_config(config_path, registry=registry)
    model_a, model_b = (load_pretrained(f, AutoModelForSequenceClassification) for f in folders)
    _check_compatible(model_a, model_b, names)

    dsd, report = load_data(config.data, registry)
    data_labels = list(dsd["train"].features["label"].names)
    for which, model, folder in (("A", model_a, folders[0]), ("B", model_b, folders[1])):
        _check_data_labels(model, data_labels, f"model {which} ({folder})")
    tokenizer, tokenizer_source = _saved_tokenizer(folders)
    if tokenizer is None:
        tokenizer = prepare_tokenizer(config.tokenizer, dsd)
        tokenizer_source = f"config: {config.tokenizer.name_or_path or 'trained on the train split'}"
    check_vocab(model_a, tokenizer)
    check_vocab(model_b, tokenizer)
    rows = dsd[split].select(range(min(len(dsd[split]), max_examples)))
    dataset = _tokenize(rows, tokenizer, config.tokenizer.max_length)

    result = compare_models(model_a, model_b, dataset, batch_size, max_examples, names=names,
                            folders=folders if memory else None, latency_runs=latency_runs,
                            latency_warmup=latency_warmup)
    result["data"] = {"config": str(config_path), "split": split, "tokenizer": tokenizer_source,
                      "max_length": config.tokenizer.max_length, "warnings": list(report.warnings)}
    return result


def _check_classifier(folder: Path, which: str) -> None:
    """A folder holding a plain encoder would get a random head: refuse it before loading."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise AlambicError(f"model {which}: {folder} has no config.json (not a save_pretrained folder)")
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError) as exc:
        raise AlambicError(f"model {which}: {config_file} is not valid JSON: {exc}") from None
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise AlambicError(
            f"model {which}: {folder} holds a {', '.join(architectures)}, not a sequence classifier "
            f"(compare needs two trained classifiers)"
        )


def _check_data_labels(model: Any, data_labels: list[str], who: str) -> None:
    labels = label_names(model)
    if len(labels) != len(data_labels):
        raise AlambicError(
            f"{who} has {len(labels)} labels {labels} but the data has {len(data_labels)}: {data_labels}"
        )
    if labels != [f"LABEL_{i}" for i in range(len(labels))] and labels != data_labels:  # named: check
        raise AlambicError(f"{who} has labels {labels} but the data's labels are {data_labels}")


def _saved_tokenizer(folders: Sequence[Path]) -> tuple[Any, str]:
    """The tokenizer saved in the first folder that has one; (None, "") when none has."""
    from transformers import AutoTokenizer

    found = []
    for folder in folders:
        if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            try:
                found.append((AutoTokenizer.from_pretrained(str(folder)), str(folder)))
            except (OSError, ValueError) as exc:
                raise AlambicError(f"{folder}: its saved tokenizer cannot be loaded: {exc}") from None
    if len(found) == 2 and found[0][0].get_vocab() != found[1][0].get_vocab():
        raise AlambicError(
            f"the tokenizers saved in {found[0][1]} and {found[1][1]} have different vocabularies: "
            f"the models do not read the same token ids"
        )
    return found[0] if found else (None, "")


def _tokenize(ds: Dataset, tokenizer: Any, max_length: int) -> Dataset:
    from datasets import Dataset

    enc = tokenizer(column(ds, "text"), truncation=True, max_length=max_length)
    cols = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return Dataset.from_dict(cols | {"label": column(ds, "label")})


# --- report -----------------------------------------------------------------------------------


def format_report(result: dict[str, Any]) -> list[Table]:
    """Two rich tables: A, B and B - A metric by metric (the accuracy flag in red), then the layer
    pairs with their CKA and attention KL. Narrow: one column per model, one row per metric."""
    a, b = result["models"]["a"], result["models"]["b"]
    diff, lat = result["accuracy_diff"], result["latency"]
    flag = (f"[bold red]{diff['points']:+.2f} pt  FLAG: > {diff['threshold']:g}[/bold red]" if diff["flag"]
            else f"[green]{diff['points']:+.2f} pt  ok[/green]")
    summary = Table("", "A", "B", "B - A", title=f"A vs B on {result['examples']:,} examples",
                    caption=f"latency: batch 1, {lat['length']} tokens, {lat['torch_threads']} torch "
                    "thread(s); peak RSS: a fresh process loading the folder and running once "
                    "(+ what it added after the imports)")

    def row(name: str, fmt: Any, change: str = "") -> None:
        summary.add_row(name, fmt(a), fmt(b), change)

    row("model", lambda m: escape(m["name"]))
    row("type", lambda m: f"{m['model_type']}, {m['layers']} layers x {m['hidden']}, {m['heads']} heads")
    row("accuracy", lambda m: f"{m['accuracy']:.2%}", flag)
    row("macro-F1", lambda m: f"{m['macro_f1']:.4f}", f"{b['macro_f1'] - a['macro_f1']:+.4f}")
    summary.add_row("agreement", "", "", f"{result['agreement']:.1%} same predictions")
    for q in ("p50", "p90"):
        row(f"latency {q} ms", lambda m, q=q: f"{m['latency_ms'][q]:.2f}",
            _ratio(b["latency_ms"][q], a["latency_ms"][q]))
    row("params", lambda m: f"{m['params']:,}", _ratio(b["params"], a["params"]))
    row("weights MiB", lambda m: _mib(m["memory"]["total_bytes"]),
        _ratio(b["memory"]["total_bytes"], a["memory"]["total_bytes"]))
    if "peak_rss_bytes" in a["memory"] and "peak_rss_bytes" in b["memory"]:
        row("peak RSS MiB", lambda m: f"{_mib(m['memory']['peak_rss_bytes'])} "
            f"(+{_mib(m['memory']['peak_rss_bytes'] - m['memory']['baseline_rss_bytes'])})")

    layers = Table(title="layer by layer (uniform map; 0 = embeddings)",
                   caption="CKA: linear, of mean-pooled hidden states (1 = same up to rotation and "
                   "scale); KL: attention KL(A || B), head-averaged (0 = same)")
    for header in ("A layer", "B layer", "CKA", "KL"):
        layers.add_column(header, justify="right")
    for r in result["layers"]:
        layers.add_row(_layer(r["a"]), _layer(r["b"]), _number(r["cka"]), _number(r["attention_kl"]))
    return [summary, layers]


def _ratio(new: float, old: float) -> str:
    return f"x {new / old:.2f}" if old else ""


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _layer(i: int) -> str:
    return "emb" if i == 0 else str(i)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
