"""Reading files (`finch.data.readers`): what is valid is read as it is; what is not is a `DataError` that names the
file, the place and the fix, the same from `read_file` and from the streaming `iter_chunks` (which `finch predict`
uses).

The functions are called directly: no model, no CLI.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finch.data import readers as sources
from finch.data.columns import load_splits
from finch.data.readers import iter_chunks, read_file, read_source
from finch.errors import DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def rows_text(count=12, separator=","):
    return f"text{separator}label\n" + "".join(f"some words here {i}{separator}{'pos' if i % 2 else 'neg'}\n"
                                               for i in range(count))


def both_readers(path, **options):
    """The DataError messages of `read_file` and of `iter_chunks` for `path` (they must be the same)."""
    messages = []
    for read in (lambda: read_file(path, **options), lambda: list(iter_chunks(path, 4, **options))):
        with pytest.raises(DataError) as caught:
            read()
        messages.append(str(caught.value))
    return messages


# 1. duplicated header names

@pytest.mark.parametrize(("header", "message"), [
    ("text,label,label", "'label' 2 times (columns 2, 3)"),
    ("text,text,label", "'text' 2 times (columns 1, 2)"),
    ("text\tlabel\tlabel", "'label' 2 times (columns 2, 3)"),
])
def test_duplicated_header_names_are_an_error_naming_them_and_the_file(tmp_path, header, message):
    separator = "\t" if "\t" in header else ","
    path = write(tmp_path / ("d.tsv" if separator == "\t" else "d.csv"),
                 header + "\n" + separator.join(["a b c", "1", "2"]) + "\n")
    for error in both_readers(path):
        assert f"{path}, line 1: the header names a column more than once: {message}" in error
        assert "give each column its own name" in error


# 7. fields over csv's 128 KiB limit

@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_fields_over_128_kib_are_read_whole(tmp_path, suffix):
    separator = "\t" if suffix == ".tsv" else ","
    long_text = "word " * 40_000  # 200 KB
    path = write(tmp_path / f"long{suffix}", f"text{separator}label\n{long_text}{separator}1\nshort{separator}0\n")
    assert read_file(path)["text"][:] == [long_text, "short"]
    assert [row["text"] for chunk in iter_chunks(path, 1) for row in chunk] == [long_text, "short"]


def test_a_csv_error_names_the_file_and_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FIELD_SIZE_LIMIT", 1000)  # a limit that a test can reach: csv.Error's path
    path = write(tmp_path / "c.csv", "text,label\nshort,1\n" + "x" * 2000 + ",0\n")
    try:
        for error in both_readers(path):
            assert f"{path}, line 3: field larger than field limit (1000)" in error
    finally:
        csv.field_size_limit(sources.FIELD_SIZE_LIMIT)


# 8. files that cannot be read, links

UNREADABLE = """
import os, sys
from finch.errors import DataError
from finch.data.readers import read_source
os.setuid(65534)  # nobody: root reads any file, so the test drops to a user that permissions apply to
try:
    read_source(sys.argv[1])
except DataError as error:
    print(error)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs os.setuid")
def test_a_file_without_read_permission():
    script = UNREADABLE if os.geteuid() == 0 else UNREADABLE.replace("os.setuid(65534)", "")
    with tempfile.TemporaryDirectory() as folder:  # not pytest's tmp_path: its base folder is private to root
        os.chmod(folder, 0o755)
        path = write(Path(folder) / "secret.csv", rows_text())
        path.chmod(0o000)
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                              check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"{path}: permission denied; make the file readable (chmod a+r {path})" in done.stdout


def test_a_symbolic_link_loop(tmp_path):
    loop = tmp_path / "loop.csv"
    loop.symlink_to(tmp_path / "other.csv")
    (tmp_path / "other.csv").symlink_to(loop)
    for read in (read_source, read_file, lambda p: list(iter_chunks(p, 4))):
        with pytest.raises(DataError, match="loop.csv: a symbolic link loop"):
            read(loop)


def test_a_dangling_symbolic_link_says_where_it_points(tmp_path):
    link = tmp_path / "data.csv"
    link.symlink_to("moved/data.csv")
    for read in (read_source, read_file):
        with pytest.raises(DataError) as caught:
            read(link)
        assert (f"{link}: a symbolic link to moved/data.csv ({tmp_path / 'moved' / 'data.csv'}), which does not "
                f"exist") in str(caught.value)


def test_a_path_under_a_file_and_a_folder_named_like_a_file(tmp_path):
    file = write(tmp_path / "data.csv", rows_text())
    with pytest.raises(DataError, match="a part of the path before its name is a file, not a folder"):
        read_source(file / "train.csv")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="folder.csv: a folder, not a file"):
        read_file(folder)


