"""The row readers (through the files source): every supported layout parses, every bad input names
its file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alambic.config import DataConfig
from alambic.data.dataset import column
from alambic.data.report import DataReport
from alambic.errors import DataError
from alambic.plugins.data_sources import FilesSource

NAMES_ZH = ["财经", "房产", "股票", "教育", "科技", "社会", "时政", "体育", "游戏", "娱乐"]


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def load(**options: Any) -> tuple[Any, DataReport]:
    config = DataConfig(**options)
    report = DataReport(on_bad_row=config.bad_rows)
    return FilesSource().load(config, report), report


def rows(ds: Any) -> list[tuple[str, str]]:
    """(text, label name) pairs: what a split holds, independent of label ids."""
    names = ds.features["label"].names
    return [(t, names[i]) for t, i in zip(column(ds, "text"), column(ds, "label"), strict=True)]


TSV = "体育新闻一则\t7\n股市大涨\t2\n房价又涨了\t1\n"


# --- layouts that work -----------------------------------------------------------------------


def test_tsv_without_header_and_label_names_file(tmp_path: Path) -> None:
    names = write(tmp_path, "class.txt", "\n".join(NAMES_ZH) + "\n\n")
    dsd, report = load(train=write(tmp_path, "train.txt", TSV), label_names=names,
                       text_column=0, label_column=1)
    assert rows(dsd["train"]) == [("体育新闻一则", "体育"), ("股市大涨", "股票"), ("房价又涨了", "房产")]
    assert dsd["train"].features["label"].names == NAMES_ZH
    assert report.skipped == 0 and list(dsd) == ["train"]


def test_ids_without_label_names_are_named_by_their_string(tmp_path: Path) -> None:
    dsd, _ = load(train=write(tmp_path, "t.tsv", "a\t10\nb\t2\nc\t10\n"), text_column=0, label_column=1)
    assert dsd["train"].features["label"].names == ["2", "10"]  # numeric order, not "10" < "2"
    assert rows(dsd["train"]) == [("a", "10"), ("b", "2"), ("c", "10")]


def test_csv_with_header_quotes_and_label_names_by_name(tmp_path: Path) -> None:
    text = 'id,label,text\n1,neg,"差评, 很差"\n2,pos,"好评 ""推荐"""\n3,pos,"两行\n文本"\n'
    dsd, _ = load(train=write(tmp_path, "train.csv", text), label_names=["pos", "neg"])
    assert rows(dsd["train"]) == [("差评, 很差", "neg"), ('好评 "推荐"', "pos"), ("两行\n文本", "pos")]
    assert dsd["train"].features["label"].names == ["pos", "neg"]


def test_labels_as_names_without_label_names_are_sorted(tmp_path: Path) -> None:
    dsd, _ = load(train=write(tmp_path, "t.csv", "text,label\nx,sports\ny,finance\n"), label_type="name")
    assert dsd["train"].features["label"].names == ["finance", "sports"]
    assert rows(dsd["train"]) == [("x", "sports"), ("y", "finance")]


def test_jsonl_with_int_and_string_keys(tmp_path: Path) -> None:
    lines = [{"sentence": "你好", "y": 1}, {"sentence": "再见", "y": 0, "extra": True}]
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n"
    path = write(tmp_path, "train.jsonl", text)
    dsd, _ = load(train=path, text_column="sentence", label_column="y", label_names=["neg", "pos"])
    assert rows(dsd["train"]) == [("你好", "pos"), ("再见", "neg")]


def test_parquet_by_name_and_by_index(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"label": [0, 1, 1], "text": ["甲", "乙", "丙"]}), path)
    by_name, _ = load(train=str(path), label_names=["a", "b"])
    by_index, _ = load(train=str(path), text_column=1, label_column=0, label_names=["a", "b"])
    assert rows(by_name["train"]) == rows(by_index["train"]) == [("甲", "a"), ("乙", "b"), ("丙", "b")]


def test_bom_and_crlf_are_transparent(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", b"\xef\xbb\xbftext,label\r\n\xe4\xbd\xa0\xe5\xa5\xbd,1\r\nbye,0\r\n")
    dsd, _ = load(train=path)
    assert rows(dsd["train"]) == [("你好", "1"), ("bye", "0")]


def test_explicit_encoding_reads_gbk(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", "财经新闻\t0\n".encode("gbk"))
    dsd, _ = load(train=path, text_column=0, label_column=1, encoding="gbk")
    assert rows(dsd["train"]) == [("财经新闻", "0")]


# --- bad rows: file and line named, error or skip ----------------------------------------------

BAD_TSV = "好新闻\t1\n缺标签\n   \t0\n股市\t9\n多一列\t1\textra\n正常\t0\n"


def test_bad_tsv_line_is_named_in_error_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "train.tsv", BAD_TSV)
    with pytest.raises(DataError, match=rf"^{path}:2: expected 2 columns, found 1"):
        load(train=path, text_column=0, label_column=1)


def test_skip_mode_counts_and_keeps_the_good_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "train.tsv", BAD_TSV)
    dsd, report = load(train=path, text_column=0, label_column=1, bad_rows="skip", label_names=["a", "b"])
    assert rows(dsd["train"]) == [("好新闻", "b"), ("正常", "a")]
    assert report.skipped == 4
    assert [(r.line, r.reason.split(" (")[0].split(" [")[0]) for r in report.bad_rows] == [
        (2, "expected 2 columns, found 1"),
        (3, "empty text"),
        (5, "expected 2 columns, found 3"),
        (4, "label '9' not in label names"),  # labels are checked once the file is read
    ]
    assert str(report.bad_rows[0]) == f"{path}:2: expected 2 columns, found 1"


