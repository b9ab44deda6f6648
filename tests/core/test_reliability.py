"""RELIABILITY.md's rows that no other test file checks: bad data and configs, injected faults,
and the security rules (what is never unpickled, never run, never loaded).

Each bad input must end in one message naming its file and line (or its config key), and leave
nothing in the store; each fault must leave the store as it was or finish the work.
"""

from __future__ import annotations

import ast
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from alambic.config import DataConfig, RunConfig, Section, TeacherConfig, TokenizerConfig, load_config
from alambic.config_problems import key_path
from alambic.data.dataset import column, describe_data, load_data
from alambic.data.report import DataReport
from alambic.data.tokenize import load_tokenizer, tokenize_data
from alambic.errors import AlambicError, ConfigError, DataError, StoreError
from alambic.plugins.data_sources import FilesSource
from alambic.registry import Registry
from alambic.store import Store
from tests.core.test_cli import alambic

PROJECT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def load(**options: Any) -> tuple[Any, DataReport]:
    """load_data through the files source: parsing, splitting and the cross-split checks."""
    registry = Registry()
    registry["datasets"].add(FilesSource)
    return load_data(DataConfig(**options), registry)


def rows_tsv(n: int = 40, prefix: str = "新闻") -> str:
    return "".join(f"{prefix}{i}\t{i % 2}\n" for i in range(n))


TSV = {"text_column": 0, "label_column": 1}


# --- bad data files: one message naming file and line ----------------------------------------

BAD_FILES = {  # id: (file name, content, options, the message, as a regex)
    "header-true-on-headerless": ("t.tsv", "你好\t0\n再见\t1\n", {"header": True},
                                  r"t.tsv:1: no column 'text' \(data.text_column\); columns: 你好, 0"),
    "label-id-absent-from-label-file": ("t.tsv", "甲\t0\n乙\t12\n", {**TSV, "label_names": "names.txt"},
                                        r"t.tsv:2: label '12' not in label names \[0=财经, 1=体育\]"),
    "label-names-file-blank-line": ("t.tsv", "甲\t0\n", {**TSV, "label_names": "blank.txt"},
                                    r"blank.txt:2: empty label name"),
    "label-names-file-empty": ("t.tsv", "甲\t0\n", {**TSV, "label_names": "empty.txt"},
                               r"empty.txt: no label names"),
    "label-names-file-gbk": ("t.tsv", "甲\t0\n", {**TSV, "label_names": "gbk.txt"},
                             r"gbk.txt:\d+: cannot decode byte 0x[0-9a-f]{2} as utf-8; is the file in another "
                             r"encoding \(e.g. GBK\)\? set data.encoding"),
    "empty-label": ("t.tsv", "甲\t0\n乙\t\n", TSV, r"t.tsv:2: missing or invalid label ''"),
    "whole-file-gbk": ("t.tsv", "财经新闻\t0\n".encode("gbk"), TSV,
                       r"t.tsv:1: cannot decode byte 0xb2 at byte 1 as utf-8; is the file in another "
                       r"encoding \(e.g. GBK\)\? set data.encoding"),
    "utf16-file": ("t.tsv", "你好\t0\n".encode("utf-16"), TSV, r"t.tsv:1: NUL byte at byte \d+ \(a binary or UTF-16"),
    "field-over-csv-limit": ("t.tsv", "甲\t0\n" + "字" * 140_000 + "\t1\n", TSV,
                             r"t.tsv:2: unreadable TSV row: field larger than field limit \(131072\)"),
    "column-index-out-of-range": ("t.tsv", "甲\t0\n", {"text_column": 0, "label_column": 5},
                                  r"t.tsv:1: data.label_column is column 5 but the row has 2 column\(s\)"),
    "jsonl-first-object-lacks-key": ("t.jsonl", '{"sentence": "甲", "label": 0}\n', {},
                                     r"t.jsonl:1: no key 'text'; keys: sentence, label"),
    "jsonl-not-an-object": ("t.jsonl", '{"text": "甲", "label": 0}\n[1, 2]\n', {},
                            r"t.jsonl:2: expected a JSON object, got list"),
    "jsonl-text-not-a-string": ("t.jsonl", '{"text": "甲", "label": 0}\n{"text": 5, "label": 1}\n', {},
                                r"t.jsonl:2: text is int, not a string"),
    "jsonl-label-bool": ("t.jsonl", '{"text": "甲", "label": 0}\n{"text": "乙", "label": true}\n', {},
                         r"t.jsonl:2: missing or invalid label True"),
    "jsonl-label-null": ("t.jsonl", '{"text": "甲", "label": 0}\n{"text": "乙", "label": null}\n', {},
                         r"t.jsonl:2: missing or invalid label None"),
    "jsonl-column-index": ("t.jsonl", '{"text": "甲", "label": 0}\n', TSV,
                           r"t.jsonl: JSON Lines rows are objects: data.text_column and data.label_column "
                           r"must be key names"),
    "not-a-parquet-file": ("t.parquet", "text,label\n甲,0\n", {}, r"t.parquet: not a readable Parquet file"),
    "unclosed-csv-quote": ("t.csv", 'text,label\n"甲,0\n乙,1\n', {},
                           r"t.csv:2: expected 2 columns, found 1 \(a quoted field opened on line 2 runs to "
                           r"line 3: an unclosed '\"'\?\)"),
    "too-few-rows-to-split": ("t.tsv", "甲\t0\n乙\t1\n", TSV,
                              r"cannot split 11% of 1 train rows off as validation: .*; give a data.validation file"),
}


