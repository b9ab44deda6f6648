"""core/train/mobilebert.py: a tiny roberta-l4 donor transferred into a tiny MobileBERT adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from alambic.config import DistillConfig
from alambic.errors import AlambicError
from alambic.plugins.students import MobileBertAdapter, RobertaL4
from alambic.train.distributed import WorkerContext
from alambic.train.mobilebert import eager_twin, init_from_donor, layerwise_transfer

VOCAB = 200
DONOR_SIZE = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}
ADAPTER_SIZE = {"layers": 2, "hidden": 64, "heads": 2, "ffn": 64}  # bottleneck 16, embeddings 16
CONTEXT = WorkerContext(0, 1, False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core runner they slow it 10x or more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_donor(seed: int = 0, **size: int):
    """A random roberta-l4 with peaked attention, as a trained one has (random init's is near uniform)."""
    torch.manual_seed(seed)
    donor = RobertaL4.build(3, vocab_size=VOCAB, **(DONOR_SIZE | size)).eval()
    with torch.no_grad():
        for layer in donor.bert.encoder.layer:
            layer.attention.self.query.weight *= 5
            layer.attention.self.key.weight *= 5
    return donor


def make_adapter(seed: int = 1, vocab: int = VOCAB, labels: int = 3, **size: int):
    torch.manual_seed(seed)
    return MobileBertAdapter.build(labels, vocab_size=vocab, **(ADAPTER_SIZE | size))


def synthetic(rows: int = 96, seed: int = 0) -> Dataset:
    """Tokenized rows like data.tokenize gives: [CLS]-ish id, random ids, lengths 4..20."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 21, rows)
    ids = [[2] + rng.integers(3, VOCAB, n - 1).tolist() for n in lengths]
    return Dataset.from_dict({
        "input_ids": ids, "attention_mask": [[1] * n for n in lengths],
        "token_type_ids": [[0] * n for n in lengths], "label": rng.integers(0, 3, rows).tolist(),
        "length": lengths.tolist(),
    })


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --- init_from_donor ------------------------------------------------------------------------


def test_embeddings_are_the_truncated_svd_of_the_donors():
    donor, adapter = make_donor(), make_adapter()
    report = init_from_donor(adapter, donor)
    words = donor.bert.embeddings.word_embeddings.weight.detach().double().numpy()  # (V, 64)
    u, s, vt = np.linalg.svd(words, full_matrices=False)
    best = (u[:, :16] * s[:16]) @ vt[:16]  # the rank-16 approximation (Eckart-Young)
    error = np.linalg.norm(words - best) / np.linalg.norm(words)

    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    emb = adapter.eval().mobilebert.embeddings
    with torch.no_grad():  # trigram: neighbour slots must add nothing; NoNorm is the identity
        full = emb(input_ids=ids, token_type_ids=types).double().numpy()
    d = donor.bert.embeddings
    extra = (d.position_embeddings.weight[:12][None] + d.token_type_embeddings(types)).detach().double().numpy()
    np.testing.assert_allclose(full - extra, best[ids.numpy()], atol=1e-5)

    with torch.no_grad():  # every token at once: the error is exactly the truncated SVD's
        one = emb(input_ids=torch.arange(VOCAB)[:, None]).double().numpy()[:, 0]
    row0 = (d.position_embeddings.weight[0] + d.token_type_embeddings.weight[0]).detach().double().numpy()
    got = np.linalg.norm(words - (one - row0)) / np.linalg.norm(words)
    assert got == pytest.approx(error, rel=1e-4)
    assert report["svd_relative_error"] == pytest.approx(error, rel=1e-6)
    assert report["svd_energy_kept"] == pytest.approx((s[:16] ** 2).sum() / (s**2).sum(), rel=1e-9)
    assert report["svd_rank"] == 16
    assert report["transferred"]["embeddings.word_embeddings.weight"] == (VOCAB, 16)
    assert report["transferred"]["embeddings.embedding_transformation.weight"] == (64, 48)
    assert "embeddings.LayerNorm" in report["skipped"]


def test_head_position_and_segment_tables_are_copied():
    donor, adapter = make_donor(), make_adapter()
    assert not torch.equal(adapter.classifier.weight, donor.classifier.weight)
    report = init_from_donor(adapter, donor)
    pairs = {
        "classifier.weight": (adapter.classifier.weight, donor.classifier.weight),
        "classifier.bias": (adapter.classifier.bias, donor.classifier.bias),
        "pooler.dense.weight": (adapter.mobilebert.pooler.dense.weight, donor.bert.pooler.dense.weight),
        "embeddings.position_embeddings.weight": (adapter.mobilebert.embeddings.position_embeddings.weight,
                                                  donor.bert.embeddings.position_embeddings.weight),
        "embeddings.token_type_embeddings.weight": (adapter.mobilebert.embeddings.token_type_embeddings.weight,
                                                    donor.bert.embeddings.token_type_embeddings.weight),
    }
    for name, (mine, theirs) in pairs.items():
        assert torch.equal(mine, theirs), name
        assert report["transferred"][name] == tuple(theirs.shape)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():  # same pooled input -> same logits: the head really is the donor's
        pooled = torch.randn(2, 64)
        assert torch.allclose(adapter.eval().classifier(torch.tanh(adapter.mobilebert.pooler.dense(pooled))),
                              donor.classifier(donor.bert.pooler.activation(donor.bert.pooler.dense(pooled))))
        assert adapter(input_ids=ids).logits.shape == (2, 3)


def test_a_narrower_adapter_gets_what_fits_and_says_what_not():
    donor, adapter = make_donor(), make_adapter(hidden=32)  # bottleneck 8, embeddings 8
    report = init_from_donor(adapter, donor)
    assert report["transferred"]["embeddings.word_embeddings.weight"] == (VOCAB, 8)
    assert {"embeddings.embedding_transformation", "classifier.weight",
            "embeddings.position_embeddings.weight"} <= set(report["skipped"])


@pytest.mark.parametrize(("kw", "message"), [
    ({"vocab": VOCAB + 1}, "vocabulary has 200 tokens but the adapter's has 201"),
    ({"labels": 4}, "classifies 3 labels but the adapter 4"),
])
def test_a_different_vocabulary_or_label_set_raises(kw, message):
    with pytest.raises(AlambicError, match=message):
        init_from_donor(make_adapter(**kw), make_donor())


def test_full_size_transfer_keeps_the_shapes_it_promises():
    torch.manual_seed(0)
    donor, adapter = RobertaL4.build(2).eval(), MobileBertAdapter.build(2)
    report = init_from_donor(adapter, donor)
    assert report["transferred"]["embeddings.word_embeddings.weight"] == (21128, 128)
    assert report["transferred"]["embeddings.embedding_transformation.weight"] == (512, 384)
    assert report["transferred"]["classifier.weight"] == (2, 512)
    # random N(0, 0.02²) embeddings have a flat spectrum: rank 128 of 512 keeps little more than 1/4
    assert 0.25 < report["svd_energy_kept"] < 0.35


# --- layerwise_transfer ---------------------------------------------------------------------


def test_the_donor_twin_returns_eager_attention_maps():
    donor = make_donor()
    assert donor.config._attn_implementation == "sdpa"
    twin = eager_twin(donor)
    assert type(twin.bert.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    assert donor.config._attn_implementation == "sdpa"  # the donor itself is left alone
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        out = twin.eval()(input_ids=ids, output_attentions=True)
        assert torch.allclose(out.logits, donor(input_ids=ids).logits, atol=1e-6)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 7, 7)
    assert eager_twin(twin) is twin


def test_each_stage_lowers_its_loss_and_trains_only_its_layer():
    donor, adapter = make_donor(), make_adapter()
    init_from_donor(adapter, donor)
    data = synthetic()
    adapter.mobilebert.encoder.layer[1].output.dense.bias.requires_grad_(False)  # the caller's freeze
    touched = {}
    for layer in (0, 1):
        before = snapshot(adapter)
        (record,) = layerwise_transfer(adapter, donor, data, CONTEXT, epochs_per_layer=4, batch_size=16,
                                       learning_rate=3e-3, layers=[layer])
        after = snapshot(adapter)
        touched[layer] = {name for name in before if not torch.equal(before[name], after[name])}
        assert record["layer"] == layer and record["donor_layer"] == layer and record["steps"] == 24
        assert record["last_feature_loss"] < 0.9 * record["first_feature_loss"], record
        assert record["last_attention_loss"] < 0.95 * record["first_attention_loss"], record
    layer0 = {n for n in before if n.startswith(("mobilebert.encoder.layer.0.", "mobilebert.embeddings."))}
    layer1 = {n for n in before if n.startswith("mobilebert.encoder.layer.1.")}
    assert touched[0] == layer0  # every tensor of the stage moved, nothing else did
    assert touched[1] == layer1
    flags = {n: p.requires_grad for n, p in adapter.named_parameters()}
    assert flags.pop("mobilebert.encoder.layer.1.output.dense.bias") is False
    assert all(flags.values())
    assert adapter.training  # built in train mode, returned in train mode


def test_a_width_mismatch_goes_through_a_projection():
    donor, adapter = make_donor(), make_adapter(hidden=32)
    init_from_donor(adapter, donor)
    records = layerwise_transfer(adapter, donor, synthetic(48), CONTEXT, epochs_per_layer=3, batch_size=16)
    assert [(r["layer"], r["donor_layer"], r["steps"]) for r in records] == [(0, 0, 9), (1, 1, 9)]
    assert all(r["last_feature_loss"] < r["first_feature_loss"] for r in records)


def test_an_out_of_range_layer_is_refused():
    with pytest.raises(AlambicError, match="layer 2 is out of range; the adapter has 2"):
        layerwise_transfer(make_adapter(), make_donor(), synthetic(8), CONTEXT, layers=[2])


def test_prepare_from_donor_transfers_then_trains_every_layer():
    donor, adapter = make_donor(), make_adapter()
    before = snapshot(adapter)
    settings = DistillConfig(batch_size=16, transfer_max_steps=3)
    MobileBertAdapter.prepare_from_donor(adapter, donor, synthetic(64), WorkerContext(0, 1, False), settings)
    assert MobileBertAdapter.donor == "roberta-l4"
    assert torch.equal(adapter.classifier.weight, donor.classifier.weight)  # copied, not trained here
    for layer in range(2):
        name = f"mobilebert.encoder.layer.{layer}.attention.self.query.weight"
        assert not torch.equal(before[name], adapter.get_parameter(name))
    assert all(p.requires_grad for p in adapter.parameters())


def _transfer_on_rank(rank: int, store: str, out: str) -> None:
    """One of two gloo workers: the same transfer, each rank on its half of every batch."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        donor, adapter = make_donor(), make_adapter(hidden=32)  # with a trained projection
        init_from_donor(adapter, donor)
        records = layerwise_transfer(adapter, donor, synthetic(64), WorkerContext(rank, 2, False),
                                     epochs_per_layer=2, batch_size=16)
        torch.save({"state": adapter.state_dict(), "records": records}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_workers_average_gradients_and_stay_identical(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_transfer_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1))
    assert a["records"] == b["records"] and a["records"][0]["steps"] == 8  # 4 batches x 2 epochs
    assert all(torch.equal(a["state"][name], b["state"][name]) for name in a["state"])


def test_max_steps_caps_each_stage():
    records = layerwise_transfer(make_adapter(), make_donor(), synthetic(64), CONTEXT, batch_size=8, max_steps=2)
    assert [r["steps"] for r in records] == [2, 2]
