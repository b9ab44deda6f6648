"""plugins/pruners.py: each pruner shrinks the model physically (or sparsifies it), and the saved
model reloads with ``from_pretrained`` giving the in-memory pruned model's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from tokenizers import SentencePieceUnigramTokenizer, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram, WordLevel
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast, XLMRobertaTokenizerFast

from alambic.errors import AlambicError
from alambic.manager import build_registry
from alambic.train.models import load_pretrained
from alambic.plugins.pruners import (
    Ffn,
    Heads,
    Layers,
    Magnitude,
    Vocab,
    choose_heads,
    drop_layers,
    magnitude_prune,
    pruned_tokenizer,
)
from alambic.plugins.students import MobileBertAdapter, RobertaL4
from alambic.compress.pruning import PruneContext, encoder_layers, heads_per_layer, params
from tests.conftest import THUCNEWS
from tests.conftest import VOCAB as CHINESE_VOCAB

SMALL_VOCAB = 400
TINY = {"layers": 3, "hidden": 64, "heads": 4, "ffn": 128}
FEATURES = Features({
    "input_ids": List(Value("int32")), "attention_mask": List(Value("int8")),
    "token_type_ids": List(Value("int8")), "label": ClassLabel(names=["a", "b", "c"]),
    "length": Value("int64"),
})


def split_from(rows: list[list[int]]) -> Dataset:
    return Dataset.from_dict({
        "input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
        "token_type_ids": [[0] * len(r) for r in rows], "label": [i % 3 for i in range(len(rows))],
        "length": [len(r) for r in rows],
    }, features=FEATURES)


def random_split(n: int, seed: int, low: int = 104, high: int = SMALL_VOCAB) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=g).tolist()
    middles = [torch.randint(low, high, (k - 2,), generator=g).tolist() for k in lengths]
    return split_from([[101] + middle + [102] for middle in middles])


def tokenized(tokenizer, texts: list[str]) -> Dataset:
    enc = tokenizer(texts, truncation=True, max_length=64)
    return split_from(enc["input_ids"])


@pytest.fixture(scope="module")
def context():
    return PruneContext(validation=random_split(32, 1), batches=2, batch_size=8)


def build(student=RobertaL4, seed: int = 0, vocab_size: int = SMALL_VOCAB):
    torch.manual_seed(seed)
    return student.build(num_labels=3, vocab_size=vocab_size, **TINY).eval()


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def reloaded(model, tmp_path: Path):
    """Save, reload with ``from_pretrained``, check the logits match; the reloaded model."""
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    back = type(model).from_pretrained(folder).eval()
    ours = load_pretrained(folder, type(model)).eval()  # the project's loader, same result
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(5))
    expected = logits(model, ids)
    assert torch.allclose(logits(back, ids), expected, atol=1e-6)
    assert torch.allclose(logits(ours, ids), expected, atol=1e-6)
    assert params(back) == params(model)
    return back


# --- heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("student", [RobertaL4, MobileBertAdapter], ids=lambda s: s.id)
def test_heads_prunes_physically_and_reloads(student, context, tmp_path):
    model = build(student)
    result = Heads.apply(model, Heads.options(0.25), context)
    pruned = result.model
    assert sum(heads_per_layer(pruned)) == 12 - 3 and min(heads_per_layer(pruned)) >= 1
    assert heads_per_layer(model) == [4, 4, 4], "the input model is untouched"
    assert result.report["params_after"] < result.report["params_before"] == params(model)
    removed = {int(k): sorted(v) for k, v in result.report["removed_heads"].items()}
    assert {k: sorted(v) for k, v in pruned.config.pruned_heads.items()} == removed
    back = reloaded(pruned, tmp_path)
    assert heads_per_layer(back) == heads_per_layer(pruned)
    json.dumps(result.report)


def test_heads_removes_the_head_that_does_nothing_first(context):
    model = build()
    dense = encoder_layers(model)[2].attention.output.dense
    with torch.no_grad():
        dense.weight[:, 16:32] = 0  # head 1 of layer 2 (head size 64 / 4 = 16) writes nothing
    result = Heads.apply(model, Heads.options(1 / 12), context)
    assert result.report["removed_heads"] == {"2": [1]}


def test_heads_keeps_one_head_per_layer_and_honours_per_layer_amounts(context, tmp_path):
    model = build()
    assert heads_per_layer(Heads.apply(model, Heads.options(1.0), context).model) == [1, 1, 1]
    result = Heads.apply(model, Heads.options({0: 0.5, 2: 1.0}), context)
    assert heads_per_layer(result.model) == [2, 4, 1]
    assert result.report["options"]["per_layer"] == ((0, 0.5), (2, 1.0))
    again = Heads.apply(result.model, Heads.options(0.5), context)  # original head ids again
    assert sum(heads_per_layer(again.model)) == 7 - 4
    reloaded(again.model, tmp_path)
    with pytest.raises(AlambicError, match="layer 5; the model has 3 layer"):
        Heads.apply(model, Heads.options(per_layer={5: 0.5}), context)


def test_choose_heads_ranks_globally_but_spares_the_last_head():
    scores = [torch.tensor([0.1, 0.9]), torch.tensor([0.2, 0.3, 0.05])]
    assert choose_heads(scores, 0.4) == {0: [0], 1: [2]}
    assert choose_heads(scores, 1.0) == {0: [0], 1: [0, 2]}
    assert choose_heads(scores, {1: 0.34}) == {1: [2]}


def test_heads_options_and_half():
    assert Heads.half(Heads.options(0.5)).amount == 0.25
    assert Heads.half(Heads.options({1: 0.5})).per_layer == ((1, 0.25),)
    with pytest.raises(AlambicError, match="exactly one"):
        Heads.options()
    with pytest.raises(AlambicError, match=r"unknown option 'per_layers' \(did you mean 'per_layer'\?\)"):
        Heads.options(per_layers={0: 0.5})
    with pytest.raises(AlambicError, match=r"fraction in \[0, 1\]"):
        Heads.options(1.5)


# --- layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("student", [RobertaL4, MobileBertAdapter], ids=lambda s: s.id)
def test_layers_drops_a_given_list_and_reloads(student, tmp_path):
    model = build(student)
    result = Layers.apply(model, Layers.options(layers=[1]))
    pruned = result.model
    assert pruned.config.num_hidden_layers == len(encoder_layers(pruned)) == 2
    assert result.report["kept_layers"] == [0, 2] and result.report["params_after"] < params(model)
    for new, old in ((0, 0), (1, 2)):  # the kept layers are the original ones, in order
        a, b = encoder_layers(pruned)[new].state_dict(), encoder_layers(model)[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    back = reloaded(pruned, tmp_path)
    assert back.config.num_hidden_layers == 2


def test_layers_reindexes_pruned_heads(context, tmp_path):
    model = Heads.apply(build(), Heads.options({0: 0.5, 2: 0.75}), context).model
    assert heads_per_layer(model) == [2, 4, 1]
    pruned = Layers.apply(model, Layers.options(layers=[0])).model
    assert heads_per_layer(pruned) == [4, 1]
    assert list(pruned.config.pruned_heads) == [1], "layer 2's pruned heads are layer 1's now"
    assert heads_per_layer(reloaded(pruned, tmp_path)) == [4, 1]


def test_layers_by_importance_keeps_one(context):
    model = build()
    result = Layers.apply(model, Layers.options(0.34), context)
    assert result.report["layers_after"] == 2 and len(result.report["layer_importance"]) == 3
    assert Layers.apply(model, Layers.options(1.0), context).model.config.num_hidden_layers == 1
    with pytest.raises(AlambicError, match="leave no layer"):
        drop_layers(build(), [0, 1, 2])
    with pytest.raises(AlambicError, match=r"layer\(s\) \[3\] out of range"):
        Layers.apply(model, Layers.options(layers=[3]))


def test_layers_half():
    assert Layers.half(Layers.options(0.5)).amount == 0.25
    assert Layers.half(Layers.options(layers=[3, 1, 2])).layers == (3,)
    assert Layers.half(Layers.options(layers=[1])) is None


# --- ffn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("student", [RobertaL4, MobileBertAdapter], ids=lambda s: s.id)
def test_ffn_narrows_every_block_and_reloads(student, context, tmp_path):
    model = build(student)
    result = Ffn.apply(model, Ffn.options(0.3), context)
    pruned = result.model
    keep = 128 - 38
    assert pruned.config.intermediate_size == result.report["intermediate_after"] == keep
    for layer in encoder_layers(pruned):
        extra = [(f.intermediate, f.output) for f in getattr(layer, "ffn", ())]  # MobileBERT's
        for up, down in [(layer.intermediate, layer.output), *extra]:
            assert up.dense.out_features == down.dense.in_features == keep
    assert result.report["params_after"] < params(model)
    reloaded(pruned, tmp_path)
    assert Ffn.half(Ffn.options(0.3)).amount == 0.15


def test_ffn_drops_the_neurons_that_do_nothing(context):
    model = build()
    dead = [3, 50, 77]
    with torch.no_grad():
        encoder_layers(model)[0].output.dense.weight[:, dead] = 0
    pruned = Ffn.apply(model, Ffn.options(3 / 128), context).model
    kept_in = encoder_layers(pruned)[0].intermediate.dense.weight
    original = encoder_layers(model)[0].intermediate.dense.weight
    expected = [i for i in range(128) if i not in dead]
    assert torch.equal(kept_in, original[expected]), "the 3 dead neurons went, the rest stay in order"


# --- magnitude ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_magnitude_sparsity_is_permanent(scope, context, tmp_path):
    model = build()
    result = Magnitude.apply(model, Magnitude.options(0.4, scope=scope), context)
    pruned = result.model
    assert result.report["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert params(pruned) == params(model) == result.report["params_after"]
    assert not any("weight_orig" in k or "weight_mask" in k for k in pruned.state_dict())
    assert not any(m._forward_pre_hooks for m in pruned.modules())
    linears = [m for m in pruned.base_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    fractions = [float((m.weight == 0).float().mean()) for m in linears]
    if scope == "per-layer":
        assert all(f == pytest.approx(0.4, abs=1e-3) for f in fractions)
    else:
        assert max(fractions) - min(fractions) > 0.01, "global: matrices end up unevenly sparse"
    assert "sparse-aware runtime" in result.report["note"]
    back = reloaded(pruned, tmp_path)
    assert float((back.base_model.encoder.layer[0].intermediate.dense.weight == 0).float().mean()) > 0.1


def test_magnitude_embeddings_option_and_options():
    model = build()
    magnitude_prune(model, 0.5, embeddings=True)
    assert float((model.get_input_embeddings().weight == 0).float().mean()) > 0.2
    assert Magnitude.half(Magnitude.options(0.5)).amount == 0.25
    with pytest.raises(AlambicError, match="scope must be global or per-layer"):
        Magnitude.options(0.5, scope="layer")


# --- vocab ----------------------------------------------------------------------------------

TINY_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "的", "是", "中", "国", "新", "闻",
               "体", "育", "股", "市", "##s", "phone", "i", "##phone", "1", "##2", "12", "火", "箭"]


@pytest.fixture
def tiny_tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(TINY_TOKENS) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def test_vocab_shrinks_embeddings_and_writes_a_matching_tokenizer(tiny_tokenizer, tmp_path):
    train_texts = ["中国新闻", "体育新闻是中国的", "iphone 12"]
    valid_texts = ["中国体育", "股市新闻", "iPhone 12 新闻"]  # 股, 市 never occur in train
    context = PruneContext(train=tokenized(tiny_tokenizer, train_texts),
                           validation=tokenized(tiny_tokenizer, valid_texts), tokenizer=tiny_tokenizer)
    model = build(vocab_size=len(TINY_TOKENS))
    result = Vocab.apply(model, Vocab.options(keep=["火"]), context)
    pruned, tokenizer = result.model, result.tokenizer
    kept = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "的", "是", "中", "国", "新", "闻", "体",
            "育", "i", "##phone", "12", "火"]
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == kept
    assert [TINY_TOKENS[i] for i in result.token_map] == kept
    assert pruned.config.vocab_size == len(kept) == result.report["vocab_after"]
    assert pruned.config.pad_token_id == tokenizer.pad_token_id == 0
    assert result.report["params_after"] == params(model) - (len(TINY_TOKENS) - len(kept)) * 64
    assert result.report["validation_tokens_unk"] == 2 and result.report["validation_rows_with_unk"] == 1
    assert result.report["check_rows"] == 2 and result.report["check_max_abs_logit_diff"] < 1e-6
    assert Vocab.half(Vocab.options()) is None

    # new tokenizer + pruned model == old tokenizer + old model, for texts of kept tokens
    for text in ["中国体育新闻", "iPhone 12 是新闻"]:
        old, new = tiny_tokenizer(text, return_tensors="pt"), tokenizer(text, return_tensors="pt")
        assert tokenizer.convert_ids_to_tokens(new["input_ids"][0]) == \
            tiny_tokenizer.convert_ids_to_tokens(old["input_ids"][0])
        assert torch.allclose(model.eval()(**old).logits, pruned.eval()(**new).logits, atol=1e-6)
    assert tokenizer.tokenize("股市") == ["[UNK]", "[UNK]"]

    # both save and reload as a pair
    reloaded(pruned, tmp_path)
    tokenizer.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again("中国新闻 iphone")["input_ids"] == tokenizer("中国新闻 iphone")["input_ids"]
    remapped = result.remap(context.validation)
    assert remapped["input_ids"][0] == tokenizer(valid_texts[0])["input_ids"]


def test_vocab_needs_the_training_split():
    with pytest.raises(AlambicError, match="needs the tokenized training split"):
        Vocab.apply(build(), Vocab.options(), PruneContext())
    with pytest.raises(AlambicError, match="has no strength"):
        Vocab.options(0.5)


@pytest.mark.skipif(not CHINESE_VOCAB.is_file(), reason=f"{CHINESE_VOCAB} not found")
def test_vocab_round_trip_on_the_real_chinese_vocabulary(tmp_path):
    tokenizer = BertTokenizerFast(vocab_file=str(CHINESE_VOCAB), do_lower_case=True)
    train_texts = ["中华女子学院：本科层次仅1专业招男生", "两天价网站背后重重迷雾：做个网站究竟要多少钱",
                   "东5环海棠公社230-290平2居准现房98折优惠", "iPhone 12发布会定于10月举行",
                   "卡佩罗：告诉你德国脚生猛的原因"]
    valid_texts = ["女子网站发布会", "海棠公社现房优惠12折", "iPhone发布会", "德国队告负"]  # 队, 负: unseen
    context = PruneContext(train=tokenized(tokenizer, train_texts),
                           validation=tokenized(tokenizer, valid_texts), tokenizer=tokenizer)
    model = build(vocab_size=len(tokenizer))
    result = Vocab.apply(model, Vocab.options(), context)
    new = result.tokenizer
    assert len(new) == result.report["vocab_after"] < 200 and result.report["vocab_before"] == 21128
    assert new.convert_ids_to_tokens(0) == "[PAD]" and "[unused1]" not in new.get_vocab()
    assert set(new.all_special_tokens) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for text in valid_texts[:3] + train_texts:
        old_tokens = tokenizer.tokenize(text)
        assert new.tokenize(text) == old_tokens, text
        old_in, new_in = tokenizer(text, return_tensors="pt"), new(text, return_tensors="pt")
        assert torch.allclose(model(**old_in).logits, result.model(**new_in).logits, atol=1e-6)
    assert new.tokenize("德国队告负") == ["德", "国", "[UNK]", "告", "[UNK]"]
    assert result.report["validation_tokens_unk"] == 2
    new.save_pretrained(tmp_path / "tok")
    text = "iPhone 12发布会"
    assert AutoTokenizer.from_pretrained(tmp_path / "tok").tokenize(text) == tokenizer.tokenize(text)


def test_registry_and_light_import():
    assert build_registry()["pruners"].ids() == ["ffn", "heads", "layers", "magnitude", "vocab"]
    code = ("import sys, alambic.plugins.pruners; "
            "print('transformers' in sys.modules, 'datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- vocab: SentencePiece Unigram (XLM-R's kind, multilingual-e5-small's tokenizer) ----------


def xlmr_like(backend, cls=XLMRobertaTokenizerFast, post: str = "template"):
    """``backend`` (a Unigram ``Tokenizer``: <s> <pad> </s> <unk> ...) with XLM-R's specials
    added as ``post`` says, wrapped in ``cls``."""
    ids = {t: backend.token_to_id(t) for t in ("<s>", "</s>")}
    backend.post_processor = (
        processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"])) if post == "roberta"
        else processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                           special_tokens=list(ids.items())))
    return cls(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
               unk_token="<unk>", model_max_length=64)


@pytest.fixture(scope="module")
def headlines() -> list[str]:
    if not THUCNEWS.is_dir():
        pytest.skip(f"{THUCNEWS} not found")
    lines = (THUCNEWS / "train.txt").read_text(encoding="utf-8").splitlines()[:1500]
    return [line.split("\t")[0] for line in lines]


def trained_unigram(headlines: list[str], post: str = "template") -> XLMRobertaTokenizerFast:
    """A SentencePiece Unigram vocabulary (~1,850 pieces) of 300 headlines, laid out as XLM-R's:
    <s>=0 <pad>=1 </s>=2 <unk>=3, then pieces; <mask> an added token after them."""
    spm = SentencePieceUnigramTokenizer()
    spm.train_from_iterator(headlines[:300], vocab_size=2000, show_progress=False, unk_token="<unk>",
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    return xlmr_like(spm._tokenizer, post=post)


@pytest.mark.parametrize("post", ["template", "roberta"])
def test_vocab_prunes_a_unigram_tokenizer_keeping_segmentation(headlines, post, tmp_path):
    tokenizer = trained_unigram(headlines, post)
    assert tokenizer.pad_token_id == 1 and tokenizer.convert_ids_to_tokens(len(tokenizer) - 1) == "<mask>"
    train_texts, held_out = headlines[:100], headlines[300:]
    old_ids = {t: tokenizer(t)["input_ids"] for t in train_texts + held_out}
    model = build(vocab_size=len(tokenizer) + 35)  # rows no token reaches, as multilingual-e5-small's
    assert model.config.pad_token_id == 0  # as e5's config says; the tokenizer's pad is 1

    kept = set(sum((old_ids[t] for t in train_texts), tokenizer.all_special_ids))
    extra = next(i for i in old_ids[held_out[-1]] if i not in kept)  # kept by the keep-list
    kept.add(extra)
    kept_texts = [t for t in held_out if set(old_ids[t]) <= kept]
    dropped_texts = [t for t in held_out if t not in kept_texts]
    assert len(kept_texts) >= 20 and len(dropped_texts) >= 20
    valid_texts = kept_texts[:8] + dropped_texts[:4]
    context = PruneContext(train=tokenized(tokenizer, train_texts), validation=tokenized(tokenizer, valid_texts),
                           tokenizer=tokenizer)
    keep = [tokenizer.convert_ids_to_tokens(extra), "▁不在词表"]
    result = Vocab.apply(model, Vocab.options(keep=keep), context)
    pruned, new, token_map = result.model, result.tokenizer, result.token_map
    assert type(new) is XLMRobertaTokenizerFast and set(token_map) == kept
    assert result.report["keep_list_unknown"] == ["▁不在词表"]
    assert new.convert_ids_to_tokens(list(range(len(new)))) == tokenizer.convert_ids_to_tokens(token_map)
    assert [new.pad_token_id, new.unk_token_id, new.bos_token_id, new.eos_token_id] == [1, 3, 0, 2]
    assert new.mask_token_id == len(new) - 1, "the added <mask> follows the pieces"
    assert pruned.get_input_embeddings().num_embeddings == len(new) == pruned.config.vocab_size \
        == result.report["vocab_after"] < result.report["vocab_before"] == len(tokenizer) + 35
    assert pruned.config.pad_token_id == pruned.get_input_embeddings().padding_idx == 1
    assert result.report["check_rows"] == 8 and result.report["check_max_abs_logit_diff"] < 1e-5
    assert result.report["validation_rows_with_unk"] == 4

    # a text of kept pieces: the same pieces, ids through token_map, the old model's logits
    for text in train_texts + kept_texts:
        new_ids = new(text)["input_ids"]
        assert [token_map[i] for i in new_ids] == old_ids[text], text
        assert new.convert_ids_to_tokens(new_ids) == tokenizer.convert_ids_to_tokens(old_ids[text])
    batch = kept_texts[:16]
    old_in, new_in = (tok(batch, padding=True, return_tensors="pt") for tok in (tokenizer, new))
    assert torch.allclose(model.eval()(**old_in).logits, pruned.eval()(**new_in).logits, atol=1e-5)
    remapped = result.remap(context.validation)["input_ids"]
    assert remapped[:8] == [new(t)["input_ids"] for t in valid_texts[:8]]

    # a text with a dropped piece: smaller kept pieces or <unk>, never a crash
    changed = {t: new(t)["input_ids"] for t in dropped_texts}
    assert all([token_map[i] for i in ids] != old_ids[t] for t, ids in changed.items())
    assert any(new.unk_token_id in ids for ids in changed.values())
    pieces = [p.strip("▁") for p in tokenizer.convert_ids_to_tokens(sorted(set(range(len(tokenizer))) - kept))]
    finer = [p for p in pieces if set(tokenizer(p)["input_ids"]) - kept  # a dropped piece, kept characters
             and all(tokenizer.convert_tokens_to_ids(c) in kept for c in p)]
    assert finer and all(new.unk_token_id not in new(p)["input_ids"] for p in finer)

    # model and tokenizer save and reload as a pair
    reloaded(pruned, tmp_path)
    new.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert type(again) is XLMRobertaTokenizerFast and again.get_vocab() == new.get_vocab()
    for text in valid_texts + ["", "新浪 网友 <mask>"]:
        assert again(text)["input_ids"] == new(text)["input_ids"], text


# pieces chosen so that "xab" is ▁x|ab (-24) while ▁xa|b scores -31: pruning b must not make
# ▁xa|<unk> (-1 + the unknown character's score) the better path
HAND_VOCAB = [("<s>", 0.0), ("<pad>", 0.0), ("<unk>", 0.0), ("b", -30.0), ("</s>", 0.0), ("▁x", -12.0),
              ("ab", -12.0), ("▁xa", -1.0), ("▁", -3.0), ("a", -5.0), ("c", -4.0)]


@pytest.mark.parametrize("post", ["template", "roberta"])
def test_vocab_unigram_keeps_the_unknown_characters_score(post, tmp_path):
    backend = Tokenizer(Unigram(HAND_VOCAB, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = xlmr_like(backend, PreTrainedTokenizerFast, post)
    assert tokenizer.tokenize("xab") == ["▁x", "ab"]
    token_map = [0, 1, 2, 4, 5, 6, 7]  # the pieces of "xab" and "xa", and the specials
    new = pruned_tokenizer(tokenizer, [HAND_VOCAB[i][0] for i in token_map])
    assert type(new) is PreTrainedTokenizerFast
    assert new("xab")["input_ids"] == [0, 4, 5, 3], "</s> moved from 4 to 3, in the template too"
    assert new("xa")["input_ids"] == [0, 6, 3]
    assert new("xc")["input_ids"] == [0, 4, 2, 3] and new.tokenize("xc") == ["▁x", "c"]  # c: <unk>

    # with the kept pieces' own minimum (-12), <unk> would score -22 and win over "ab"
    naive = json.loads(new.backend_tokenizer.to_str())
    naive["model"]["vocab"][2][1] = 0.0
    assert Tokenizer.from_str(json.dumps(naive)).encode("xab").tokens == ["<s>", "▁xa", "b", "</s>"]
    new.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")("xab xc")["input_ids"] == new("xab xc")["input_ids"]


def test_vocab_refuses_other_tokenizer_kinds():
    backend = Tokenizer(WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(AlambicError, match=r"BertTokenizerFast\) and SentencePiece Unigram fast "
                                           r"tokenizers, not PreTrainedTokenizerFast"):
        pruned_tokenizer(tokenizer, ["[UNK]"])