def side_files(tmp_path: Path) -> None:
    write(tmp_path, "names.txt", "财经\n体育\n")
    write(tmp_path, "blank.txt", "财经\n\n体育\n")
    write(tmp_path, "empty.txt", "\n\n")
    write(tmp_path, "gbk.txt", "财经\n体育\n".encode("gbk"))


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_data_file_gives_one_message_naming_file_and_line(tmp_path: Path, case: str) -> None:
    name, content, options, message = BAD_FILES[case]
    side_files(tmp_path)
    options = {k: str(tmp_path / v) if k == "label_names" else v for k, v in options.items()}
    with pytest.raises(DataError, match=message):
        load(train=write(tmp_path, name, content), **options)


@pytest.mark.parametrize("text", ["", "   ", "\u3000\u3000", "\u00a0"], ids=["empty", "spaces", "ideographic", "nbsp"])
def test_empty_or_whitespace_text_names_the_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "t.tsv", f"甲\t0\n{text}\t1\n")
    with pytest.raises(DataError, match=rf"^{path}:2: empty text \(set data.bad_rows: skip"):
        load(train=path, **TSV)


def test_validation_label_absent_from_train_names_the_validation_line(tmp_path: Path) -> None:
    validation = write(tmp_path, "dev.tsv", "丙\t0\n丁\t7\n")
    with pytest.raises(DataError, match=rf"^{validation}:2: label '7' not in label names \[0=0, 1=1\]"):
        load(train=write(tmp_path, "train.tsv", rows_tsv()), validation=validation, **TSV)


def test_tsv_with_bom_and_crlf_reads_like_a_clean_file(tmp_path: Path) -> None:
    clean, _ = load(train=write(tmp_path, "a.tsv", rows_tsv()), **TSV)
    messy = b"\xef\xbb\xbf" + rows_tsv().replace("\n", "\r\n").encode()
    dirty, _ = load(train=write(tmp_path, "b.tsv", messy), **TSV)
    assert {s: column(ds, "text") for s, ds in dirty.items()} == {s: column(ds, "text") for s, ds in clean.items()}
    assert dirty["train"].features["label"].names == ["0", "1"]


def test_class_without_examples_in_a_split_file_is_warned(tmp_path: Path) -> None:
    names = write(tmp_path, "names.txt", "财经\n体育\n")
    _, report = load(train=write(tmp_path, "train.tsv", rows_tsv()), label_names=names,
                     validation=write(tmp_path, "dev.tsv", "只有财经\t0\n"), **TSV)
    assert "split 'validation' has no examples of 1 label(s): 体育" in report.warnings


def test_rows_repeated_across_split_files_are_counted(tmp_path: Path) -> None:
    train = rows_tsv()
    validation = "新闻1\t1\n新闻2\t0\n独有\t1\n"  # two texts of train
    test = "新闻3\t1\n独有\t1\n另一条\t0\n"  # one of train, one of validation
    _, report = load(train=write(tmp_path, "train.tsv", train), validation=write(tmp_path, "dev.tsv", validation),
                     test=write(tmp_path, "test.tsv", test), **TSV)
    assert ("4 validation/test row(s) repeat a text of an earlier split "
            "(validation/train 2, test/train 1, test/validation 1)") in report.warnings


