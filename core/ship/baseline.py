"""The monitoring baseline: what an exported model's production predictions will be compared with.

``export`` writes ``baseline.json`` into the bundle; ``alambic monitor`` (:mod:`alambic.report.monitor`)
reads it and bins each window of the app's prediction logs exactly as the baseline was binned, with the
same counters (:class:`PredictionCounts`, :class:`InputCounts`), so that PSI over the bins is defined::

    write_baseline(bundle_tmp, source, golden=golden_split)    # inside export_stage's scratch folder
    baseline = read_baseline(bundle)                           # checked; AlambicError naming the file
    counts = PredictionCounts.empty(len(labels)); counts.add(label_index, confidence)
    inputs = InputCounts.empty(max_length); inputs.add(encoder.encode(texts))

Per split (``test``: the rows export verifies on, a seeded sample of up to ``--max-examples``;
``golden``: ``data.golden`` when the run has one), the source model (PyTorch, fp32) predicts each row:

- predicted-label shares (counts per label, in label order);
- the confidence (the largest softmax probability): its mean and a histogram of
  :data:`CONFIDENCE_BINS` equal bins on [0, 1];
- the inputs, from the texts: the token-length histogram (the tokens the model sees, ``[CLS]`` and
  ``[SEP]`` included, after truncation at ``max_length``, in :data:`LENGTH_BINS` bins of equal width),
  the ``[UNK]`` rate (unknown tokens among the text's own tokens, before truncation) and the share of
  texts longer than ``max_length`` (truncated).

The model's identity: ``stage`` is the compress stage's key (record.json's ``key``, which is also its
manifest's ``config_hash``: the hash of everything that made it) and ``digest`` the hash of the stage's
file hashes as its manifest lists them (:func:`alambic.fingerprint.model_digest`): the weights shipped.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic.errors import AlambicError
from alambic.fingerprint import model_digest

if TYPE_CHECKING:
    import numpy as np

    from alambic.ship.exporter import ExportSource

log = logging.getLogger(__name__)

BASELINE_FILE = "baseline.json"
VERSION = 1
#: equal bins of the confidence on [0, 1]; the top one holds 1.0
CONFIDENCE_BINS = 20
#: at most this many bins of equal width over token lengths 1..max_length
LENGTH_BINS = 16


# --- the counters the baseline and the monitor share ----------------------------------------


@dataclass
class PredictionCounts:
    """Predicted labels and confidences of a set of rows, as counts (they add up window by window)."""

    labels: list[int]
    confidence: list[int]  # CONFIDENCE_BINS bins on [0, 1]
    confidence_sum: float = 0.0
    rows: int = 0

    @classmethod
    def empty(cls, num_labels: int) -> PredictionCounts:
        return cls([0] * num_labels, [0] * CONFIDENCE_BINS)

    def add(self, label: int, confidence: float) -> None:
        self.labels[label] += 1
        self.confidence[min(int(confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
        self.confidence_sum += confidence
        self.rows += 1

    @property
    def confidence_mean(self) -> float | None:
        return self.confidence_sum / self.rows if self.rows else None

    def to_dict(self) -> dict[str, Any]:
        total = max(self.rows, 1)
        return {"rows": self.rows, "label_counts": self.labels, "label_shares": [c / total for c in self.labels],
                "confidence_mean": self.confidence_mean, "confidence_hist": self.confidence}


def length_width(max_length: int) -> int:
    """The width of a token-length bin: max_length 64 gives 16 bins of 4 (1-4, 5-8, ..., 61-64)."""
    return max(1, math.ceil(max_length / LENGTH_BINS))


@dataclass
class InputCounts:
    """Token lengths, [UNK] tokens and truncated texts of a set of texts, as counts."""

    max_length: int
    lengths: list[int]  # bins of length_width(max_length)
    texts: int = 0
    length_sum: int = 0
    tokens: int = 0  # the texts' own tokens (no [CLS]/[SEP]), before truncation
    unknown: int = 0
    truncated: int = 0

    @classmethod
    def empty(cls, max_length: int) -> InputCounts:
        return cls(max_length, [0] * math.ceil(max_length / length_width(max_length)))

    def add(self, encoded: list[tuple[int, int, int]]) -> None:
        """``encoded``: per text (tokens with specials, untruncated; own tokens; [UNK] among them)."""
        width = length_width(self.max_length)
        for full, own, unknown in encoded:
            seen = min(full, self.max_length)
            self.lengths[min(max(seen - 1, 0) // width, len(self.lengths) - 1)] += 1
            self.texts += 1
            self.length_sum += seen
            self.tokens += own
            self.unknown += unknown
            self.truncated += full > self.max_length

    def to_dict(self) -> dict[str, Any]:
        texts = max(self.texts, 1)
        return {"texts": self.texts, "length_hist": self.lengths, "length_width": length_width(self.max_length),
                "length_mean": self.length_sum / texts if self.texts else None,
                "unk_rate": self.unknown / self.tokens if self.tokens else 0.0,
                "truncated_share": self.truncated / texts if self.texts else None}


class TextEncoder:
    """The bundle's tokenizer (a ``tokenizers.Tokenizer``), untruncated, counting what InputCounts needs."""

    def __init__(self, tokenizer: Any):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        model = json.loads(tokenizer.to_str())["model"]
        unigram = model.get("type") == "Unigram"  # Unigram names its unknown piece by id, WordPiece by token
        unk = model.get("unk_id") if unigram else tokenizer.token_to_id(model.get("unk_token") or "")
        self.unk_id = -1 if unk is None else int(unk)

    @classmethod
    def from_file(cls, path: str | Path) -> TextEncoder:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> TextEncoder:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def encode(self, texts: list[str]) -> list[tuple[int, int, int]]:
        found = []
        for enc in self.tokenizer.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids  # [UNK] is the model's own token, never one the template adds
            found.append((len(ids), len(ids) - sum(enc.special_tokens_mask), ids.count(self.unk_id)))
        return found


