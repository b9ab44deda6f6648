"""TextPruner's side of the pruning comparison; runs in the textpruner environment (no alambic there).

Inputs (JSON): the student folder, the split files, the pad id, the validation rows of each
importance batch (alambic's, so both tools score heads and neurons on the same rows), the
TransformerPruner targets to reach and its recipe (``TransformerPruningConfig`` options), the
train and test texts, threads, and a work folder. Each target loads the student afresh and prunes
it; VocabularyPruner keeps the tokens the train texts use.
Each saves as TextPruner saves (``pytorch_model.bin`` + ``config.json``); alambic loads and scores
the folders. A failure gives ``{"error": ...}`` for that item, the others go on.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # exchange, beside this script

from exchange import Split, finish, io  # noqa: E402


def classification_loss(outputs: Any) -> Any:
    """TextPruner's adaptor: the model's cross-entropy on the batch labels (the same loss alambic's
    importance differentiates)."""
    return outputs.loss


def importance_batches(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """alambic's importance batches, row for row, padded as alambic pads them; a list, since
    TextPruner takes ``len`` of its dataloader."""
    import torch

    split = Split(inputs["splits"]["validation"])
    return [{k: torch.from_numpy(v) for k, v in split.batch(rows, inputs["pad_id"]).items()}
            for rows in inputs["importance_rows"]]


def error(exc: BaseException) -> dict[str, str]:
    """An item that failed: the exception and where it was raised (the row says why)."""
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return {"error": f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"}


def transformer(inputs: dict[str, Any], target: dict[str, Any], batches: list[dict[str, Any]]) -> dict[str, Any]:
    """One TransformerPruner run to ``target`` (heads per layer, FFN width), saved by TextPruner."""
    from textpruner import GeneralConfig, TransformerPruner, TransformerPruningConfig
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(inputs["student"])
    config = TransformerPruningConfig(target_ffn_size=target["ffn"], target_num_of_heads=target["heads"],
                                      **inputs["recipe"])
    out = Path(inputs["work"]) / f"transformer-H{target['heads']}F{target['ffn']}"
    pruner = TransformerPruner(model, transformer_pruning_config=config,
                               general_config=GeneralConfig(use_device="cpu", output_dir=str(out)))
    start = time.perf_counter()
    folder = pruner.prune(dataloader=batches, adaptor=classification_loss, save_model=True)
    wall = time.perf_counter() - start
    return {"dir": str(Path(folder).resolve()), "wall_s": wall, "config": {k: v for k, v in vars(config).items()},
            "heads_per_layer": [int(n) for n in pruner.head_mask.sum(-1).tolist()],
            "ffn_per_layer": [int(n) for n in pruner.ffn_mask.sum(-1).tolist()]}


def vocabulary(inputs: dict[str, Any]) -> dict[str, Any]:
    """VocabularyPruner on the train texts (TextPruner's way: ``dataiter`` of raw strings), and
    whether the tokenizer it writes reloads as the model's own."""
    from textpruner import GeneralConfig, VocabularyPruner, VocabularyPruningConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(inputs["student"])
    tokenizer = AutoTokenizer.from_pretrained(inputs["student"])
    texts = json.loads(Path(inputs["texts"]).read_text(encoding="utf-8"))
    out = Path(inputs["work"]) / "vocabulary"
    pruner = VocabularyPruner(model, tokenizer, VocabularyPruningConfig(min_count=1),
                              GeneralConfig(use_device="cpu", output_dir=str(out)))
    start = time.perf_counter()
    folder = pruner.prune(dataiter=texts["train"], save_model=True)
    wall = time.perf_counter() - start
    kept = [int(i) for i in pruner.pruned_token_ids]
    return {"dir": str(Path(folder).resolve()), "wall_s": wall, "kept_ids": kept,
            "saved_files": sorted(p.name for p in Path(folder).iterdir()),
            "tokenizer_reload": reload_check(folder, tokenizer, kept, texts["test"])}


def reload_check(folder: str, tokenizer: Any, kept: list[int], texts: list[str]) -> str:
    """Load the folder's tokenizer as a user would (``AutoTokenizer``) and compare its ids on the
    test texts with the original tokenizer's ids mapped to the kept vocabulary."""
    from transformers import AutoTokenizer

    try:
        reloaded = AutoTokenizer.from_pretrained(folder)
        new_id = {old: new for new, old in enumerate(kept)}
        unk = new_id[tokenizer.unk_token_id]
        same = sum([new_id.get(i, unk) for i in tokenizer.encode(t)] == reloaded.encode(t) for t in texts)
    except Exception as exc:  # noqa: BLE001 - whatever it raises is the finding
        return f"does not reload: {error(exc)['error']}"
    return (f"reloads as {type(reloaded).__name__} ({len(reloaded)} tokens); same ids as the model's "
            f"tokenizer on {same}/{len(texts)} test texts")


def main() -> None:
    inputs, result_path = io()
    import torch

    torch.set_num_threads(inputs["threads"])
    torch.manual_seed(0)
    result: dict[str, Any] = {"transformer": []}
    try:
        batches = importance_batches(inputs)
    except Exception as exc:  # noqa: BLE001
        batches, failed = None, error(exc)
    for target in inputs["targets"]:
        try:
            found = transformer(inputs, target, batches) if batches is not None else failed
        except Exception as exc:  # noqa: BLE001 - a row saying why
            traceback.print_exc()
            found = error(exc)
        result["transformer"].append({"target": target, **found})
    try:
        result["vocabulary"] = vocabulary(inputs)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        result["vocabulary"] = error(exc)
    finish(result, result_path)


if __name__ == "__main__":
    main()