def tiny_tokenizer(tmp_path: Path) -> Any:
    vocab = write(tmp_path, "vocab.txt", "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "新", "闻", "字"]))
    return load_tokenizer(TokenizerConfig(name_or_path=vocab))


def test_emoji_only_text_is_kept_and_warned_about_as_unknown(tmp_path: Path, caplog) -> None:
    dsd, report = load(train=write(tmp_path, "t.tsv", rows_tsv() + "😀😂🎉\t1\n"), **TSV, split={"seed": 1})
    tokenizer = tiny_tokenizer(tmp_path)
    assert tokenizer.convert_ids_to_tokens(tokenizer("😀😂🎉")["input_ids"]) == ["[CLS]", "[UNK]", "[SEP]"]
    with caplog.at_level(logging.WARNING, logger="alambic.data.tokenize"):
        tokenized = tokenize_data(dsd, tokenizer, 32, tmp_path / "cache", report.fingerprint)
    split = next(name for name, ds in dsd.items() if "😀😂🎉" in column(ds, "text"))
    warned = [r.getMessage() for r in caplog.records if "no character in the tokenizer's vocabulary" in r.getMessage()]
    assert len(warned) == 1 and f"split '{split}': 1 text(s)" in warned[0] and "'😀😂🎉'" in warned[0]
    assert len(tokenized[split]) == len(dsd[split])  # kept: a warning, not an error
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alambic.data.tokenize"):  # a cache hit warns too
        tokenize_data(dsd, tokenizer, 32, tmp_path / "cache", report.fingerprint)
    assert any("no character in the tokenizer's vocabulary" in r.getMessage() for r in caplog.records)


def test_text_longer_than_max_length_is_truncated_and_counted(tmp_path: Path) -> None:
    dsd, report = load(train=write(tmp_path, "t.tsv", "".join(f"{'字' * (600 if i == 0 else 3)}\t{i % 2}\n"
                                                                for i in range(40))), **TSV)
    tokenizer = tiny_tokenizer(tmp_path)
    tokenized = tokenize_data(dsd, tokenizer, 512, tmp_path / "cache", report.fingerprint)
    assert max(max(column(ds, "length")) for ds in tokenized.values()) == 512
    summary = describe_data(dsd, report, tokenizer, max_length=512)
    assert sum(s["tokens"]["max"] == 602 for s in summary["splits"].values()) == 1
    assert any(s["tokens"]["over_max_length"] > 0 for s in summary["splits"].values())


LINE = st.text(st.sampled_from(list("甲乙😀ab01 \t,\"\r\x00\ufeff{}:[]\\")), max_size=12)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(LINE, max_size=10), fmt=st.sampled_from(["tsv", "csv", "jsonl"]),
       bad_rows=st.sampled_from(["error", "skip"]), header=st.sampled_from([None, True, False]))
def test_any_file_content_loads_or_raises_a_data_error(lines: list[str], fmt: str, bad_rows: str,
                                                         header: bool | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), f"t.{fmt}", "\n".join(lines))
        columns = TSV if fmt != "jsonl" and header is not True else {}
        try:
            load(train=path, bad_rows=bad_rows, header=header, **columns)
        except DataError as exc:
            assert str(exc).strip() and "Traceback" not in str(exc)


# --- bad data leaves nothing behind -----------------------------------------------------------


def store_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("content", ["", "甲\t0\n".encode("gbk"), b"ok\t0\nbad\x00\t1\n", "甲\t0\n乙\n"],
                         ids=["empty", "gbk", "nul", "short-row"])
def test_bad_data_leaves_no_artifact_in_the_store(write_config, tmp_path: Path, content: str | bytes) -> None:
    from alambic.run import RunContext

    write(tmp_path, "train.tsv", content)
    config = {"name": "bad", "store": str(tmp_path / "artifacts"), "data": {"train": "train.tsv", **TSV},
              "tokenizer": {"vocab_size": 200, "min_frequency": 1}}
    ctx = RunContext.open(write_config(config))
    with pytest.raises(DataError, match="train.tsv"):
        ctx.prepared  # noqa: B018  (the property reads and tokenizes the data)
    assert store_files(tmp_path / "artifacts") == []


