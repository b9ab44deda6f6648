"""Core ML packages scored as shipped: their weights read back and scored at fp16 compute, on the
validation and test splits of a run.

    cd examples && python ../benchmarks/coreml_scored.py thucnews.yaml \
        --model artifacts/thucnews/stages/<key>/model PACKAGE.mlpackage [PACKAGE.mlpackage ...]

``--model`` is the folder the packages were converted from (its config, its tokenizer): each
package's weights are read out of its saved program (``alambic.ship.coreml_scoring.read_back``:
int8, int4, look-up tables and sparse weights decompressed as Core ML does at load), loaded into
that model's export wrapper (standard layout) and scored in PyTorch at fp16 compute
(``as_shipped``). Prints one Markdown row per package: its forms, validation and test accuracy on
every row of both splits, and its size. The Core ML runtime's own kernels are not measured (that
needs a Mac: examples/ios/check_coreml.py).
"""

from __future__ import annotations

import argparse
import time

from transformers import AutoModelForSequenceClassification

from alambic import machine
from alambic.run import RunContext
from alambic.ship.coreml_export import package_bytes
from alambic.ship.coreml_scoring import as_shipped, read_back
from alambic.train.loop import evaluate
from alambic.train.models import load_pretrained, own_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the run config whose validation and test splits to score on")
    parser.add_argument("packages", nargs="+", help="Classifier.mlpackage folders converted from --model")
    parser.add_argument("--model", required=True, help="the save_pretrained folder the packages were converted from")
    args = parser.parse_args()

    ctx = RunContext.open(args.config, quiet=True)
    model = load_pretrained(args.model, AutoModelForSequenceClassification).eval()
    tokenizer = own_tokenizer(args.model) or ctx.prepared.tokenizer
    splits, _ = ctx.tokenize(tokenizer)
    print(f"machine: {machine.summary()}; model {args.model}")
    print("| package | forms | validation | test | size MB | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for package in args.packages:
        start = time.perf_counter()
        read = read_back(package)
        shipped = as_shipped(model, read)
        scores = {name: evaluate(shipped, splits[name])["accuracy"] for name in ("validation", "test")}
        forms = ", ".join(sorted(set(read.forms.values()))) or "fp16"
        print(f"| {package} | {forms} | {scores['validation']:.4f} | {scores['test']:.4f} | "
              f"{package_bytes(package) / 1e6:.2f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
