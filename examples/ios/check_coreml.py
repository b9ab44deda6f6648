"""Check an export's Core ML models on macOS: same labels and close probabilities as ONNX / PyTorch.

Core ML predicts only on macOS; on Linux `alambic export` checks the specs and the export wrapper
in PyTorch. This script closes the loop where Core ML runs::

    pip install coremltools onnxruntime tokenizers transformers torch   # what the bundle uses
    python examples/ios/check_coreml.py artifacts/<run>/export            # 20 test texts
    python examples/ios/check_coreml.py artifacts/<run>/export --texts headlines.txt --rows 200
    python examples/ios/check_coreml.py artifacts/<run>/export --smoke-test   # 3 texts; Linux: specs only

For each text: tokenize with the shipped ``coreml/tokenizer.json`` (as the app does), predict with
``Classifier.mlpackage`` (int32 inputs) and ``UpdatableClassifier.mlmodel`` (Float32 inputs), and
compare with ``onnx/model.onnx`` in ONNX Runtime and ``hf/`` in PyTorch where the bundle has them.
Exit code 1 when a label differs on more than ``--max-disagreement`` of the rows; 2 where Core ML
cannot predict (not macOS; with ``--smoke-test`` that is 0 once the specs load).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

DEFAULT_TEXTS = ["中国女排3比0横扫对手晋级决赛", "央行宣布下调存款准备金率0.5个百分点",
                 "苹果发布新一代芯片性能提升40%", "国足主帅公布最新一期集训名单",
                 "A股三大指数集体收涨 券商板块领涨", "研究人员发现新型超导材料",
                 "新版高考方案公布 多地取消文理分科", "电影票房突破50亿创下新纪录"]


def encode(tokenizer, text: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, T) ids and mask, as the app builds them: [CLS] text [SEP], cut to max_length."""
    ids = tokenizer.encode(text).ids[:max_length]
    if ids[-1] != tokenizer.token_to_id("[SEP]"):
        ids[-1] = tokenizer.token_to_id("[SEP]")  # truncated: keep the closing [SEP]
    return np.array([ids], dtype=np.int32), np.ones((1, len(ids)), dtype=np.int32)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def references(bundle: Path):
    """Functions (ids, mask) -> probabilities for ONNX Runtime and PyTorch, when the bundle has them."""
    found = {}
    if (bundle / "onnx" / "model.onnx").is_file():
        import onnxruntime as ort

        session = ort.InferenceSession(str(bundle / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(ids, mask):
            feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                     "token_type_ids": np.zeros_like(ids, dtype=np.int64)}
            return softmax(session.run(["logits"], {n: feeds[n] for n in names})[0])[0]

        found["onnx"] = run_onnx
    if (bundle / "hf" / "model.safetensors").is_file():
        import torch
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(bundle / "hf").eval()

        def run_torch(ids, mask):
            with torch.no_grad():
                return softmax(model(input_ids=torch.from_numpy(ids).long(),
                                     attention_mask=torch.from_numpy(mask).long()).logits.numpy())[0]

        found["pytorch"] = run_torch
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the export folder (coreml/, onnx/, hf/)")
    parser.add_argument("--texts", type=Path, help="a UTF-8 file, one text per line (default: 8 headlines)")
    parser.add_argument("--rows", type=int, default=20, help="at most this many texts")
    parser.add_argument("--max-disagreement", type=float, default=0.005, help="share of rows a label may differ")
    parser.add_argument("--smoke-test", action="store_true", help="3 texts; without macOS, only load the specs")
    args = parser.parse_args()

    import coremltools as ct
    from tokenizers import Tokenizer

    folder = args.bundle / "coreml"
    classifier_path, updatable_path = folder / "Classifier.mlpackage", folder / "UpdatableClassifier.mlmodel"
    on_mac = platform.system() == "Darwin"
    spec = ct.models.MLModel(str(classifier_path), skip_model_load=True).get_spec()
    meta = spec.description.metadata.userDefined
    labels, max_length = json.loads(meta["labels"]), int(meta["max_length"])
    print(f"{classifier_path.name}: {len(labels)} labels, up to {max_length} tokens; updatable: "
          f"{updatable_path.is_file()}")
    if not on_mac:
        print("Core ML predicts only on macOS: specs loaded, nothing predicted")
        return 0 if args.smoke_test else 2

    texts = args.texts.read_text(encoding="utf-8").splitlines() if args.texts else DEFAULT_TEXTS
    texts = [t for t in texts if t.strip()][: 3 if args.smoke_test else args.rows]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # one text at a time, at its own length, as the app sends it
    tokenizer.no_truncation()  # encode() cuts to max_length and keeps the [SEP]
    models = {"Classifier": ct.models.MLModel(str(classifier_path))}
    if updatable_path.is_file():
        models["UpdatableClassifier"] = ct.models.MLModel(str(updatable_path))
    refs = references(args.bundle)
    disagree = {f"{m} vs {r}": 0 for m in models for r in refs}
    diffs = {key: 0.0 for key in disagree}
    for text in texts:
        ids, mask = encode(tokenizer, text, max_length)
        expected = {name: run(ids, mask) for name, run in refs.items()}
        for name, model in models.items():
            dtype = np.float32 if name == "UpdatableClassifier" else np.int32  # neural networks take Float32
            out = model.predict({"input_ids": ids.astype(dtype), "attention_mask": mask.astype(dtype)})
            probs = np.array([out["label_probs"][label] for label in labels])
            for ref, want in expected.items():
                key = f"{name} vs {ref}"
                disagree[key] += int(out["label"] != labels[int(want.argmax())])
                diffs[key] = max(diffs[key], float(np.abs(probs - want).max()))
    worst = 0.0
    for key in disagree:
        share = disagree[key] / len(texts)
        worst = max(worst, share)
        print(f"{key}: labels agree on {1 - share:.1%} of {len(texts)}, max |probability diff| {diffs[key]:.4f}")
    return 1 if worst > args.max_disagreement else 0


if __name__ == "__main__":
    sys.exit(main())
