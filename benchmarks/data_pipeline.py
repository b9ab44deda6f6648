"""Data pipeline timings on THUCNews: parse the files, tokenize cold, tokenize from the cache.

    python benchmarks/data_pipeline.py [--config examples/thucnews.yaml] [--repeats 3]

Prints one table; every figure comes from this run, so the ratios are side by side.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from alambic import machine
from alambic.config import load_config
from alambic.data.dataset import load_data
from alambic.data.tokenize import prepare_tokenizer, tokenize_data
from alambic.manager import build_registry


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/thucnews.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    logging.getLogger("alambic.data").setLevel(logging.ERROR)  # the duplicate warning, once per load
    registry = build_registry()
    config = load_config(args.config, registry=registry)
    load_s, (dsd, report) = timed(lambda: load_data(config.data, registry), args.repeats)
    tokenizer = prepare_tokenizer(config.tokenizer, dsd)
    rows = sum(len(split) for split in dsd.values())
    max_length = config.tokenizer.max_length

    def cold() -> None:
        with tempfile.TemporaryDirectory() as cache:
            tokenize_data(dsd, tokenizer, max_length, Path(cache), report.fingerprint)

    cold_s, _ = timed(cold, args.repeats)
    with tempfile.TemporaryDirectory() as cache:
        tokenize_data(dsd, tokenizer, max_length, Path(cache), report.fingerprint)
        warm_s, _ = timed(lambda: tokenize_data(dsd, tokenizer, max_length, Path(cache), report.fingerprint),
                          args.repeats)

    print(f"machine: {machine.summary()}")
    print(f"rows: {rows:,} ({', '.join(f'{k} {len(v):,}' for k, v in dsd.items())}), max_length {max_length}")
    print(f"{'step':<28}{'median s':>10}{'rows/s':>12}")
    for name, seconds in [("parse + split files", load_s), ("tokenize (cold)", cold_s),
                          ("tokenize (cache hit)", warm_s)]:
        print(f"{name:<28}{seconds:>10.3f}{rows / seconds:>12,.0f}")
    print(f"cache hit is {cold_s / warm_s:.0f}x faster than tokenizing")


if __name__ == "__main__":
    main()
