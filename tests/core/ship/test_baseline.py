"""core/ship/baseline.py: the monitoring baseline export writes into the bundle (predicted-label shares,
confidence, input statistics on test and golden; labels; the model's identity), and reading it back."""

from __future__ import annotations

import json

import pytest

from alambic.errors import AlambicError
from alambic.fingerprint import model_digest
from alambic.ship.baseline import (
    BASELINE_FILE,
    CONFIDENCE_BINS,
    InputCounts,
    PredictionCounts,
    TextEncoder,
    length_width,
    read_baseline,
)
from alambic.ship.export import export_stage


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-layer model trained on 160 headlines whose label is their first character."""
    from tests.conftest import train_tiny_run

    root = tmp_path_factory.mktemp("baseline-run")
    rows = [f"{'体财'[i % 2]}育新闻第{i}条\t{'体育' if i % 2 == 0 else '财经'}" for i in range(160)]
    ctx, folder = train_tiny_run(root, rows)
    return root, ctx, folder


@pytest.fixture(scope="module")
def golden():
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["体育", "财经"])})
    texts = ["体育新闻第1条", "财经新闻第2条", "体育新闻😀😀😀", "财经" * 20]  # an [UNK], a truncated one
    return Dataset.from_dict({"text": texts, "label": [0, 1, 0, 1]}, features=features)


@pytest.fixture(scope="module")
def bundle(run, golden):
    root, ctx, folder = run
    return export_stage(folder, root / "export", ("hf",), test_split=ctx.prepared.raw["test"], max_length=16,
                        registry=ctx.registry, golden_split=golden)


def test_export_writes_the_baseline_into_the_bundle(bundle, run):
    _, ctx, folder = run
    assert not bundle.failed
    path = bundle.path / BASELINE_FILE
    assert path.is_file()
    assert BASELINE_FILE in {f.path for f in bundle.manifest.files}, "the manifest hashes it like every file"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["labels"] == ["体育", "财经"]
    assert data["max_length"] == 16
    assert data["model"]["digest"] == model_digest(folder), "the model's identity: the hash of its files"
    assert data["tokenizer"] == "hf/tokenizer.json" and (bundle.path / data["tokenizer"]).is_file()
    assert "`baseline.json` is what `alambic monitor BUNDLE LOGS...` compares" in (bundle.path / "README.md").read_text(
        encoding="utf-8"), "the app developer reads what to log"
    test = data["splits"]["test"]
    rows = len(ctx.prepared.raw["test"])
    assert test["predictions"]["rows"] == rows
    assert sum(test["predictions"]["label_counts"]) == rows
    assert sum(test["predictions"]["label_shares"]) == pytest.approx(1.0)
    assert len(test["predictions"]["confidence_hist"]) == CONFIDENCE_BINS
    assert sum(test["predictions"]["confidence_hist"]) == rows
    assert 0.5 <= test["predictions"]["confidence_mean"] <= 1.0
    # the model learnt the rule, so predictions split as the test labels do
    true = [list(ctx.prepared.raw["test"]["label"]).count(i) for i in range(2)]
    assert test["predictions"]["label_counts"] == true
    assert sum(test["inputs"]["length_hist"]) == rows and test["inputs"]["unk_rate"] == 0.0
    assert test["inputs"]["truncated_share"] == 0.0


def test_the_golden_split_has_its_own_figures(bundle):
    golden = json.loads((bundle.path / BASELINE_FILE).read_text(encoding="utf-8"))["splits"]["golden"]
    assert golden["predictions"]["rows"] == 4
    assert golden["predictions"]["label_counts"] == [2, 2]
    assert golden["inputs"]["truncated_share"] == 0.25  # "财经" x 20 is 42 tokens > 16
    assert golden["inputs"]["unk_rate"] > 0  # the emoji is not in the 200-token vocabulary
    assert read_baseline(bundle.path, "golden").reference["predictions"]["rows"] == 4


def test_input_counts_bin_lengths_and_count_unknowns_and_truncation(run):
    _, ctx, folder = run
    encoder = TextEncoder.from_file(folder / "tokenizer.json")
    counts = InputCounts.empty(16)
    encoded = encoder.encode(["体育", "😀体", "财" * 30])
    assert encoded[0] == (4, 2, 0)  # [CLS] 体 育 [SEP]: 4 tokens, 2 its own, no [UNK]
    assert encoded[1][2] == 1
    assert encoded[2][0] == 32 and encoded[2][1] == 30
    counts.add(encoded)
    assert length_width(16) == 1 and length_width(64) == 4 and len(counts.lengths) == 16
    assert counts.lengths[3] == 2 and counts.lengths[15] == 1, "a truncated text counts at max_length"
    summary = counts.to_dict()
    assert summary["truncated_share"] == pytest.approx(1 / 3)
    assert summary["unk_rate"] == pytest.approx(1 / 34)


def test_prediction_counts_put_a_confidence_of_one_in_the_top_bin():
    counts = PredictionCounts.empty(3)
    for label, confidence in [(0, 1.0), (1, 0.34), (1, 0.999)]:
        counts.add(label, confidence)
    assert counts.confidence[-1] == 2 and counts.confidence[6] == 1
    assert counts.to_dict()["label_shares"] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 0.0]


def test_reading_a_bundle_without_a_baseline_says_how_to_get_one(tmp_path):
    with pytest.raises(AlambicError, match="no monitoring baseline; export the model again"):
        read_baseline(tmp_path)
    (tmp_path / BASELINE_FILE).write_text('{"version": 99, "labels": [], "splits": {}}', encoding="utf-8")
    with pytest.raises(AlambicError, match="not a monitoring baseline alambic reads.*version 99"):
        read_baseline(tmp_path)


def test_a_missing_split_is_named(bundle, tmp_path):
    data = json.loads((bundle.path / BASELINE_FILE).read_text(encoding="utf-8"))
    del data["splits"]["golden"]
    (tmp_path / BASELINE_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(AlambicError, match="no 'golden' split in the baseline .it has test.; .*data.golden"):
        read_baseline(tmp_path, "golden")


def test_alambic_export_writes_what_alambic_monitor_reads(run, tmp_path):
    """The user's path: `alambic export` writes baseline.json; `alambic monitor` reads it against a
    log that keeps the test split's label shares (no drift, exit 0) and one of a single label (exit 1)."""
    from tests.core.test_cli import alambic

    root, ctx, folder = run
    bundle = tmp_path / "bundle"
    done = alambic("export", str(root / "run.yaml"), "--stage", str(folder), "--format", "hf", "--out", str(bundle),
                   cwd=root)
    assert done.returncode == 0, done.stderr
    test = json.loads((bundle / BASELINE_FILE).read_text(encoding="utf-8"))["splits"]["test"]["predictions"]
    labels = ["体育", "财经"]

    def log(path, counts, hist):  # label and confidence shares as given, 10 times over (>= 200 rows)
        named = [label for label, n in zip(labels, counts, strict=True) for _ in range(n)] * 10
        confidence = [(i + 0.5) / CONFIDENCE_BINS for i, n in enumerate(hist) for _ in range(n)] * 10
        rows = [{"timestamp": f"2026-05-01T00:{i // 60:02d}:{i % 60:02d}Z", "label": label, "confidence": c}
                for i, (label, c) in enumerate(zip(named, confidence, strict=True))]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    counts, hist = test["label_counts"], test["confidence_hist"]
    steady = alambic("monitor", str(bundle), str(log(tmp_path / "steady.jsonl", counts, hist)), "--window", "1000",
                     "--json")
    assert steady.returncode == 0, steady.stdout + steady.stderr
    assert not json.loads(steady.stdout)["drift"]
    one_label = [sum(counts), 0]
    shifted = alambic("monitor", str(bundle), str(log(tmp_path / "shifted.jsonl", one_label, hist)), "--json")
    assert shifted.returncode == 1 and json.loads(shifted.stdout)["drift"]