def test_label_absent_from_label_file_names_line_and_names(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "text,label\n好,pos\n坏,bad\n")
    with pytest.raises(DataError, match=rf"{path}:3: label 'bad' not in label names \[pos, neg\]"):
        load(train=path, label_names=["pos", "neg"])


def test_gbk_bytes_in_utf8_file_name_the_line(tmp_path: Path) -> None:
    data = "正常\t0\n".encode() + "财经\t1\n".encode("gbk")
    path = write(tmp_path, "t.tsv", data)
    with pytest.raises(DataError, match=rf"^{path}:2: cannot decode byte 0x[0-9a-f]{{2}} .* GBK"):
        load(train=path, text_column=0, label_column=1)


def test_nul_byte_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", b"ok\t0\nbad\x00text\t1\n")
    with pytest.raises(DataError, match=rf"^{path}:2: NUL byte at byte 4"):
        load(train=path, text_column=0, label_column=1)


def test_unreadable_row_is_named_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", "ok\t0\nstray\rreturn\t1\nnext\t1\n")  # a lone CR inside a line
    dsd, report = load(train=path, text_column=0, label_column=1, bad_rows="skip")
    assert rows(dsd["train"]) == [("ok", "0"), ("next", "1")]
    assert str(report.bad_rows[0]).startswith(f"{path}:2: unreadable TSV row: ")


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"text": "a", "label": 0}\n{"text": "b", label: 1}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        load(train=path)


# --- bad files: one clear message --------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_empty_file_is_named(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, "train.tsv", content)
    with pytest.raises(DataError, match=rf"^{path}: file is empty$"):
        load(train=path, text_column=0, label_column=1)


def test_header_only_has_no_data_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "text,label\n")
    with pytest.raises(DataError, match=rf"^{path}: no data rows$"):
        load(train=path)


def test_missing_column_names_the_columns_present(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "sentence,label\n好,0\n")
    expected = rf"{path}:1: no column 'text' \(data.text_column\); columns: sentence, label"
    with pytest.raises(DataError, match=expected):
        load(train=path)


def test_column_name_without_header_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", TSV)
    with pytest.raises(DataError, match="names a column, but line 1 is not a header.*0-based column index"):
        load(train=path)


def test_unannounced_header_is_suggested(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", "headline\tlabel\n" + TSV)
    with pytest.raises(DataError, match=r"mixed label types: line 2 has id '7' but line 1 has name 'label'.*"
                                        r"is line 1 a header\? set data.header: true"):
        load(train=path, text_column=0, label_column=1, header=False)


def test_mixed_label_types_name_one_line_of_each(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "text,label\na,1\nb,sports\n")
    expected = r"mixed label types: line 2 has id '1' but line 3 has name 'sports'"
    with pytest.raises(DataError, match=expected):
        load(train=path)


def test_duplicate_label_name_is_named(tmp_path: Path) -> None:
    names = write(tmp_path, "names.txt", "a\nb\na\n")
    with pytest.raises(DataError, match=rf"{names}:3: label name 'a' repeats line 1"):
        load(train=write(tmp_path, "t.tsv", TSV), text_column=0, label_column=1, label_names=names)


def test_all_rows_bad_in_skip_mode_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", "\t1\n \t2\n")
    with pytest.raises(DataError, match=rf"^{path}: all 2 row\(s\) are bad; the first: {path}:1: empty text$"):
        load(train=path, text_column=0, label_column=1, bad_rows="skip")


def test_every_label_unknown_names_the_first_bad_row_and_counts_all(tmp_path: Path) -> None:
    # line 2 fails while reading, lines 3-4 once labels are checked: all three count, line 2 is named
    path = write(tmp_path, "t.csv", "text,label\n ,pos\n好,x\n坏,y\n")
    with pytest.raises(DataError, match=rf"^{path}: all 3 row\(s\) are bad; the first: {path}:2: empty text$"):
        load(train=path, label_names=["pos", "neg"], bad_rows="skip")


def test_validation_without_a_known_label_names_its_first_bad_row(tmp_path: Path) -> None:
    valid = write(tmp_path, "v.jsonl", '{"text": "新闻", "label": 7}\n{"text": "又一则", "label": 8}\n')
    expected = rf"^{valid}: all 2 row\(s\) are bad; the first: {valid}:1: label 7 not in label names \[0=0, 1=1\]$"
    with pytest.raises(DataError, match=expected):
        load(train=write(tmp_path, "t.jsonl", '{"text": "好", "label": 0}\n{"text": "坏", "label": 1}\n'),
             validation=valid, bad_rows="skip")


def test_unknown_extension_asks_for_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot tell the format.*'\.xlsx'.*set data.format"):
        load(train=write(tmp_path, "t.xlsx", TSV))