# 9. UTF-16 and UTF-32

@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_unicode_files_with_and_without_a_byte_order_mark_are_read(tmp_path, encoding, suffix):
    """Excel's "Unicode text" export is UTF-16; utf-16 writes a byte-order mark, utf-16-le/be do not."""
    records = [{"text": "café crème, très bon", "label": "pos"}, {"text": "naïve — 東京 ✓", "label": "neg"}]
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        separator = "\t" if suffix == ".tsv" else ","
        quote = (lambda v: f'"{v}"') if separator == "," else (lambda v: v)
        text = f"text{separator}label\n" + "".join(f"{quote(r['text'])}{separator}{r['label']}\n" for r in records)
    path = write(tmp_path / f"u{suffix}", text, encoding)
    assert read_file(path).to_list() == records
    assert next(iter_chunks(path, 10)) == records


def test_utf16_can_also_be_named(tmp_path):
    path = write(tmp_path / "u.csv", "text,label\nwörds here,1\n", "utf-16-le")
    assert read_file(path, encoding="utf-16-le")["text"][:] == ["wörds here"]


def test_an_encoding_that_does_not_fit_the_file_is_a_data_error(tmp_path):
    """Codecs fail in more ways than an undecodable byte: each is the file's problem, said with the fix."""
    path = write(tmp_path / "u.csv", "text,label\nwords here,1\nmore words,0\n")  # UTF-8, no byte-order mark
    with pytest.raises(DataError, match=r"--encoding utf-16 needs a byte-order mark.*pass --encoding utf-16-le"):
        read_file(path, encoding="utf-16")
    with pytest.raises(DataError, match=r"--encoding utf-32 needs a byte-order mark"):
        next(iter_chunks(path, 5, encoding="utf-32"))
    for codec in ("rot13", "base64", "zip"):
        with pytest.raises(DataError, match=f"encoding '{codec}': not a text encoding; use e.g. utf-8"):
            read_file(path, encoding=codec)
    bare = write(tmp_path / "le.csv", "text,label\nwörds here,1\n", "utf-16-le")
    assert read_file(bare, encoding="utf-16")["text"][:] == ["wörds here"]  # said utf-16, wrote no mark: read


def test_a_binary_file_is_still_called_binary(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"PK\x03\x04\x00\x00binary\x00zip" * 10)
    for error in both_readers(path):
        assert f"{path}: this is a binary file, not CSV text" in error


# 10. other encodings

def test_a_latin1_file_names_the_line_the_bytes_and_the_fix(tmp_path):
    path = write(tmp_path / "excel.csv", "text,label\nplain words,1\nun café crème,0\n", "latin-1")
    for error in both_readers(path):
        assert f"{path}, line 3: not valid utf-8 text: byte(s) 0xe9 in 'un caf\\\\xe9 cr\\\\xe8me,0'" in error
        assert "iconv -f cp1252 -t utf-8 excel.csv > excel-utf8.csv" in error
        assert "--encoding cp1252" in error and "--encoding latin-1" in error


def test_the_line_is_right_after_a_long_valid_start_and_in_json_lines(tmp_path):
    lines = [json.dumps({"text": f"row {i} " * 20, "label": i % 2}) for i in range(2000)]
    path = write(tmp_path / "x.jsonl", "\n".join(lines) + "\n")
    path.write_bytes(path.read_bytes() + b'{"text": "bad \xff byte", "label": 1}\n')
    for error in both_readers(path):
        assert f"{path}, line 2001: not valid utf-8 text: byte(s) 0xff" in error


def test_the_encoding_parameter_reads_latin1_everywhere(tmp_path):
    path = write(tmp_path / "l.csv", "text,label\n" + "".join(f"café {i} crème brûlée,{i % 2}\n" for i in range(20)),
                 "cp1252")
    assert read_file(path, encoding="latin-1")["text"][0] == "café 0 crème brûlée"
    assert read_source(path, encoding="cp1252")["data"]["text"][1] == "café 1 crème brûlée"
    assert next(iter_chunks(path, 5, encoding="cp1252"))[0]["text"] == "café 0 crème brûlée"
    splits = load_splits(str(path), None, encoding="cp1252")
    assert "café" in splits.train["text"][0]
    with pytest.raises(DataError, match="encoding 'klingon': unknown; use e.g. utf-8, cp1252"):
        read_file(path, encoding="klingon")


# 11. corrupt Parquet

@pytest.mark.parametrize("damage", ["truncated", "another format", "overwritten"])
def test_a_corrupt_parquet_file_is_named(tmp_path, damage):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["some words here"] * 500, "label": [1, 0] * 250}), path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "another format": b"text,label\nwords,1\n",
                      "overwritten": data[:20] + b"x" * 200 + data[220:]}[damage])
    for error in both_readers(path):
        assert f"{path}: not a valid Parquet file (" in error and "truncated" in error and "Export it again" in error


