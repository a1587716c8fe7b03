"""Malformed inputs: each one gives its own message, naming the file and the fix, and `finch train` exits with 2.

Every case is caught before a model is loaded: the model given is a folder that does not exist, so reaching
model loading would fail with a different message.
"""

from __future__ import annotations

import json

import pytest

from finch.cli.commands import main


def csv_file(path, text):
    path.write_text(text)
    return str(path)


def rows_csv(count=12, label=lambda i: "pos" if i % 2 else "neg"):
    return "text,label\n" + "".join(f"some words here {i},{label(i)}\n" for i in range(count))


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


CASES = {
    "missing file": (lambda d: ["--train", str(d / "absent.csv")], "absent.csv: no such file"),
    "empty file": (lambda d: ["--train", csv_file(d / "e.csv", "")], "e.csv: the file is empty"),
    "header only": (lambda d: ["--train", csv_file(d / "h.csv", "text,label\n")], "h.csv: no data rows"),
    "binary file": (lambda d: ["--train", str(_binary(d / "b.csv"))], "b.csv: this is a binary file"),
    "unsupported type": (lambda d: ["--train", csv_file(d / "x.xlsx", "a")], "unsupported file type '.xlsx'"),
    "wrong delimiter": (lambda d: ["--train", csv_file(d / "t.csv", "text\tlabel\nhello there\t1\n")],
                        "separated by tabs"),
    "semicolons": (lambda d: ["--train", csv_file(d / "s.csv", "text;label\nhello there;1\n")],
                   "separated by semicolons"),
    "ragged row": (lambda d: ["--train", csv_file(d / "r.csv", "text,label\na b c,1\nd e f,0,extra\n")],
                   "r.csv, line 3: 3 fields, the header has 2"),
    "bad json line": (lambda d: ["--train", csv_file(d / "j.jsonl", '{"text": "a b c", "label": 1}\n{"text": oops\n')],
                      "j.jsonl, line 2: not valid JSON"),
    "missing label column": (lambda d: ["--train", csv_file(d / "m.csv", rows_csv()), "--label-column", "stars"],
                             "no column 'stars'; the columns are ['text', 'label']"),
    "missing text column": (lambda d: ["--train", csv_file(d / "m.csv", rows_csv()), "--text-columns", "body"],
                            "no column 'body'"),
    "no label column": (lambda d: ["--train", csv_file(d / "n.csv", "text,other\nwords are here,1\n")],
                        "no label column among ['text', 'other']; name it with --label-column"),
    "nan labels": (lambda d: ["--train", csv_file(d / "l.csv", rows_csv(label=lambda i: "" if i in (3, 7) else "a"))],
                   "2 row(s) have no label (rows 4, 8)"),
    "mixed label types": (lambda d: ["--train", jsonl(d / "x.jsonl", [{"text": "a b c", "label": i % 3 if i != 5
                                                                        else "seven"} for i in range(12)])],
                          "the labels mix types"),
    "single class": (lambda d: ["--train", csv_file(d / "o.csv", rows_csv(label=lambda i: "only"))],
                     "every row has the label 'only'"),
    "unseen validation labels": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "--validation",
                                            csv_file(d / "v.csv", "text,label\nnew words here,maybe\n")],
                                 "label(s) ['maybe'] never occur in the training data (rows 1)"),
    "validation missing column": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "--validation",
                                             csv_file(d / "v.csv", "body,label\nnew words,pos\n")],
                                  "v.csv: no column(s) ['text']"),
    "all texts empty": (lambda d: ["--train", csv_file(d / "a.csv", "text,label\n,1\n ,0\n")], "every row's text"),
    "empty texts with --strict": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv() + ",pos\n"), "--strict"],
                                  ("1 row(s) with empty text in text (rows 13) are left out (an error because of "
                                  "--strict)")),
    "overlap with --strict": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "--validation",
                                         csv_file(d / "v.csv", "text,label\nsome words here 3,pos\n"), "--strict"],
                              "1 validation row(s) also appear in the training data"),
    "unknown metric": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "--metric", "pearson"],
                       "--metric pearson: binary tasks report loss, accuracy, f1, f1_macro, mcc"),
    "bad config key": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "--config",
                                  csv_file(d / "c.yaml", "learning_rat: 0.1\n")],
                       "unknown option(s) 'learning_rat' (did you mean 'learning_rate'"),
    "duplicated header name": (lambda d: ["--train", csv_file(d / "d.csv", "text,label,label\nsome words,1,0\n")],
                               "d.csv, line 1: the header names a column more than once: 'label' 2 times"),
    "latin-1 file": (lambda d: ["--train", _latin1(d / "l.csv")],
                     "l.csv, line 3: not valid utf-8 text: byte(s) 0xe9"),
    "corrupt parquet": (lambda d: ["--train", csv_file(d / "p.parquet", rows_csv())],
                        "p.parquet: not a valid Parquet file"),
    "symbolic link loop": (lambda d: ["--train", _loop(d / "loop.csv")], "loop.csv: a symbolic link loop"),
    "text column of objects": (lambda d: ["--train", jsonl(d / "o.jsonl", [{"text": {"title": "a b c"}, "label": i % 2}
                                                                           for i in range(12)])],
                               "column 'text': its values are objects"),
    "one column as text and label": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "--text-columns",
                                                "label", "--label-column", "label"],
                                     "column 'label' cannot be both a text column and the label"),
    "three text columns": (lambda d: ["--train", csv_file(d / "t.csv", "a,b,c,label\nx y,y z,z w,1\n"),
                                      "--text-columns", "a", "b", "c"],
                           "--text-columns names 3 columns (a, b, c); finch takes one text column, or two"),
    "only invisible texts": (lambda d: ["--train", csv_file(d / "z.csv", "text,label\n\u200b,1\n\u00a0\u2060,0\n")],
                             "every row's text (text) is empty (or only spaces and invisible characters)"),
    "an id column as the label with --strict": (
        lambda d: ["--train", csv_file(d / "i.csv", rows_csv(60, label=lambda i: f"id{i}")), "--strict"],
        "column 'label': 60 classes in 60 rows, most of them seen once; is it an id column"),
    "text column of numbers": (
        lambda d: ["--train", jsonl(d / "n.jsonl", [{"text": i, "label": i % 2} for i in range(12)])],
        "column 'text': its values are int64 (0, ...), not text"),
    "infinite regression label": (lambda d: ["--train", csv_file(d / "r.csv", rows_csv(label=lambda i: "inf" if i == 4
                                                                                         else f"{i * 0.3:.1f}"))],
                                  "regression labels must be finite numbers; rows 5 are inf"),
    "override that is not YAML": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "text_columns=[text"],
                                  "'text_columns=[text': the value is not valid YAML"),
    "validation without train": (lambda d: ["--validation", csv_file(d / "v.csv", rows_csv())],
                                 "without --train: name the training data with --train"),
    "two rows, one left to train on": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv(2))],
                                       "after holding out 1 of its 2 rows for validation, every training row has"),
    "bad override value": (lambda d: ["--train", csv_file(d / "t.csv", rows_csv()), "num_train_epochs=many"],
                           "option num_train_epochs: must be a number, but it is 'many'"),
}


