"""core/report/build.py: report.md and a self-contained report.html of a real (tiny) run: every section,
the ones missing their inputs, the cached teacher measurement and evaluations, data.golden, the
CLI, and the page rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alambic.data.dataset import load_golden
from alambic.errors import DataError
from alambic.report import build as report_module
from alambic.report import teacher as teacher_module
from alambic.report.document import Items, Table
from alambic.search import golden as golden_module

LABELS = ("体育", "财经")


def headlines(start: int, count: int) -> str:
    """Headlines whose label is their first character (体 -> 体育, 财 -> 财经)."""
    return "".join(f"{'体财'[i % 2]}育新闻第{i}条\t{LABELS[i % 2]}\n" for i in range(start, start + count))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run, built for real without Ray: a 1-layer teacher (trained in this process) compressed
    twice (vocabulary pruned + dynamic INT8 for ONNX Runtime; as it is, PyTorch), scored and timed as
    a search does (its rows, then the serial timing pass), results.parquet with those two candidates
    and a failed one, and selected.json."""
    from alambic.compress.chain import compress, relative_path
    from alambic.compress.records import SCORES_ONLY, MeasureSettings, parse_steps
    from alambic.run import RunContext
    from alambic.search.front import load_results
    from alambic.search.front import mark_front as rank
    from alambic.search.results import mark_front, write_results
    from alambic.search.select import select, write_selected
    from alambic.search.space import Candidate
    from alambic.search.timing import time_candidates
    from alambic.search.tune import _base_row, scores
    from alambic.train.teacher import train_teacher

    root = tmp_path_factory.mktemp("report-run")
    (root / "train.tsv").write_text(headlines(0, 160), encoding="utf-8")
    (root / "golden.tsv").write_text(headlines(1000, 20), encoding="utf-8")
    config = {
        "name": "tiny", "store": str(root / "artifacts"),
        "data": {"train": "train.tsv", "golden": "golden.tsv", "format": "tsv", "header": False,
                 "text_column": 0, "label_column": 1, "split": {"validation": 0.2, "test": 0.2}},
        "tokenizer": {"name_or_path": None, "vocab_size": 200, "min_frequency": 1, "max_length": 16},
        "teacher": {"architecture": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}, "epochs": 3,
                    "batch_size": 8, "learning_rate": 0.003, "warmup_ratio": 0.0},
        "search": {"students": ["roberta-l4"], "quantization": ["dynamic-int8", "none"],
                   "pruning": [[{"pruner": "vocab"}], []],
                   "measure": {"lengths": [8], "runs": 2, "warmup": 0, "memory": False}},
        "guard": {"max_drop": 1.0, "retries": 0},
        "select": {"policy": "constraints", "max_size_mb": 100},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    ctx = RunContext.open(root / "run.yaml", quiet=True)
    folder = train_teacher(ctx, local=True).path  # compressed as it is: distilling would add nothing here
    settings = MeasureSettings(lengths=(8,), runs=2, warmup=0, memory=False)
    run_dir = ctx.store.local_path("")
    rows = []
    for steps, quant in (("vocab", "dynamic-int8"), ("none", "none")):
        pruning = parse_steps(steps)
        record = compress(ctx, folder, pruning, quant, measure=SCORES_ONLY)
        candidate = Candidate(student="teacher", settings={}, pruning=tuple(pruning), quantization=quant)
        rows.append(_base_row(candidate, "trial") | scores(record) | {
            "runtime": record.runtime, "status": "ok", "prune_key": record.prune_key, "compress_key": record.key,
            "stage": str(relative_path(record.path, run_dir)), "artifact": str(relative_path(record.artifact, run_dir))})
    failed = Candidate(student="teacher", settings={"temperature": 9.0}, pruning=(), quantization="none")
    rows.append(_base_row(failed, "trial") | {"status": "failed", "error": "RuntimeError: explode"})
    rows = time_candidates(ctx, rows, settings)
    write_results(ctx.store, mark_front(rows, ctx.config.search.objectives))
    df = rank(load_results(ctx.store), ctx.config.search.objectives)
    selection = select(df, ctx.config.select, registry=ctx.registry).require()
    write_selected(ctx.store, selection)
    return root, ctx, rows, selection


@pytest.fixture(scope="module")
def written(run):
    """The report of the run before any export."""
    root, ctx, _, _ = run
    report = report_module.build_report(ctx)
    paths = report_module.save_report(report)
    return report, paths, ctx.store.local_path("")