# --- writing it -----------------------------------------------------------------------------


def build_baseline(source: ExportSource, golden: Any = None, tokenizer_file: str | None = None) -> dict[str, Any]:
    """The baseline as a JSON-ready dict: test (and golden) predictions and inputs, labels, identity."""
    encoder = TextEncoder.from_str(source.tokenizer.backend_tokenizer.to_str()) if source.tokenizer else None
    splits = {"test": _split(source, source.reference_logits, source.texts, encoder)}
    if golden is not None and len(golden):
        texts = [str(t) for t in golden["text"]]
        splits["golden"] = _split(source, _logits(source, texts), texts, encoder)
    return {"version": VERSION, "labels": list(source.labels), "max_length": source.max_length,
            "model": identity(source), "tokenizer": tokenizer_file,
            "scored_by": f"the source model in PyTorch (fp32); the bundle ships the {source.runtime} artifact",
            "bins": {"confidence": CONFIDENCE_BINS, "length_width": length_width(source.max_length)},
            "splits": splits}


def write_baseline(folder: Path, source: ExportSource, golden: Any = None) -> Path | None:
    """Write ``baseline.json`` into the bundle being built (after the formats: it names their
    tokenizer.json, which the monitor reads texts with); None, and a log line, without test rows."""
    if source.test is None:
        log.info("no test split given to export: the bundle has no monitoring baseline (%s)", BASELINE_FILE)
        return None
    tokenizer = next((p.relative_to(folder).as_posix() for p in sorted(folder.glob("*/tokenizer.json"))), None)
    path = folder / BASELINE_FILE
    baseline = build_baseline(source, golden, tokenizer)
    path.write_text(json.dumps(baseline, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def identity(source: ExportSource) -> dict[str, Any]:
    """Which model: the stage key (record.json ``key`` = its manifest's ``config_hash``) and the digest
    of its manifest's file hashes; a plain model folder has only the digest (of its files)."""
    return {"stage": source.record.get("key"), "digest": model_digest(source.stage_dir),
            "runtime": source.runtime, "quantizer": source.quantization.get("quantizer")}


def _split(source: ExportSource, logits: np.ndarray, texts: list[str] | None,
           encoder: TextEncoder | None) -> dict[str, Any]:
    import numpy as np

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    counts = PredictionCounts.empty(len(source.labels))
    for label, confidence in zip(probs.argmax(-1).tolist(), probs.max(-1).tolist()):
        counts.add(int(label), float(confidence))
    found: dict[str, Any] = {"predictions": counts.to_dict(), "inputs": None}
    if texts is not None and encoder is not None:
        inputs = InputCounts.empty(source.max_length)
        inputs.add(encoder.encode(texts))
        found["inputs"] = inputs.to_dict()
    return found


def _logits(source: ExportSource, texts: list[str]) -> np.ndarray:
    """The source model's logits on ``texts``, in their order (golden rows, tokenized as export does)."""
    import numpy as np
    from datasets import Dataset

    from alambic.train.loop import predict

    encoded = source.tokenizer(texts, truncation=True, max_length=source.max_length)
    columns = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
    columns |= {"length": [len(ids) for ids in encoded["input_ids"]], "label": [0] * len(texts)}
    rows, logits = predict(source.model, Dataset.from_dict(columns), batch_size=64)
    return logits[np.argsort(rows)]


# --- reading it -----------------------------------------------------------------------------


@dataclass
class Baseline:
    """``baseline.json`` read back: the reference split's counts, the labels, the tokenizer's path."""

    path: Path
    data: dict[str, Any]
    split: str = "test"
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = [str(n) for n in self.data["labels"]]

    @property
    def reference(self) -> dict[str, Any]:
        return self.data["splits"][self.split]

    @property
    def max_length(self) -> int:
        return int(self.data["max_length"])

    @property
    def tokenizer_path(self) -> Path | None:
        name = self.data.get("tokenizer")
        return self.path.parent / name if name and (self.path.parent / name).is_file() else None


def read_baseline(bundle: str | Path, split: str = "test") -> Baseline:
    """The bundle's baseline, against ``split``; AlambicError naming the file and what is missing."""
    folder = Path(bundle).expanduser()
    path = folder / BASELINE_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise AlambicError(f"{path}: no monitoring baseline; export the model again with this version of alambic "
                           f"(`alambic export RUN`, with the run's test split) to write one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        labels, splits = data["labels"], data["splits"]
        if data.get("version") != VERSION or not isinstance(labels, list) or not isinstance(splits, dict):
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
    except (ValueError, KeyError, TypeError) as exc:
        raise AlambicError(f"{path}: not a monitoring baseline alambic reads ({exc})") from exc
    if split not in splits:
        raise AlambicError(f"{path}: no '{split}' split in the baseline (it has {', '.join(splits)}); "
                           f"the golden split is there when the run's config sets data.golden")
    return Baseline(path, data, split)


__all__ = ["BASELINE_FILE", "CONFIDENCE_BINS", "LENGTH_BINS", "Baseline", "InputCounts", "PredictionCounts",
           "TextEncoder", "build_baseline", "identity", "length_width", "read_baseline", "write_baseline"]