def _latin1(path):
    path.write_bytes("text,label\nplain words,1\nun café crème,0\n".encode("latin-1"))
    return str(path)


def _loop(path):
    path.symlink_to(path)
    return str(path)


def _binary(path):
    path.write_bytes(b"PK\x03\x04\x00\x00binary\x00zip")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_exits_2_with_its_message(case, tmp_path, capsys):
    make_args, message = CASES[case]
    code = main(["train", "--model", str(tmp_path / "no-model-here"), "--output-dir", str(tmp_path / "out"),
                 *make_args(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2, error
    assert message in error, error
    assert "Traceback" not in error and "no-model-here" not in error, "caught before the model was loaded"


def test_hub_name_offline_suggests_local_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["train", "--model", str(tmp_path / "m"), "--train", "some-org/some-dataset-not-cached"])
    error = capsys.readouterr().err
    assert code == 2 and "loading it from the HuggingFace hub failed" in error and "pass local files" in error


def test_the_data_line_says_why_a_label_column_was_inferred(tmp_path, tiny_model_dir, capsys):
    rows = "".join(f"a long text with words number {i},{('happy', 'sad')[i % 2]}\n" for i in range(30))
    data = csv_file(tmp_path / "moods.csv", "opinion,mood\n" + rows)
    assert main(["train", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "out"), "--train", data,
                 "--max-steps", "1", "--no-bf16", "--disable-tqdm", "--eval-strategy", "no", "--save-strategy", "no",
                 "--no-load-best-model-at-end"]) == 0
    assert ("data: text opinion, label mood (inferred: the one column beside the text with few distinct values, 2): "
            "binary classification, 2 labels: happy, sad") in capsys.readouterr().out