def test_parquet_is_read_whole_and_by_record_batches(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": [f"words {i}" for i in range(10)], "label": [i % 2 for i in range(10)]}), path)
    assert read_file(path)["label"][:] == [i % 2 for i in range(10)]
    assert [len(chunk) for chunk in iter_chunks(path, 4)] == [4, 4, 2]
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    for error in both_readers(path):
        assert f"{path}: no data rows" in error


# 12. the rest of read errors; a bug keeps its traceback

@pytest.mark.parametrize(("name", "content", "message"), [
    ("a.json", '[{"text": "a b", "label": 1},\n {"text": oops}]', "a.json, line 2: not valid JSON"),
    ("o.json", '{\n "text": "a b", "label": 1\n}\n', ("o.json, line 1: not valid JSON (Expecting property name "
                                                     "enclosed in double quotes); each line must be one JSON object "
                                                     "(or the whole file one array of them")),
    ("n.jsonl", '{"text": "a b", "label": 1}\n[1, 2]\n', "n.jsonl, line 2: [1, 2] is not a JSON object"),
    ("k.jsonl", '{"text": "a b", "label": 1, "label": 2}\n', ("k.jsonl, line 1: the object names key(s) ['label'] "
                                                             "more than once")),
    ("r.csv", "text,label\n\na b c,1\n\nd e f,0,extra\n", "r.csv, line 5: 3 fields, the header has 2"),
    ("q.csv", 'text,label\n"a b\nc d",1\ne f,0,extra\n', "q.csv, line 4: 3 fields, the header has 2"),
    ("h.tsv", "text\tlabel\n\n\n", "h.tsv: no data rows"),
    ("e.jsonl", "\n\n", "e.jsonl: no data rows"),
])
def test_malformed_files_give_the_same_message_from_both_readers(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    for error in both_readers(path):
        assert message in error, error


def test_a_bug_inside_reading_keeps_its_traceback(tmp_path, monkeypatch):
    path = write(tmp_path / "t.csv", rows_text())

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(sources, "_check_header", broken)
    with pytest.raises(KeyError):
        read_file(path)


# D. streaming

def test_iter_chunks_streams_and_reports_a_late_problem_after_the_good_chunks(tmp_path):
    path = write(tmp_path / "late.csv", rows_text(10) + "a b c,1,extra\n")
    chunks = iter_chunks(path, 4)
    assert [len(next(chunks)), len(next(chunks))] == [4, 4]  # read lazily: the bad line 12 is not reached yet
    with pytest.raises(DataError, match="late.csv, line 12: 3 fields"):
        next(chunks)


def test_iter_chunks_reads_json_arrays_and_lines(tmp_path):
    records = [{"text": f"words {i}", "label": i % 2} for i in range(5)]
    array = write(tmp_path / "a.json", json.dumps(records))
    lines = write(tmp_path / "l.json", "".join(json.dumps(r) + "\n" for r in records))
    for path in (array, lines):
        assert [row for chunk in iter_chunks(path, 2) for row in chunk] == records
        assert read_file(path).to_list() == records


def test_json_keys_missing_from_the_first_record_are_kept(tmp_path):
    path = write(tmp_path / "k.jsonl", '{"text": "a b"}\n{"text": "c d", "label": 1}\n')
    assert read_file(path).to_list() == [{"text": "a b", "label": None}, {"text": "c d", "label": 1}]


def test_excels_sep_line_is_honoured_and_another_delimiter_named(tmp_path):
    (tmp_path / "e.csv").write_text("sep=,\ntext,label\nhello there,pos\nbye now,neg\n")
    data = read_file(tmp_path / "e.csv")
    assert data.column_names == ["text", "label"] and data["text"] == ["hello there", "bye now"]
    assert [len(chunk) for chunk in iter_chunks(tmp_path / "e.csv", 10)] == [2]
    (tmp_path / "s.csv").write_text("sep=;\ntext;label\nhello there;pos\n")
    with pytest.raises(DataError, match=r"s.csv, line 1: Excel's 'sep=;' line says the columns are separated by ';'"):
        read_file(tmp_path / "s.csv")


@pytest.mark.parametrize("url", ["https://example.com/train.csv", "s3://bucket/train.parquet"])
def test_a_url_is_named_as_one_with_the_fix(url):
    with pytest.raises(DataError, match="not URLs; download the file first"):
        read_source(url)
    with pytest.raises(DataError, match="not URLs"):
        next(iter_chunks(url, 10))