def test_cli_on_bad_data_prints_one_message_exits_2_and_writes_nothing(write_config, tmp_path: Path) -> None:
    path = write(tmp_path, "train.tsv", rows_tsv(20).encode() + "财经\t1\n".encode("gbk"))  # line 21
    config = {"name": "bad", "store": str(tmp_path / "artifacts"), "data": {"train": "train.tsv", **TSV},
              "tokenizer": {"vocab_size": 200, "min_frequency": 1},
              "teacher": {"architecture": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64}}}
    result = alambic("teacher", str(write_config(config)), "--local")
    assert result.returncode == 2, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1
    assert f"{path}:21: cannot decode byte" in result.stderr and "Traceback" not in result.stderr
    assert store_files(tmp_path / "artifacts") == []


# --- configs: every field wrong in turn -------------------------------------------------------

SEARCH_BASE = {"students": ["roberta-l4"], "student_sizes": {"roberta-l4": {}},
               "pruning": [[{"pruner": "ffn"}]], "objectives": [{"metric": "val_accuracy", "mode": "max"}]}


def section_of(annotation: Any) -> tuple[type[BaseModel] | None, tuple[Any, ...]]:
    """The section a field holds, and the path steps into it: () plain, (0,) a list, (0, 0) a list of
    lists, ('roberta-l4',) a dict keyed by student id."""
    steps: tuple[Any, ...] = ()
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, Section):
            return annotation, steps
        if origin is list:
            annotation, steps = args[0], (*steps, 0)
        elif origin is dict:
            annotation, steps = args[1], (*steps, "roberta-l4")
        else:  # a union: the section among its members
            members = [a for a in args if section_of(a)[0] is not None]
            if not members:
                return None, ()
            annotation = members[0]


