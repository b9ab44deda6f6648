"""core/report/monitor.py (+ monitor_logs, monitor_page): prediction logs against a bundle's baseline:
PSI and JS of label shares, confidence shift, input statistics; thresholds; windows by count and by
time; the logs' schema errors naming file:line and the field; `alambic monitor` and its exit status."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alambic.cli import app
from alambic.errors import AlambicError
from alambic.report.monitor import EPSILON, Thresholds, js_divergence, monitor, psi
from alambic.report.monitor_logs import parse_every
from alambic.ship.baseline import BASELINE_FILE, InputCounts, PredictionCounts, TextEncoder

LABELS = ["体育", "财经", "科技"]
SHARES = (0.5, 0.3, 0.2)
CHARS = "体育财经科技新闻比赛股票市场手机芯片"
START = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
MAX_LENGTH = 16


# --- a bundle and logs, made here (no model needed) -----------------------------------------


def write_tokenizer(path: Path) -> None:
    """A character-level WordPiece tokenizer over CHARS, as BERT's Chinese tokenizer splits."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *CHARS])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))


def predictions(n: int, seed: int, shares=SHARES, confidence=(0.9, 0.06), chars=CHARS, length=(4, 12)):
    """n rows as the app logs them: label by ``shares``, confidence ~ N(mean, sd) clipped, a text."""
    rng = random.Random(seed)
    for i in range(n):
        label = rng.choices(range(len(LABELS)), weights=shares)[0]
        conf = min(1.0, max(1 / len(LABELS), rng.gauss(*confidence)))
        text = "".join(rng.choice(chars) for _ in range(rng.randint(*length)))
        yield {"timestamp": (START + dt.timedelta(seconds=30 * i)).isoformat().replace("+00:00", "Z"),
               "label": LABELS[label], "confidence": round(conf, 4), "text": text}


def make_bundle(folder: Path, rows: int = 2000) -> Path:
    """baseline.json as export writes it, from the rows `predictions` makes, and the tokenizer."""
    (folder / "hf").mkdir(parents=True)
    write_tokenizer(folder / "hf" / "tokenizer.json")
    counts, inputs = PredictionCounts.empty(len(LABELS)), InputCounts.empty(MAX_LENGTH)
    encoder = TextEncoder.from_file(folder / "hf" / "tokenizer.json")
    made = list(predictions(rows, seed=0))
    for row in made:
        counts.add(LABELS.index(row["label"]), row["confidence"])
    inputs.add(encoder.encode([r["text"] for r in made]))
    split = {"predictions": counts.to_dict(), "inputs": inputs.to_dict()}
    baseline = {"version": 1, "labels": LABELS, "max_length": MAX_LENGTH, "tokenizer": "hf/tokenizer.json",
                "model": {"stage": "abc123", "digest": "d1"}, "scored_by": "tests", "splits": {"test": split}}
    (folder / BASELINE_FILE).write_text(json.dumps(baseline, ensure_ascii=False), encoding="utf-8")
    return folder


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "export")


# --- the figures ----------------------------------------------------------------------------


def test_psi_and_js_of_equal_shifted_and_disjoint_shares():
    assert psi([5, 3, 2], [50, 30, 20]) == pytest.approx(0.0)
    assert js_divergence([5, 3, 2], [50, 30, 20]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0), "base 2: disjoint shares give 1"
    # PSI's definition, an empty bin counted at EPSILON inside the logarithm
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 0.0) * math.log(0.5 / EPSILON)
    assert psi([1, 0], [1, 1]) == pytest.approx(expected)
    assert js_divergence([0.2, 0.8], [0.5, 0.5]) == pytest.approx(js_divergence([0.5, 0.5], [0.2, 0.8]))


# --- drift or not ---------------------------------------------------------------------------


def test_predictions_like_the_baseline_show_no_drift(bundle, tmp_path):
    log = write_jsonl(tmp_path / "same.jsonl", predictions(3000, seed=1))
    result = monitor(bundle, [log], size=1000)
    assert [w["rows"] for w in result["windows"]] == [1000, 1000, 1000]
    assert not result["drift"], [w["reasons"] for w in result["windows"]]
    window = result["windows"][0]
    assert window["status"] == "ok" and window["label_psi"] < 0.05 and window["label_js"] < 0.01
    assert abs(window["confidence_shift"]) < 0.01 and window["inputs"]["length_psi"] < 0.05
    assert window["first_row"] == f"{log}:1" and window["start"] == "2024-05-01T00:00:00Z"


def test_a_stream_of_one_class_drifts_and_says_why(bundle, tmp_path):
    log = write_jsonl(tmp_path / "shifted.jsonl", predictions(1000, seed=2, shares=(1, 0, 0)))
    window = monitor(bundle, [log], size=1000)["windows"][0]
    assert window["status"] == "drift"
    assert window["label_psi"] > 1.0 and window["label_js"] > 0.3
    assert any(r.startswith("label PSI") and "(limit 0.25)" in r for r in window["reasons"])