def section(report, id):
    return next(s for s in report.sections if s.id == id)


def tables(report, id):
    return [b for b in section(report, id).blocks if isinstance(b, Table)]


def test_every_section_is_written_and_only_the_export_is_missing(written):
    report, paths, run_dir = written
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    for title in ("Data", "Teacher", "Candidates", "Pareto front", "Selected model",
                  "Selected model against its teacher and student", "Guard decisions",
                  "Selected model on the test split", "Export", "Machine"):
        assert f"\n## {title}\n" in md, title
    assert report.missing == ["Export: No export yet (export/verification.json): run `alambic export RUN`."]
    assert "No export yet (export/verification.json)" in md
    assert paths == {"markdown": f"{report.store.uri}/report.md", "html": f"{report.store.uri}/report.html"}
    for name in ("front.png", "confusion.png", "predictions.png"):  # the markdown's pictures
        assert (run_dir / "report_images" / name).read_bytes().startswith(b"\x89PNG")
        assert f"](report_images/{name})" in md


def test_the_comparison_table_has_the_teacher_every_candidate_and_ratios(written, run):
    report, _, _ = written
    _, _, rows, selection = run
    table = tables(report, "candidates")[0]
    assert table.headers == ["", "candidate", "student", "pruning", "quant", "runtime", "val accuracy",
                             "val macro-F1", "test accuracy", "test macro-F1", "golden accuracy", "params", "size MB",
                             "p50 ms", "p90 ms", "peak MB", "speed-up", "= runtime", "× compression", "smaller"]
    # the teacher in each runtime it was timed in, the fastest first: every speed-up's baseline
    teacher = [r for r in table.rows if r[1] == "teacher"]
    assert [r[0] for r in teacher] == ["teacher, baseline", "teacher"]
    assert {r[5] for r in teacher} == {"pytorch", "onnxruntime"} and teacher[0][-4:] == ["1.00×"] * 4
    assert float(teacher[0][13]) <= float(teacher[1][13])  # p50: the baseline is the faster
    assert {r[1] for r in table.rows[2:]} == {r["candidate_id"] for r in rows if r["status"] == "ok"}
    chosen = [r for r in table.rows if r[1] == selection.candidate_id]
    assert len(chosen) == 1 and "selected" in chosen[0][0]
    assert [table.rows[i][1] for i in table.emphasis] == [selection.candidate_id]
    by_id = {r["candidate_id"]: r for r in rows}
    for row in table.rows[2:]:  # validation and test side by side, each from its own column
        assert row[6:10] == [f"{by_id[row[1]][k]:.4f}" for k in ("val_accuracy", "val_macro_f1", "test_accuracy",
                                                                  "test_macro_f1")]
    for row in table.rows:
        assert re.fullmatch(r"\d+\.\d{4}", row[10]), row  # golden accuracy, beside the others
        assert all(cell.endswith("×") for cell in row[-4:]), row
        total, runtime, compression = (float(cell.rstrip("×").replace(",", "")) for cell in row[-4:-1])
        rounding = 0.005 * (runtime + compression + 1) + 1e-4  # each of the three is shown to 2 decimals
        assert total == pytest.approx(runtime * compression, abs=rounding)
    text = "\n".join(map(str, section(report, "candidates").blocks))
    assert "1 failed candidate(s)" in text and "RuntimeError: explode" in str(section(report, "candidates").blocks)


def test_data_teacher_selection_and_guard_sections(written, run):
    report, _, _ = written
    _, ctx, _, selection = run
    splits = tables(report, "data")[0]
    assert [r[0] for r in splits.rows] == ["train", "validation", "test", "golden"]
    assert splits.rows[3][1] == "20"
    labels = tables(report, "data")[1]
    assert [r[1] for r in labels.rows] == list(LABELS)
    teacher = tables(report, "teacher")[0]
    assert [r[0] for r in teacher.rows] == ["validation", "test", "golden"]
    assert f"`{selection.candidate_id}`" in tables(report, "selected")[0].rows[0][1]
    blocks = section(report, "selected").blocks
    assert any(isinstance(b, Items) and any("meets size" in line for line in b.lines) for b in blocks)
    decisions = tables(report, "guard")
    record = json.loads((ctx.store.local_path(selection.row["stage"]) / "record.json").read_text())
    if record["decisions"]:
        assert [r[0] for r in decisions[0].rows] == [d["step"] for d in record["decisions"]]
    else:
        assert "No compression step: nothing to guard." in section(report, "guard").blocks
    facts = dict(tables(report, "selected")[0].rows)
    assert facts["validation accuracy (chosen on)"].startswith(f"{selection.row['val_accuracy']:.4f} on ")
    assert facts["test accuracy (reported only)"].startswith(f"{selection.row['test_accuracy']:.4f} on ")
    machine = tables(report, "machine")[0]
    assert [r[0] for r in machine.rows][-3:] == ["the teacher", "the teacher", "this report"]
    timed = [r for r in machine.rows if r[0].endswith("candidate(s)")]  # one row per runtime, from the rows
    assert sum(int(r[0].split()[0]) for r in timed) == 2 and {r[2] for r in timed} == {"ONNX Runtime", "PyTorch"}
    assert all(r[1] == selection.row["latency_machine"] for r in timed)