def fields(model: type[BaseModel] = RunConfig, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, FieldInfo) of every field of the run config, sections and their keys alike."""
    found = []
    for name, info in model.model_fields.items():
        found.append(((*prefix, name), info))
        section, steps = section_of(info.annotation)
        if section is not None:
            found += fields(section, (*prefix, name, *steps))
    return found


FIELDS = fields()
LEAVES = [(p, f) for p, f in FIELDS if section_of(f.annotation)[0] is None]
SECTIONS = [(*p, *section_of(f.annotation)[1]) for p, f in FIELDS if section_of(f.annotation)[0] is not None]


def wrong_type(annotation: Any) -> Any:
    """A mapping where a string is accepted, a string everywhere else: always the wrong type."""
    if typing.get_origin(annotation) in (list, dict):
        return "not-this"
    return {"not": "this"} if annotation is str or str in typing.get_args(annotation) else "not-this"


def with_value(base: dict, path: tuple[Any, ...], value: Any) -> dict:
    """A copy of ``base`` (given a search section if it has none) with ``value`` at ``path``."""
    config = json.loads(json.dumps(base))
    config.setdefault("search", json.loads(json.dumps(SEARCH_BASE)))
    node: Any = config
    for i, part in enumerate(path[:-1]):
        if isinstance(node, dict) and part not in node:
            node[part] = [] if isinstance(path[i + 1], int) else {}
        if isinstance(node, list) and len(node) <= part:
            node.append([] if isinstance(path[i + 1], int) else {})
        node = node[part]
    node[path[-1]] = value
    return config


def problems_for(write_config, config: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(config))
    return info.value.problems


def test_the_walk_covers_the_whole_schema() -> None:
    assert len(FIELDS) > 100 and len(LEAVES) > 80
    assert ("search", "pruning", 0, 0, "amount") in [p for p, _ in LEAVES]
    assert ("search", "student_sizes", "roberta-l4", "heads") in [p for p, _ in LEAVES]


@pytest.mark.parametrize("path", [p for p, _ in FIELDS], ids=key_path)
def test_every_field_of_the_wrong_type_is_one_problem_naming_its_key(write_config, minimal_config,
                                                                     path: tuple[Any, ...]) -> None:
    value = wrong_type(dict(FIELDS)[path].annotation)
    (problem,) = problems_for(write_config, with_value(minimal_config, path, value))
    assert problem.startswith(f"{key_path(path)}: ") and repr(value) in problem, problem


def out_of_range() -> list[tuple[tuple[Any, ...], Any]]:
    """(path, value) just outside each bound the schema declares."""
    cases = []
    for path, info in LEAVES:
        is_float = info.annotation is float or float in typing.get_args(info.annotation)
        for bound in info.metadata:
            for attr, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                limit = getattr(bound, attr, None)
                if limit is not None:
                    cases.append((path, limit + (step * 0.5 if is_float else step)))
    return cases


RANGE_CASES = out_of_range() + [(("ray", "cpus_per_worker"), -3), (("ray", "gpus_per_worker"), -1),
                                (("search", "resources", "gpus_per_worker"), -1)]


@pytest.mark.parametrize(("path", "value"), RANGE_CASES, ids=[f"{key_path(p)}={v}" for p, v in RANGE_CASES])
def test_every_bound_is_one_problem_naming_its_key(write_config, minimal_config, path, value) -> None:
    (problem,) = problems_for(write_config, with_value(minimal_config, path, value))
    assert problem.startswith(f"{key_path(path)}: Input should be ") and ("greater" in problem or "less" in problem)


@pytest.mark.parametrize("path", SECTIONS, ids=key_path)
def test_unknown_key_in_every_section_lists_the_allowed_ones(write_config, minimal_config, path) -> None:
    (problem,) = problems_for(write_config, with_value(minimal_config, (*path, "bogus_key"), 1))
    assert problem.startswith(f"{key_path((*path, 'bogus_key'))}: unknown key; allowed keys: ")
    assert problem.split("allowed keys: ")[1].strip(), problem


@pytest.mark.parametrize(("path", "value", "message"), [
    (("name",), "../escape", "name: String should match pattern"),
    (("data", "encoding"), "utf-9", "data.encoding: unknown text encoding 'utf-9'"),
    (("data", "encoding"), "rot13", "data.encoding: unknown text encoding 'rot13'"),
    (("data", "split", "seed"), -1, "data.split.seed: Input should be greater than or equal to 0"),
    (("distill", "losses"), [], "distill.losses: List should have at least 1 item"),
    (("data", "subsample"), {"train": 0}, "data.subsample: subsample.train must be >= 1"),
], ids=["name-traversal", "encoding-typo", "encoding-not-text", "negative-seed", "no-losses", "subsample-zero"])
def test_values_of_the_right_type_but_wrong(write_config, minimal_config, path, value, message) -> None:
    (problem,) = problems_for(write_config, with_value(minimal_config, path, value))
    assert problem.startswith(message), problem


def test_every_leaf_wrong_at_once_in_the_cli(write_config, minimal_config) -> None:
    config = minimal_config
    for path, info in LEAVES:
        config = with_value(config, path, wrong_type(info.annotation))
    found = problems_for(write_config, config)
    assert len(found) == len(LEAVES)
    result = alambic("config", "check", str(write_config(config)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"invalid configuration ({len(LEAVES)} problem(s))" in result.stderr
    for path, _ in LEAVES:
        assert f"  - {key_path(path)}: " in result.stderr, key_path(path)


#: no subnormal floats: the training loop flushes denormals to zero (alambic.train.loop.fast_cpu_math) for the
#: whole process, and hypothesis refuses to draw them then
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_subnormal=False) | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                      max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(index=st.integers(0, len(LEAVES) - 1), value=VALUES)
def test_any_value_anywhere_validates_or_names_its_key(index: int, value: Any) -> None:
    path = LEAVES[index][0]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "train.tsv").write_text(rows_tsv(), encoding="utf-8")
        base = {"name": "x", "data": {"train": "train.tsv", **TSV}, "tokenizer": {}}
        config_path = Path(folder) / "run.yaml"
        config_path.write_text(yaml.safe_dump(with_value(base, path, value), allow_unicode=True), encoding="utf-8")
        try:
            load_config(config_path)
        except ConfigError as exc:
            assert exc.problems and all(p.startswith(path[0]) for p in exc.problems), exc.problems


# --- YAML and config files --------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["!!python/object:os.system {}", "!!python/object/apply:os.mkdir ['{marker}']",
                                 "!!python/object/new:os.mkdir ['{marker}']", "!!python/name:os.system"],
                         ids=["object", "object-apply", "object-new", "name"])
def test_python_tags_in_a_config_build_nothing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "ran"
    path = Path(write(tmp_path, "evil.yaml", f"name: {tag.replace('{marker}', str(marker))}\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/" in problem
    assert problem.startswith("line 1, column 7: ") and not marker.exists()


def test_python_tag_in_the_cli_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "evil.yaml", f"name: !!python/object/apply:os.mkdir ['{tmp_path / 'ran'}']\n")
    result = alambic("config", "check", path)
    assert result.returncode == 2 and "python/object/apply" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()


def test_config_file_not_utf8_is_named(tmp_path: Path) -> None:
    path = Path(write(tmp_path, "gbk.yaml", "name: 运行\n".encode("gbk")))
    with pytest.raises(ConfigError, match=r"gbk.yaml: invalid configuration .*\n  - not UTF-8 text"):
        load_config(path)


# --- faults -----------------------------------------------------------------------------------


def _kill_mid_build(root: str) -> None:
    """In a child: start building a stage, write half a file, then die by SIGKILL (lock held)."""
    def build(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half a mod")
        os.kill(os.getpid(), signal.SIGKILL)

    Store.open(root).get_or_build_stage("ab" * 16, "student", build)


def _kill_mid_write(root: str) -> None:
    """In a child: the new bytes are on disk in a scratch file; die before the rename."""
    from alambic import store as store_module

    store_module.os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    Store.open(root).write_text("notes.txt", "new content that never lands")


def run_child(target: Any, root: Path) -> int | None:
    child = multiprocessing.get_context("spawn").Process(target=target, args=(str(root),))
    child.start()
    child.join(120)
    return child.exitcode


@pytest.mark.timeout(180)
def test_process_killed_mid_build_leaves_no_artifact_and_frees_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    assert run_child(_kill_mid_build, root) == -signal.SIGKILL
    store = Store.open(root)
    assert store.load_manifest("stages/" + "ab" * 16) is None and store.list("stages") == []
    leftovers = [p.name for p in (root / "stages").iterdir()]
    assert all(name.startswith(".") for name in leftovers)  # its scratch dir and lock file, hidden

    def build(folder: Path) -> dict:
        (folder / "model.safetensors").write_bytes(b"a whole model")
        return {"rebuilt": True}

    manifest, reused = store.get_or_build_stage("ab" * 16, "student", build)  # the lock died with it
    assert (reused, manifest.meta) == (False, {"rebuilt": True})
    assert store.verify("stages/" + "ab" * 16) == manifest


@pytest.mark.timeout(180)
def test_process_killed_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    Store.open(root).write_text("notes.txt", "old")
    assert run_child(_kill_mid_write, root) == -signal.SIGKILL
    assert Store.open(root).read_bytes("notes.txt") == b"old"
    assert Store.open(root).list() == ["notes.txt"]


# --- security ---------------------------------------------------------------------------------


def tiny_checkpoint(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=False)
    return folder


class _MakeDir:
    """Unpickling this runs os.mkdir(path): the test checks the directory never appears."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("auto", [True, False], ids=["auto-class", "bert-class"])