def test_a_confidence_drop_drifts_with_label_shares_unchanged(bundle, tmp_path):
    log = write_jsonl(tmp_path / "unsure.jsonl", predictions(1000, seed=3, confidence=(0.7, 0.1)))
    window = monitor(bundle, [log], size=1000)["windows"][0]
    assert window["label_psi"] < 0.1 and window["confidence_shift"] < -0.15
    assert window["status"] == "drift" and any(r.startswith("confidence shift -0.19") for r in window["reasons"])


def test_new_characters_and_long_texts_drift_the_inputs(bundle, tmp_path):
    unknown = write_jsonl(tmp_path / "unk.jsonl", predictions(1000, seed=4, chars=CHARS + "魑魅魍魉"))
    inputs = monitor(bundle, [unknown], size=1000)["windows"][0]
    assert inputs["inputs"]["unk_shift"] > 0.1 and inputs["status"] == "drift"
    assert any(r.startswith("[UNK] rate shift") for r in inputs["reasons"])
    long = write_jsonl(tmp_path / "long.jsonl", predictions(1000, seed=5, length=(10, 30)))
    window = monitor(bundle, [long], size=1000)["windows"][0]
    assert window["inputs"]["truncated_share"] > 0.5 and window["inputs"]["length_psi"] > 0.25
    assert {"length PSI", "truncated shift"} <= {r.rsplit(" ", 3)[0] for r in window["reasons"]}


def test_logs_without_texts_are_judged_on_predictions_alone(bundle, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "text"} for r in predictions(1000, seed=6)]
    window = monitor(bundle, [write_jsonl(tmp_path / "no-text.jsonl", rows)], size=1000)["windows"][0]
    assert window["inputs"] is None and window["status"] == "ok"


# --- thresholds -----------------------------------------------------------------------------


def test_thresholds_decide_and_their_defaults_are_the_usual_rule(bundle, tmp_path):
    defaults = Thresholds()
    assert (defaults.psi_watch, defaults.label_psi, defaults.label_js) == (0.1, 0.25, 0.05)
    skewed = write_jsonl(tmp_path / "skew.jsonl", predictions(2000, seed=7, shares=(0.62, 0.23, 0.15)))
    window = monitor(bundle, [skewed], size=2000)["windows"][0]
    assert 0.025 < window["label_psi"] < 0.1 and window["status"] == "ok"
    strict = Thresholds(psi_watch=0.01, label_psi=0.02)
    assert monitor(bundle, [skewed], size=2000, thresholds=strict)["windows"][0]["status"] == "drift"
    watch = Thresholds(psi_watch=0.02)
    found = monitor(bundle, [skewed], size=2000, thresholds=watch)
    assert found["windows"][0]["status"] == "watch" and not found["drift"], "watch is not flagged"


def test_a_window_with_too_few_rows_is_reported_not_flagged(bundle, tmp_path):
    log = write_jsonl(tmp_path / "shifted.jsonl", predictions(1100, seed=8, shares=(1, 0, 0)))
    result = monitor(bundle, [log], size=1000)
    assert [w["status"] for w in result["windows"]] == ["drift", "too few rows"]
    assert result["windows"][1]["rows"] == 100 and result["drifted"] == [0]


# --- windows by time ------------------------------------------------------------------------


def test_windows_by_time_group_rows_whatever_their_order(bundle, tmp_path):
    rows = list(predictions(480, seed=9))  # 30 s apart: 4 hours
    random.Random(0).shuffle(rows)
    result = monitor(bundle, [write_jsonl(tmp_path / "hours.jsonl", rows)], every=parse_every("1h"),
                     thresholds=Thresholds(min_rows=50))
    assert [w["start"] for w in result["windows"]] == [f"2024-05-01T0{h}:00:00Z" for h in range(4)]
    assert [w["rows"] for w in result["windows"]] == [120] * 4
    assert result["windows"][0]["end"] == "2024-05-01T01:00:00Z"


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h", 3600), ("1d", 86400), ("2w", 1209600)])
def test_durations(text, seconds):
    assert parse_every(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["1", "h", "0h", "1.5h", "1y"])
def test_a_bad_duration_says_what_is_expected(text):
    with pytest.raises(AlambicError, match=f"--every {text}: expected a positive whole number and a unit"):
        parse_every(text)


# --- the formats ----------------------------------------------------------------------------


