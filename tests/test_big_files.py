"""Big files at Arrow speed: the columnar path (pyarrow.csv, Arrow compute, a NumPy split) gives the rows, checks,
messages and split that the row-by-row path gives; the automatic validation split is stratified, seeded, exact in
its class shares, and capped. (Timings: benchmarks/big_file.py.)"""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest

from finch.data import columns, readers
from finch.data.columns import hold_out, load_splits
from finch.errors import DataError


def labelled(counts: dict[str, int]) -> datasets.Dataset:
    names = sorted(counts)
    labels = [names.index(name) for name in names for _ in range(counts[name])]
    features = datasets.Features({"row": datasets.Value("int64"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"row": list(range(len(labels))), "label": labels}, features=features)


def class_counts(split: datasets.Dataset) -> list[int]:
    return np.bincount(list(split["label"]), minlength=3).tolist()


def test_the_held_out_split_is_stratified_exact_seeded_and_capped(monkeypatch):
    data = labelled({"a": 703, "b": 201, "c": 96})  # 1000 rows
    train, validation = hold_out(data, seed=42, stratify="label")
    assert len(validation) == math.ceil(0.1 * len(data)) == 100
    assert class_counts(validation) == [70, 20, 10], "each class its share, the remainders to the largest"
    assert sorted(list(train["row"]) + list(validation["row"])) == list(range(1000)), "every row once, in one split"
    again = hold_out(data, seed=42, stratify="label")
    assert list(again[1]["row"]) == list(validation["row"]), "the seed decides"
    assert list(again[0]["row"]) == list(train["row"])
    assert list(hold_out(data, seed=7, stratify="label")[1]["row"]) != list(validation["row"])
    unstratified = hold_out(data, seed=42, stratify=None)[1]
    assert len(unstratified) == 100 and list(unstratified["row"]) != list(validation["row"])
    assert list(unstratified["row"]) == list(data.train_test_split(test_size=0.1, seed=42)["test"]["row"])

    monkeypatch.setattr(columns, "HELD_OUT_MAX", 40)
    train, validation = hold_out(data, seed=42, stratify="label")
    assert len(validation) == 40 and len(train) == 960 and class_counts(validation) == [28, 8, 4]


BLANKS = ["", " ", "\u00a0", "\u200b\u200b", "\u3164", "\t \u2003"]  # spaces, NBSP, zero-width, a Hangul filler


def write_file(path, rows_of_text) -> str:
    lines = ["text,label"]
    for i, text in enumerate(rows_of_text):
        lines.append(f'"{text}",{"pos" if i % 3 else "neg"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


ARROW_READER = readers._arrow_table


def both_paths(monkeypatch, *args, **kwargs):
    """`load_splits` on the columnar path, then with Arrow's reader turned off (the row reader), and what each
    printed; the columnar path must have read the file."""
    read = []
    original = ARROW_READER

    def noted(*a, **k):
        table = original(*a, **k)
        read.append(table is not None)
        return table

    monkeypatch.setattr(readers, "_arrow_table", noted)
    fast = load_splits(*args, **kwargs)
    assert read and all(read), "the columnar reader did not read the file"
    monkeypatch.setattr(readers, "_arrow_table", lambda *a, **k: None)
    slow = load_splits(*args, **kwargs)
    return fast, slow


def rows_of(split: datasets.Dataset) -> list[tuple]:
    return list(zip(split["text"], split["label"]))


def test_the_columnar_path_gives_the_row_readers_rows_split_and_warnings(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "dull", "héllo", "日本語"]
    texts = [" ".join(rng.choice(words, 4)) for _ in range(400)]
    for position, blank in zip((5, 77, 150, 151, 260, 399), BLANKS):
        texts[position] = blank
    texts[300] = "\u00a0 visible after a no-break space"  # not blank: a word after Unicode spaces
    path = write_file(tmp_path / "train.csv", texts)
    fast, slow = both_paths(monkeypatch, path, None, seed=3)
    printed = capsys.readouterr().out
    assert "6 row(s) with empty text in text (rows 6, 78, 151, 152, 261 ...) are left out" in printed
    assert printed.count("are left out") == 2, "the same warning from both paths"
    assert fast.description == slow.description
    assert "40 validation rows" in fast.description and "stratified, seed 3" in fast.description
    assert rows_of(fast.train) == rows_of(slow.train) and rows_of(fast.validation) == rows_of(slow.validation)
    assert "\u00a0 visible after a no-break space" in list(fast.train["text"]) + list(fast.validation["text"])

    validation = write_file(tmp_path / "dev.csv", texts[:3] + ["new text here", "another new one"])
    fast, slow = both_paths(monkeypatch, path, validation)
    printed = capsys.readouterr().out
    assert printed.count("validation row(s) also appear in the training data (rows 1, 2, 3)") == 2


@pytest.mark.parametrize("content, message", [
    ('text,label\n"fine text",pos\n"more text",neg,extra\n', "line 3: 3 fields, the header has 2"),
    ('text,label\n"fine text",pos\n"more text",\n', "1 row(s) have no label (rows 2)"),
    ('text,text\n"fine text",pos\n', "the header names a column more than once"),
    ('text,label\n"fine text",pos\n"more text",pos\n', "every row has the label 'pos'"),
])
def test_the_checks_fire_on_the_columnar_path_with_the_same_messages(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="") as caught:
        load_splits(str(path), None)
    assert message in str(caught.value)


def test_no_table_is_hashed_by_pickling_it(tmp_path, monkeypatch):
    """`datasets.Dataset(table)` fingerprints an in-memory table by pickling it: a transient copy of the whole file
    and 0.6 s per 50 MB, three times on the way to training (read, blank rows dropped, held-out rows split off;
    load_splits on a 50 MB file: peak RSS 895 MB, now 657). finch's tables get a random fingerprint instead."""
    import datasets.arrow_dataset

    def refuse(*args, **kwargs):
        raise AssertionError("a table was fingerprinted by pickling it")

    monkeypatch.setattr(datasets.arrow_dataset, "generate_fingerprint", refuse)
    texts = [" " if i % 50 == 7 else f"row {i} some words" for i in range(600)]
    splits = load_splits(write_file(tmp_path / "data.csv", texts), None, seed=3)
    assert len(splits.train) + len(splits.validation) == 600 - 12  # the blank rows left out
    rows = sorted(int(t.split()[1]) for t in [*splits.train["text"], *splits.validation["text"]])
    assert rows == [i for i in range(600) if i % 50 != 7], "every non-blank row once, in one of the splits"