def test_a_pickle_bearing_bin_is_refused_and_never_executed(tmp_path: Path, auto: bool) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    from alambic.train.models import load_pretrained

    folder, marker = tiny_checkpoint(tmp_path / "evil"), tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": _MakeDir(marker)}, folder / "pytorch_model.bin")
    cls = AutoModelForSequenceClassification if auto else BertForSequenceClassification
    with pytest.raises(AlambicError, match="could not load the model in .*evil"):
        load_pretrained(folder, cls, num_labels=2)
    assert not marker.exists()


def test_code_shipped_with_a_checkpoint_is_not_run_by_default(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    from alambic.train.models import load_pretrained

    folder, marker = tiny_checkpoint(tmp_path / "custom"), tmp_path / "pwned"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForSequenceClassification": "custom.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    model = load_pretrained(folder, AutoModelForSequenceClassification, num_labels=2)
    assert type(model) is BertForSequenceClassification and not marker.exists()


def test_trust_remote_code_is_off_by_default_and_warned_when_on(tmp_path: Path, monkeypatch, caplog) -> None:
    from alambic.train import teacher

    assert TokenizerConfig().trust_remote_code is False and TeacherConfig().trust_remote_code is False
    seen: list[bool] = []
    monkeypatch.setattr(teacher, "load_pretrained", lambda *a, trust_remote_code, **k: seen.append(trust_remote_code))
    spec = {"model": "someone/model", "label_names": ["a", "b"]}
    teacher.build_teacher({**spec, "trust_remote_code": False})
    teacher.build_teacher({**spec, "trust_remote_code": True})
    assert seen == [False, True]

    class Stop(Exception):
        pass

    def stop(*args: Any) -> None:
        raise Stop

    on = TeacherConfig(model="someone/model", trust_remote_code=True)
    monkeypatch.setattr(teacher, "teacher_source", stop)  # the warning comes before the model is looked for
    ctx = SimpleNamespace(config=SimpleNamespace(teacher=on), store=SimpleNamespace(get_or_build_stage=stop),
                          prepared=SimpleNamespace(tokenized_key="k", label_names=["a", "b"], tokenizer=[0] * 8))
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        teacher.train_teacher(ctx)
    vocab = write(tmp_path, "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with caplog.at_level(logging.WARNING):
        load_tokenizer(TokenizerConfig(name_or_path=vocab, trust_remote_code=True))
    messages = [r.getMessage() for r in caplog.records]
    assert "teacher.trust_remote_code is on: code shipped with someone/model will run on this machine" in messages
    assert f"tokenizer.trust_remote_code is on: code shipped with {vocab} will run on this machine" in messages


def source_calls() -> list[tuple[str, str, ast.Call]]:
    """(file:line, the called name, the call) of every call in core/ and plugins/."""
    calls = []
    for folder in ("core", "plugins"):
        for path in sorted((PROJECT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            calls += [(f"{path.relative_to(PROJECT)}:{n.lineno}", ast.unparse(n.func), n)
                      for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return calls


def keyword(call: ast.Call, name: str) -> Any:
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else "absent" if not found else "dynamic"


def test_the_source_never_unpickles_or_trusts_code_by_itself() -> None:
    calls = source_calls()
    torch_loads = [c for _, name, c in calls if name == "torch.load"]
    assert torch_loads and all(keyword(c, "weights_only") is True for c in torch_loads)
    model_loads = [(w, c) for w, name, c in calls if name.endswith("ModelForSequenceClassification.from_pretrained")]
    assert model_loads and all(keyword(c, "use_safetensors") is True for _, c in model_loads), model_loads
    assert not [w for w, _, c in calls if keyword(c, "trust_remote_code") is True]
    banned = {"pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load"}
    assert not [w for w, name, _ in calls if name in banned]
    yaml_loads = [name for _, name, _ in calls if name.startswith("yaml.") and "load" in name]
    assert yaml_loads and set(yaml_loads) == {"yaml.safe_load"}


def test_plugins_are_looked_up_only_in_the_alambic_entry_point_group(monkeypatch) -> None:
    import importlib.metadata

    from alambic import manager

    asked: list[Any] = []
    other = importlib.metadata.EntryPoint("intruder", "no_such_module_would_be_imported", "not-alambic")

    def entry_points(**kwargs: Any) -> list[importlib.metadata.EntryPoint]:
        asked.append(kwargs)
        return [] if kwargs.get("group") == "alambic" else [other]

    monkeypatch.setattr(manager.importlib.metadata, "entry_points", entry_points)
    registry = manager.build_registry(manager.get_plugin_manager(env={}))
    assert asked == [{"group": "alambic"}]
    assert registry.failures == [] and all(not r.ids() for r in registry.kinds.values())


def test_an_artifact_cannot_hold_a_link_out_of_the_store(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "artifacts")
    (tmp_path / "secret.txt").write_text("secret")
    with pytest.raises(StoreError, match="regular files only"):
        with store.build_artifact("model", kind="student") as folder:
            (folder / "weights.bin").symlink_to(tmp_path / "secret.txt")
    assert not store.exists("model") and store_files(tmp_path / "artifacts") == []


@pytest.mark.parametrize("key", ["../../etc", "a/b", "ab\\cd", ""])
def test_a_stage_key_cannot_name_a_path(tmp_path: Path, key: str) -> None:
    with pytest.raises(StoreError, match="invalid stage key"):
        Store.open(tmp_path / "artifacts").stage_path(key)