def test_per_class_f1_confusion_and_prediction_distribution(written, run):
    report, _, _ = written
    _, ctx, _, _ = run
    per_class, shares = tables(report, "quality")
    assert [r[1] for r in per_class.rows] == list(LABELS)
    assert shares.headers == ["label", "true labels %", "teacher %", "selected %"]
    for column in (1, 2, 3):
        assert sum(float(r[column]) for r in shares.rows) == pytest.approx(100, abs=0.2)
    assert any("total variation distance" in str(b) for b in section(report, "quality").blocks)
    evaluations = [p for p in (ctx.store.local_path("stages")).iterdir()
                   if (p / "manifest.json").is_file() and json.loads((p / "manifest.json").read_text())["kind"]
                   == "evaluation"]
    found = [json.loads((p / "metrics.json").read_text()) for p in evaluations]
    test = [m for m in found if m["examples"] == len(ctx.prepared.raw["test"])]
    assert test and all(len(m["confusion"]) == 2 and all(len(r) == 2 for r in m["confusion"]) for m in found)
    assert sum(map(sum, test[0]["confusion"])) == len(ctx.prepared.raw["test"])
    assert sum(m["examples"] == 20 for m in found) == 3  # the teacher and both candidates on data.golden


def test_the_html_is_self_contained(written):
    _, _, run_dir = written
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "http://" not in page and "https://" not in page
    assert '<section id="export" class="missing">' in page
    assert "<th>speed-up</th>" in page and 'class="emphasis"' in page


