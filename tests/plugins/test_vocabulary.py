"""plugins/vocabulary.py: the vocabulary pruner keeps the training split's tokens and writes a
matching tokenizer (BERT WordPiece, SentencePiece Unigram); the pruned model and tokenizer together
give the original's logits on texts of kept tokens, and reload as a pair."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tokenizers import SentencePieceUnigramTokenizer, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram, WordLevel
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast, XLMRobertaTokenizerFast

from alambic.compress.pruning import PruneContext
from alambic.errors import AlambicError
from alambic.plugins.vocabulary import Vocab, pruned_tokenizer
from alambic.train.models import params
from tests.conftest import THUCNEWS
from tests.conftest import VOCAB as CHINESE_VOCAB
from tests.plugins.test_pruners import build, reloaded, tokenized

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


def test_light_import():
    code = ("import sys, alambic.plugins.vocabulary; "
            "print('transformers' in sys.modules, 'datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