def test_csv_and_parquet_logs_read_as_jsonl_does(bundle, tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(predictions(600, seed=10))
    with_probs = [r | {"probs": json.dumps(_probs(r)), "confidence": None} for r in rows]
    with open(tmp_path / "log.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["timestamp", "label", "probs", "confidence", "text"])
        writer.writeheader()
        writer.writerows(with_probs)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "log.parquet")
    reference = monitor(bundle, [write_jsonl(tmp_path / "log.jsonl", rows)], size=300)["windows"]
    for name in ("log.csv", "log.parquet"):
        found = monitor(bundle, [tmp_path / name], size=300)["windows"]
        for a, b in zip(found, reference, strict=True):
            assert a["label_counts"] == b["label_counts"], name
            assert a["confidence_mean"] == pytest.approx(b["confidence_mean"], abs=1e-4), name
            assert a["inputs"]["length_hist"] == b["inputs"]["length_hist"], name
    assert found[0]["first_row"] == f"{tmp_path / 'log.parquet'}: row 1"


def _probs(row: dict) -> list[float]:
    """Every label's probability, the row's label holding its confidence."""
    rest = (1 - row["confidence"]) / (len(LABELS) - 1)
    return [row["confidence"] if name == row["label"] else rest for name in LABELS]


# --- rows that do not fit -------------------------------------------------------------------

GOOD = {"timestamp": "2024-05-01T12:00:00Z", "label": "体育", "confidence": 0.9, "text": "体育新闻"}


@pytest.mark.parametrize("change, message", [
    ({"timestamp": None}, "field 'timestamp' is missing: expected ISO 8601"),
    ({"timestamp": "yesterday"}, "field 'timestamp': 'yesterday' is not ISO 8601"),
    ({"label": None}, "field 'label' is missing"),
    ({"label": "体育新闻"}, "field 'label': '体育新闻' is not one of the model's 3 labels .体育, 财经, 科技. "
                          ".did you mean '体育'"),
    ({"label": ["体育"]}, "field 'label': expected the predicted label's name .a string., got list"),
    ({"confidence": 1.5}, "field 'confidence': expected a probability in .0, 1., got '1.5'"),
    ({"confidence": "high"}, "field 'confidence': expected a probability in .0, 1., got 'high'"),
    ({"confidence": None}, "field 'confidence' is missing .and no 'probs'."),
    ({"probs": [0.5, 0.5]}, "field 'probs': expected a list of 3 probabilities in the bundle's label order"),
    ({"probs": [2.0, 1.0, 0.5]}, "field 'probs': expected a probability in .0, 1., got '2.0'"),
    ({"probs": [0.5, 0.2, 0.1]}, "field 'probs': they add up to 0.8000, expected 1"),
    ({"probs": [0.1, 0.8, 0.1]}, "field 'probs': the row's label has 0.1000, another label 0.8000: are probs in"),
    ({"text": 42}, "field 'text': expected the input text .a string., got int"),
])
def test_a_row_that_does_not_fit_names_its_file_line_and_field(bundle, tmp_path, change, message):
    rows = [GOOD, GOOD, {**GOOD, **change}]
    log = write_jsonl(tmp_path / "app.jsonl", rows)
    with pytest.raises(AlambicError, match=f"^{_escaped(log)}:3: {message}"):
        monitor(bundle, [log])


def test_a_line_that_is_not_json_names_its_line(bundle, tmp_path):
    log = tmp_path / "app.jsonl"
    log.write_text(json.dumps(GOOD) + "\n\n" + '{"timestamp": "2024-05-01T12:00:00Z", "label": \n', encoding="utf-8")
    with pytest.raises(AlambicError, match=f"^{_escaped(log)}:3: not a JSON object .Expecting value at column 49"):
        monitor(bundle, [log])
    log.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(AlambicError, match=":1: expected an object with timestamp, label and confidence or probs"):
        monitor(bundle, [log])


def test_a_csv_or_parquet_log_without_a_needed_column_is_named(bundle, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "app.csv").write_text("time,label,score\n2024-05-01,体育,0.9\n", encoding="utf-8")
    with pytest.raises(AlambicError, match=r"app.csv:1: no column 'timestamp', 'confidence \(or probs\)' "
                                           r"\(the header has: time, label, score\)"):
        monitor(bundle, [tmp_path / "app.csv"])
    (tmp_path / "bad.csv").write_text("timestamp,label,confidence\n2024-05-01,体育,0.9\n2024-05-01,体育,x\n",
                                      encoding="utf-8")
    with pytest.raises(AlambicError, match=r"bad.csv:3: field 'confidence'"):
        monitor(bundle, [tmp_path / "bad.csv"])
    pq.write_table(pa.table({"timestamp": ["2024-05-01"], "label": ["体育"]}), tmp_path / "app.parquet")
    with pytest.raises(AlambicError, match=r"app.parquet: no column 'confidence \(or probs\)'"):
        monitor(bundle, [tmp_path / "app.parquet"])


def test_paths_that_are_not_logs_are_refused(bundle, tmp_path):
    with pytest.raises(AlambicError, match="no such log file or folder"):
        monitor(bundle, [tmp_path / "missing.jsonl"])
    (tmp_path / "app.txt").write_text("x", encoding="utf-8")
    with pytest.raises(AlambicError, match=r"app.txt: not a log format alambic reads: expected .jsonl"):
        monitor(bundle, [tmp_path / "app.txt"])


def _escaped(path: Path) -> str:
    import re

    return re.escape(str(path))


# --- the command ----------------------------------------------------------------------------


def test_the_command_exits_1_on_drift_with_json_and_a_page(bundle, tmp_path):
    same = write_jsonl(tmp_path / "same.jsonl", predictions(2000, seed=11))
    shifted = write_jsonl(tmp_path / "shifted.jsonl", predictions(1000, seed=12, shares=(0.4, 0.6, 0)))
    runner = CliRunner()
    ok = runner.invoke(app, ["monitor", str(bundle), str(same)])
    assert ok.exit_code == 0, ok.output
    assert "no drift in 2 windows" in ok.output
    flagged = runner.invoke(app, ["monitor", str(bundle), str(same), str(shifted), "--json",
                                  "--html", str(tmp_path / "page" / "monitor.html")])
    assert flagged.exit_code == 1, flagged.output
    result = json.loads(flagged.stdout)
    assert [w["status"] for w in result["windows"]] == ["ok", "ok", "drift"] and result["drifted"] == [2]
    assert result["thresholds"]["label_psi"] == 0.25 and result["thresholds"]["psi_epsilon"] == EPSILON
    assert result["baseline"]["model"]["stage"] == "abc123"
    page = (tmp_path / "page" / "monitor.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 and "drift in 1 of 3 windows" in page
    assert "<script" not in page and "http" not in page.split("<body>")[1], "self-contained"
    relaxed = runner.invoke(app, ["monitor", str(bundle), str(shifted), "--psi-threshold", "50",
                                  "--js-threshold", "1", "--psi-watch", "50"])
    assert relaxed.exit_code == 0, relaxed.output


def test_the_command_refuses_both_windowings(bundle, tmp_path):
    log = write_jsonl(tmp_path / "same.jsonl", predictions(10, seed=13))
    result = CliRunner().invoke(app, ["monitor", str(bundle), str(log), "--window", "5", "--every", "1h"])
    assert result.exit_code == 2 and "not both" in result.output


def test_an_empty_log_gives_no_windows_and_a_page_that_says_so(bundle, tmp_path):
    log = tmp_path / "empty.jsonl"
    log.write_text("\n", encoding="utf-8")
    runner = CliRunner()
    found = runner.invoke(app, ["monitor", str(bundle), str(log), "--html", str(tmp_path / "page.html")])
    assert found.exit_code == 0 and "no predictions in the logs" in found.output
    assert "no rows logged" in (tmp_path / "page.html").read_text(encoding="utf-8")


def test_bytes_that_are_not_utf8_name_their_line(bundle, tmp_path):
    log = tmp_path / "app.jsonl"
    log.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"text": "\xff"}\n')
    with pytest.raises(AlambicError, match=f"^{_escaped(log)}:2: not UTF-8 text .invalid start byte at byte 11"):
        monitor(bundle, [log])


def test_compressed_logs_and_folders_are_read(bundle, tmp_path):
    import gzip

    rows = list(predictions(400, seed=14))
    (tmp_path / "logs").mkdir()
    with gzip.open(tmp_path / "logs" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[200:])
    write_jsonl(tmp_path / "logs" / "a.jsonl", rows[:200])
    (tmp_path / "logs" / "notes.txt").write_text("not a log", encoding="utf-8")
    result = monitor(bundle, [tmp_path / "logs"], size=200)
    assert [w["first_row"].rsplit("/", 1)[1] for w in result["windows"]] == ["a.jsonl:1", "b.jsonl.gz:1"]


def test_against_golden_compares_with_the_golden_split(bundle, tmp_path):
    data = json.loads((bundle / BASELINE_FILE).read_text(encoding="utf-8"))
    golden = PredictionCounts.empty(len(LABELS))
    for row in predictions(500, seed=15, shares=(1, 0, 0)):
        golden.add(0, row["confidence"])
    data["splits"]["golden"] = {"predictions": golden.to_dict(), "inputs": None}
    (bundle / BASELINE_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    log = write_jsonl(tmp_path / "sport.jsonl", predictions(1000, seed=16, shares=(1, 0, 0)))
    assert monitor(bundle, [log], size=1000)["drift"], "against test: one class only drifts"
    found = monitor(bundle, [log], size=1000, against="golden")
    assert not found["drift"] and found["baseline"]["split"] == "golden"
    assert found["windows"][0]["inputs"] is None and not found["inputs_compared"], "golden has no texts here"