def test_a_second_report_measures_and_evaluates_nothing_and_shows_the_export(run, written, monkeypatch):
    from alambic.ship.export import export_stage

    root, ctx, _, selection = run
    stage = ctx.store.local_path(selection.row["stage"])
    export_stage(stage, ctx.store.local_path("export"), ("hf",), test_split=ctx.prepared.raw["test"],
                 max_length=16, registry=ctx.registry)
    monkeypatch.setattr(teacher_module, "measure_pytorch", lambda *a, **k: pytest.fail("the teacher was measured again"))
    monkeypatch.setattr(teacher_module, "measure_onnx", lambda *a, **k: pytest.fail("the teacher was timed again"))
    monkeypatch.setattr(golden_module, "_evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    report = report_module.build_report(ctx)
    assert report.missing == []
    export = section(report, "export")
    assert tables(report, "export")[0].rows[0][0] == "hf"
    assert any(str(b).startswith("Bundle `export/`") for b in export.blocks)


def test_a_run_directory_without_its_config_says_what_it_cannot_show(run, written):
    _, ctx, _, _ = run
    report = report_module.build_report(ctx.store.local_path(""))
    missing = {s.id for s in report.sections if s.missing}
    assert missing >= {"data", "teacher", "quality"}
    assert "candidates" not in missing and "front" not in missing and "guard" not in missing
    assert tables(report, "candidates")[0].rows[0][0] != "teacher"


def test_cli_report(run, written):
    from typer.testing import CliRunner

    from alambic.cli import app

    root, _, _, _ = run
    result = CliRunner().invoke(app, ["--quiet", "report", str(root / "run.yaml")])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and "report.md" in result.output
    missing = CliRunner().invoke(app, ["report", str(root / "nowhere")])
    assert missing.exit_code != 0 and "no such file or directory" in str(missing.exception)


# --- the selected model against its teacher and student ------------------------------------


def current_teacher_key(ctx) -> str:
    from alambic.train.teacher import current_teacher_key

    return current_teacher_key(ctx)


def number(cell: str) -> float:
    return float(cell.rstrip("×").replace(",", ""))


def test_speed_up_is_against_the_teacher_in_its_fastest_runtime_split_exactly(written, run):
    """Issue 16.9: the headline speed-up is against the run's own teacher in its fastest runtime
    here, at the candidate's threads; runtime share x compression share = the total, both sides named."""
    report, _, _ = written
    _, ctx, _, selection = run
    row = selection.row
    sentence, sides = section(report, "against").blocks[:2]
    key = current_teacher_key(ctx)
    assert sides.headers[:4] == ["side", "model", "runtime", "threads"]
    candidate, *teachers = sides.rows
    assert candidate[0] == "candidate (shipped)" and f"`{row['candidate_id']}`" in candidate[1]
    runtime = {"onnxruntime": "ONNX Runtime", "pytorch": "PyTorch"}[row["runtime"]]
    assert candidate[2] == f"{runtime} {row['quantization'] if row['quantization'] != 'none' else 'fp32'}"
    assert {t[2] for t in teachers} == {"PyTorch fp32", "ONNX Runtime fp32"}  # both runtimes, named
    assert all(t[1] == f"teacher `{key[:12]}`" for t in teachers)
    assert all(r[3] == str(int(row["latency_threads"])) for r in sides.rows)  # the same threads on both sides
    fastest = min(teachers, key=lambda t: number(t[4]))
    same = next(t for t in teachers if t[2] == f"{runtime} fp32")
    assert "the baseline: its fastest runtime here" in fastest[0] or "the baseline (its fastest" in fastest[0]
    assert all("a reference only, not the baseline" in t[0] for t in teachers if t not in (fastest, same))
    assert "in the candidate's runtime" in same[0]
    found = re.fullmatch(r"Speed-up ([\d,.]+)× against the teacher `(\w+)` in (.+?) fp32 \(its fastest here\) = "
                         r"runtime ([\d,.]+)× \(the teacher: (.+?) fp32 → (.+?) fp32\) × compression ([\d,.]+)× "
                         r"\(the teacher → `(\w+)` .*, both in (.+?)\); (\d+) thread\(s\), (\d+) tokens, batch 1\.",
                         sentence)
    assert found, sentence
    total, runtime_share, compression = (number(found[i]) for i in (1, 4, 7))
    assert found[2] == key[:12] and found[3] == found[5] == fastest[2].removesuffix(" fp32")
    assert found[6] == found[9] == runtime and found[8] == row["candidate_id"]
    assert int(found[10]) == row["latency_threads"]
    assert total == pytest.approx(runtime_share * compression, rel=0.01)
    # each share from the teacher's own timings (cached: read again, not timed again): the baseline
    # over the teacher in the candidate's runtime, that over the candidate; the total against the
    # baseline, not against PyTorch fp32 by default
    path, threads = ctx.store.local_path(f"stages/{key}"), int(row["latency_threads"])
    p50 = {rt: teacher_module.teacher_measurement(ctx, key, path, runtime=rt, threads=threads).headline()[
        "latency_p50_ms"] for rt in ("pytorch", "onnxruntime")}
    assert fastest[2] == {"pytorch": "PyTorch fp32", "onnxruntime": "ONNX Runtime fp32"}[min(p50, key=p50.get)]
    assert runtime_share == pytest.approx(min(p50.values()) / p50[row["runtime"]], abs=0.006)  # 2 decimals shown
    assert compression == pytest.approx(p50[row["runtime"]] / row["latency_p50_ms"], abs=0.006)
    assert total == pytest.approx(min(p50.values()) / row["latency_p50_ms"], abs=0.006)


def test_accuracy_drops_against_the_student_and_the_teacher_use_the_same_split(written, run):
    """Issue 16.5: validation against validation, test against test, in points."""
    report, _, _ = written
    _, ctx, _, selection = run
    row = selection.row
    drops = section(report, "against").blocks[-1]
    assert drops.headers == ["against", "split", "its accuracy", "shipped accuracy", "drop (points)"]
    assert [r[1] for r in drops.rows] == ["validation", "test", "validation", "test"]
    teacher = json.loads((ctx.store.local_path(f"stages/{current_teacher_key(ctx)}") / "metrics.json").read_text())
    expected = [(row["student_val_accuracy"], row["val_accuracy"]), (row["student_test_accuracy"], row["test_accuracy"]),
                (teacher["validation"]["accuracy"], row["val_accuracy"]), (teacher["test"]["accuracy"], row["test_accuracy"])]
    assert drops.rows[0][0].startswith("distilled student") and drops.rows[2][0].startswith("teacher `")
    for shown, (reference, shipped) in zip(drops.rows, expected, strict=True):
        assert shown[2:] == [f"{reference:.4f}", f"{shipped:.4f}", f"{100 * (reference - shipped):+.2f}"]


# --- paths read from records ----------------------------------------------------------------


@pytest.fixture
def copied(run, tmp_path):
    """The run copied (config and store) so that its records can be tampered with."""
    root, _, _, selection = run
    copy = shutil.copytree(root, tmp_path / "copy", symlinks=True)
    config = yaml.safe_load((copy / "run.yaml").read_text(encoding="utf-8"))
    (copy / "run.yaml").write_text(yaml.safe_dump(config | {"store": str(copy / "artifacts")}, allow_unicode=True),
                                   encoding="utf-8")
    for name in ("report.md", "report.html"):  # written by the tests before: none is, this time
        (copy / "artifacts" / "tiny" / name).unlink(missing_ok=True)
    return copy, copy / "artifacts" / "tiny", selection.row


@pytest.mark.parametrize("artifact", ["/etc/passwd", "../../../../etc/passwd"])
def test_a_tampered_record_stops_the_report_naming_the_file_and_key(copied, artifact):
    """Issue 16.8: record.json's artifact is joined to its stage only when it stays inside."""
    from typer.testing import CliRunner

    from alambic.cli import app
    from alambic.paths import UnsafePathError

    copy, run_dir, row = copied
    record = run_dir / row["stage"] / "record.json"
    record.write_text(json.dumps(json.loads(record.read_text()) | {"artifact": artifact}), encoding="utf-8")
    result = CliRunner().invoke(app, ["--quiet", "report", str(copy / "run.yaml")])
    assert result.exit_code != 0 and isinstance(result.exception, UnsafePathError), result.output
    assert str(result.exception).startswith(f"{record.resolve()}: artifact {artifact!r} is absolute or climbs out")
    assert not (run_dir / "report.html").exists()


@pytest.mark.parametrize("stage", ["/etc", "stages/../../.."])
def test_a_tampered_selection_stops_the_report_naming_the_file_and_key(copied, stage):
    from alambic.paths import UnsafePathError

    _, run_dir, _ = copied
    selected = json.loads((run_dir / "selected.json").read_text())
    selected["row"]["stage"] = stage
    (run_dir / "selected.json").write_text(json.dumps(selected), encoding="utf-8")
    with pytest.raises(UnsafePathError, match=rf"selected\.json: stage '{re.escape(stage)}' is absolute or climbs out"):
        report_module.build_report(run_dir)  # the run directory: the guard section reads the stage's record


# --- data.golden ----------------------------------------------------------------------------


def test_golden_rows_take_the_runs_label_names(tmp_path):
    from alambic.config import DataConfig

    path = tmp_path / "golden.tsv"
    path.write_text("一\t财经\n二\t体育\n", encoding="utf-8")
    golden = load_golden(DataConfig(train="t", golden=str(path), header=False, text_column=0, label_column=1),
                         ["体育", "财经"])
    assert golden["label"] == [1, 0] and golden.features["label"].names == ["体育", "财经"]
    ids = tmp_path / "ids.tsv"
    ids.write_text("一\t7\n二\t3\n", encoding="utf-8")  # train's ids were 3 and 7: its names "3", "7"
    config = DataConfig(train="t", golden=str(ids), header=False, text_column=0, label_column=1)
    assert load_golden(config, ["3", "7"])["label"] == [1, 0]
    assert load_golden(DataConfig(train="t"), ["a"]) is None
    path.write_text("一\t娱乐\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"golden.tsv:1: label '娱乐' not in label names"):
        load_golden(DataConfig(train="t", golden=str(path), header=False, text_column=0, label_column=1),
                    ["体育", "财经"])


# --- in a browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs Debian's package)")
def test_headless_chromium_renders_the_page(written, tmp_path):
    from PIL import Image

    _, _, run_dir = written
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
                    (run_dir / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 50_000
    with Image.open(shot) as picture:
        assert picture.size == (1280, 2400)
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500, "a blank page"  # text, tables, the plots
