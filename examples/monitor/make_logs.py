"""Prediction logs as an app would write them, made with an exported bundle's ONNX model, for
`alambic monitor` to read: one JSON object a line, `timestamp`, `label`, `confidence`, `text`.

    python examples/monitor/make_logs.py /tmp/thuc-monitor ../shared/data/thucnews-title/test.txt --out /tmp/logs
    alambic monitor /tmp/thuc-monitor /tmp/logs/no-drift.jsonl           # exit 0: no drift
    alambic monitor /tmp/thuc-monitor /tmp/logs/shifted.jsonl            # exit 1: drift flagged

- ``no-drift.jsonl``: every test headline (a TSV of headline<TAB>label id), in a seeded random order
  (the file is grouped by class, a day of traffic is not), one prediction every 30 s from
  2024-05-01T00:00:00Z;
- ``shifted.jsonl``: only the headlines of three classes (``--classes``, default 体育,娱乐,游戏), as
  a stream that lost the other seven would be, from 2024-05-05.

It needs only what an app needs: the bundle's ``onnx/model.onnx`` and ``onnx/tokenizer.json``
(onnxruntime, tokenizers, numpy); ONNX Runtime runs on one thread. ``--smoke-test`` scores 300 rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

START = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
SHIFTED_START = dt.datetime(2024, 5, 5, tzinfo=dt.timezone.utc)
EVERY = dt.timedelta(seconds=30)


def load_model(bundle: Path) -> tuple[ort.InferenceSession, Tokenizer, list[str]]:
    """The ONNX session (one thread, as alambic measures it), the tokenizer, the label names."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(bundle / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["SkipLayerNormFusion"])
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["meta"]
    tokenizer = Tokenizer.from_file(str(bundle / "onnx" / "tokenizer.json"))
    special = json.loads((bundle / "onnx" / "special_tokens_map.json").read_text(encoding="utf-8"))
    pad = special["pad_token"]["content"] if isinstance(special["pad_token"], dict) else special["pad_token"]
    tokenizer.enable_truncation(int(manifest["max_length"]))
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad)
    return session, tokenizer, list(manifest["labels"])


def predict(session: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str],
            batch: int = 64) -> tuple[list[int], list[float]]:
    """(predicted label index, confidence = largest softmax probability) per text."""
    names = {i.name for i in session.get_inputs()}
    labels, confidences = [], []
    for start in range(0, len(texts), batch):
        encoded = tokenizer.encode_batch(texts[start:start + batch])
        feed = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        logits = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        labels += probs.argmax(-1).tolist()
        confidences += probs.max(-1).tolist()
    return labels, confidences


def write_log(path: Path, texts: list[str], labels: list[int], confidences: list[float], names: list[str],
              start: dt.datetime) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (text, label, confidence) in enumerate(zip(texts, labels, confidences)):
            stamp = (start + i * EVERY).isoformat().replace("+00:00", "Z")
            row = {"timestamp": stamp, "label": names[label], "confidence": round(confidence, 5), "text": text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the exported bundle (alambic export --format onnx)")
    parser.add_argument("test", type=Path, help="the test split: headline<TAB>label id per line")
    parser.add_argument("--out", type=Path, required=True, help="folder for no-drift.jsonl and shifted.jsonl")
    parser.add_argument("--classes", default="体育,娱乐,游戏", help="the shifted stream's three classes")
    parser.add_argument("--smoke-test", action="store_true", help="score 300 rows only")
    args = parser.parse_args()
    session, tokenizer, names = load_model(args.bundle)
    rows = [line.rstrip("\n").split("\t") for line in args.test.read_text(encoding="utf-8").splitlines() if line]
    random.Random(0).shuffle(rows)
    rows = rows[:300] if args.smoke_test else rows
    texts, truth = [r[0] for r in rows], [int(r[1]) for r in rows]
    labels, confidences = predict(session, tokenizer, texts)
    args.out.mkdir(parents=True, exist_ok=True)
    write_log(args.out / "no-drift.jsonl", texts, labels, confidences, names, START)
    kept = {names.index(c) for c in args.classes.split(",")}
    picked = [i for i, y in enumerate(truth) if y in kept]
    write_log(args.out / "shifted.jsonl", [texts[i] for i in picked], [labels[i] for i in picked],
              [confidences[i] for i in picked], names, SHIFTED_START)
    accuracy = sum(int(p == y) for p, y in zip(labels, truth)) / len(truth)
    print(f"{len(rows):,} test rows scored (accuracy {accuracy:.4f}): {args.out / 'no-drift.jsonl'}; "
          f"{len(picked):,} rows of {args.classes}: {args.out / 'shifted.jsonl'}")


if __name__ == "__main__":
    main()
