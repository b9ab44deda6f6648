"""One distillation epoch, three ways, side by side in one run (CPU by default).

    python benchmarks/distill_throughput.py [--examples 1024] [--max-length 32] [--batch-size 32]

Teacher: bert-base-chinese's architecture from config (random weights: speed does not depend on
them). Student: roberta-l4, full size. Data: the first THUCNews training headlines.

  online   the teacher runs every step, every batch padded to max_length (the seeds' recipe)
  cached   teacher logits read from the cache (computed once, timed apart), padded to max_length
  bucketed cached logits, length-bucketed batches with dynamic padding (alambic's default)
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertForSequenceClassification

from alambic import machine
from alambic.config import load_config
from alambic.data import load_data, prepare_tokenizer
from alambic.losses import kd_loss
from alambic.manager import build_registry
from alambic.models import teacher_config
from alambic.plugins.students import RobertaL4
from alambic.training import MODEL_INPUTS, collate, fast_cpu_math, global_batches, predict, shard


def headlines(config_path: str, examples: int, max_length: int):
    logging.getLogger("alambic.data").setLevel(logging.ERROR)
    registry = build_registry()
    config = load_config(config_path, registry=registry)
    dsd, _ = load_data(config.data, registry)
    train = dsd["train"].select(range(examples))
    tokenizer = prepare_tokenizer(config.tokenizer, dsd)

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {**enc, "length": [len(i) for i in enc["input_ids"]]}

    return train.map(encode, batched=True, remove_columns=["text"]), tokenizer


def epoch_seconds(student, teacher, data, batch_size, *, cached_logits, pad_to):
    """Time one epoch of KD steps (forward, loss, backward, AdamW)."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student.train()
    tokens = 0
    start = time.perf_counter()
    for batch_rows in global_batches(data["length"], batch_size, seed=0, epoch=0, bucket=pad_to is None):
        rows = shard(batch_rows, 0, 1)
        batch = collate(data[rows.tolist()])
        if pad_to is not None:  # pad every batch to max_length, as a fixed-shape pipeline does
            batch = {k: torch.nn.functional.pad(v, (0, pad_to - v.shape[1])) if v.dim() == 2 else v
                     for k, v in batch.items()}
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        tokens += int(inputs["input_ids"].numel())
        if cached_logits is None:
            with torch.no_grad():
                teacher_out = teacher(**inputs).logits
        else:
            teacher_out = cached_logits[torch.as_tensor(rows)]
        loss = kd_loss(student(**inputs).logits, teacher_out, batch["labels"], 4.0, 0.7)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    data, tokenizer = headlines(args.config, args.examples, args.max_length)
    fast_cpu_math()  # as alambic's training loop does
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(teacher_config(10, vocab_size=len(tokenizer))).eval()
    initial = RobertaL4.build(10).state_dict()

    start = time.perf_counter()
    rows, logits = predict(teacher, data, batch_size=64)
    cache_s = time.perf_counter() - start
    cached = torch.zeros(len(data), logits.shape[1])
    cached[torch.as_tensor(rows)] = torch.from_numpy(logits)

    results = {}
    for name, use_cache, pad_to in [("online", False, args.max_length), ("cached", True, args.max_length),
                                    ("bucketed", True, None)]:
        student = RobertaL4.build(10)
        student.load_state_dict(initial)  # the same start for every variant
        seconds, tokens = epoch_seconds(student, teacher, data, args.batch_size,
                                        cached_logits=cached if use_cache else None, pad_to=pad_to)
        results[name] = (seconds, tokens)
        print(f"  {name:<9} {seconds:8.1f} s  {tokens:>8,} tokens  {tokens / seconds:8,.0f} tokens/s", flush=True)

    print(f"machine: {machine.summary()}, torch threads {torch.get_num_threads()}")
    print(f"{args.examples} headlines, max_length {args.max_length}, batch {args.batch_size}")
    print(f"teacher logits, once: {cache_s:.1f} s")
    online = results["online"][0]
    for name, (seconds, _) in results.items():
        print(f"{name:<9} epoch {seconds:7.1f} s   speed-up vs online {online / seconds:5.2f}x")


if __name__ == "__main__":
    main()
