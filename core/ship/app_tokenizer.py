"""The tokenizer an iOS app loads: the model's own files, test vectors, and what can be checked here.

An app tokenizes with Hugging Face's ``swift-transformers`` (``AutoTokenizer.from(modelFolder:)``),
which reads ``tokenizer.json`` and ``tokenizer_config.json`` as the Python side saved them: the
class in ``tokenizer_config.json`` picks its model (``BertTokenizer``: WordPiece;
``XLMRobertaTokenizer``: SentencePiece Unigram), ``tokenizer.json`` its normalizer, pre-tokenizer,
post-processor and decoder. :func:`write_vectors` adds ``tokenizer_vectors.json``: texts and the
ids the model's Python tokenizer gives them (Chinese, Latin with accents, digits, full-width
punctuation, emoji, control characters, a text longer than the maximum length), which the XCTest
in ``examples/ios/TokenizerCheck`` compares with the app's tokenizer on a Mac.

Here (Linux, no Swift) the checks are: the files name a class and components that
swift-transformers implements (:data:`SWIFT_TRANSFORMERS`, read from its source), and the vectors
come back from ``tokenizers`` given the bundle's ``tokenizer.json`` alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alambic.ship.exporter import NEEDS_A_MAC, RUNTIME, STRUCTURE, Check

VECTORS_FILE = "tokenizer_vectors.json"
#: what huggingface/swift-transformers implements (Sources/Tokenizers at eec09bd, the revision that
#: examples/ios/TokenizerCheck pins; read 2026-12-06): the tokenizer classes it maps to the model
#: type of tokenizer.json, and each component's types (any other type is a fatalError there)
SWIFT_TRANSFORMERS = {
    "classes": {"BertTokenizer": "WordPiece", "DistilBertTokenizer": "WordPiece", "XLMRobertaTokenizer": "Unigram"},
    "normalizer": {"Sequence", "Prepend", "Replace", "Lowercase", "NFD", "NFC", "NFKD", "NFKC", "Bert",
                   "BertNormalizer", "Precompiled", "StripAccents", "Strip"},
    "pre_tokenizer": {"Sequence", "ByteLevel", "Punctuation", "Digits", "Split", "Whitespace", "WhitespaceSplit",
                      "Metaspace", "BertPreTokenizer"},
    "post_processor": {"TemplateProcessing", "ByteLevel", "RobertaProcessing", "BertProcessing", "Sequence"},
    "decoder": {"Sequence", "WordPiece", "ByteLevel", "Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"},
}
#: the parts of each component holding nested components of the same kind
_NESTED = ("normalizers", "pretokenizers", "processors", "decoders")
VECTOR_TEXTS = (
    "中国女排3比0横扫对手晋级决赛",  # Chinese and digits
    "央行宣布下调存款准备金率0.5个百分点",
    "苹果发布iPhone 16，售价5999元起！",  # Latin, full-width punctuation
    "（新华社）“双十一”成交额创新高？",
    "Café naïve ÜBER façade",  # accents, upper case
    "ＡＢＣ１２３　全角字母和数字",  # full-width letters, digits and space
    "今天心情很好😀👍🎉",  # emoji
    "tab\there\u200bzero width\u00a0no-break",  # control, zero-width and no-break characters
    "据报道，" + "这是一条很长的新闻标题" * 12,  # longer than the maximum length: truncated
)


def write_vectors(tokenizer: Any, folder: Path, max_length: int) -> Path:
    """``tokenizer_vectors.json`` in ``folder``: each of :data:`VECTOR_TEXTS` and its ids from
    ``tokenizer`` (the model's own, as training used it), truncated to ``max_length``."""
    vectors = [{"text": text, "ids": tokenizer(text, truncation=True, max_length=max_length)["input_ids"]}
               for text in VECTOR_TEXTS]
    found = {"max_length": max_length,
             "truncation": "a longer text keeps its first max_length - 1 ids and its last (the closing special)",
             "vectors": vectors}
    path = folder / VECTORS_FILE
    path.write_text(json.dumps(found, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def swift_check(folder: Path) -> Check:
    """tokenizer_config.json names a class swift-transformers loads, of tokenizer.json's model type,
    and every component of tokenizer.json is of a type it implements."""
    name = "tokenizer files load in swift-transformers (class and component types)"
    config_path, data_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not config_path.is_file() or not data_path.is_file():
        return Check(name, False, "tokenizer_config.json and tokenizer.json are both needed")
    tokenizer_class = json.loads(config_path.read_text(encoding="utf-8")).get("tokenizer_class") or ""
    data = json.loads(data_path.read_text(encoding="utf-8"))
    problems = _class_problems(tokenizer_class.replace("Fast", ""), data["model"]["type"])
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        problems += [f"{part} {t}" for t in _types(data.get(part)) if t not in SWIFT_TRANSFORMERS[part]]
    shown = f"{tokenizer_class} / {data['model']['type']}"
    return Check(name, not problems, f"{shown}; unsupported: {', '.join(problems)}" if problems else shown,
                 {"tokenizer_class": tokenizer_class, "model": data["model"]["type"], "unsupported": problems},
                 covers=STRUCTURE)


def _class_problems(tokenizer_class: str, model: str) -> list[str]:
    expected = SWIFT_TRANSFORMERS["classes"].get(tokenizer_class)
    if expected is None:
        return [f"tokenizer_class {tokenizer_class or '(none)'}"]
    return [] if expected == model else [f"{tokenizer_class} reads {expected}, tokenizer.json holds {model}"]


def _types(component: dict[str, Any] | None) -> list[str]:
    if not component:
        return []
    nested = [c for key in _NESTED for c in component.get(key) or []]
    return [component["type"], *(t for c in nested for t in _types(c))]


def vectors_check(folder: Path) -> Check:
    """The vectors come back from ``tokenizers`` with the bundle's tokenizer.json alone."""
    from tokenizers import Tokenizer

    found = json.loads((folder / VECTORS_FILE).read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(found["max_length"])
    wrong = [v["text"] for v in found["vectors"] if tokenizer.encode(v["text"]).ids != v["ids"]]
    count = len(found["vectors"])
    return Check("tokenizer_vectors.json from tokenizer.json alone (Python tokenizers)", not wrong,
                 f"{count - len(wrong)} of {count} texts" + (f"; differ: {wrong[:3]}" if wrong else ""),
                 {"texts": count, "differ": wrong}, covers=RUNTIME)


def app_check() -> Check:
    return Check("the app's tokenizer (swift-transformers) gives tokenizer_vectors.json", None,
                 "on a Mac: cd examples/ios/TokenizerCheck && BUNDLE_FOLDER=<bundle>/coreml swift test",
                 covers=NEEDS_A_MAC)
