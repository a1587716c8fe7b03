"""Columns, texts and labels (`finch.data.columns`): which columns are the text and the label, and the mistakes in them
that would otherwise train something wrong in silence. The functions are called directly: no model, no CLI."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finch.data.columns import (
    Checks,
    drop_empty_texts,
    find_columns,
    find_empty_texts,
    infer_columns,
    is_blank,
    load_splits,
)
from finch.data.readers import iter_chunks
from finch.errors import DataError


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return str(path)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def reviews(count=40):
    return [(f"a review with some words number {i}", i % 5 + 1) for i in range(count)]


# 2. texts made only of whitespace or invisible characters

INVISIBLE_TEXTS = ["\u200b", "\u200c\u200d", "\ufeff", "\u2060", "\u00a0", "\u00a0 \u200b\t", "\u3000", "\u2002\u2009",
                   "\u202f", "\u3164", "\n\r\t", "\x00"]


@pytest.mark.parametrize("text", INVISIBLE_TEXTS, ids=[repr(t) for t in INVISIBLE_TEXTS])
def test_texts_of_only_invisible_characters_are_empty(text):
    assert is_blank(text)


def test_texts_with_a_visible_character_are_not_empty():
    assert not any(is_blank(t) for t in ["a", "\u200bx", "\u00a0ok\u00a0", "0", "  é ", "東"])
    assert is_blank(None) and is_blank(float("nan")) and is_blank("")


def test_invisible_texts_are_dropped_with_a_warning_and_all_of_them_is_an_error(capsys):
    split = datasets.Dataset.from_dict({"text": ["good words", "\u200b\u200b", "\u00a0", "more words"],
                                        "label": [1, 0, 1, 0]})
    kept = drop_empty_texts(split, ["text"], "label", "f.csv", Checks())
    assert kept["text"][:] == ["good words", "more words"]
    assert "f.csv: 2 row(s) with empty text in text (rows 2, 3) are left out" in capsys.readouterr().out
    blank = datasets.Dataset.from_dict({"text": ["\u200b", "\ufeff "], "label": [1, 0]})
    with pytest.raises(DataError, match=r"f.csv: every row's text \(text\) is empty \(or only spaces and invisible"):
        drop_empty_texts(blank, ["text"], "label", "f.csv", Checks())


def test_find_empty_texts_takes_a_chunk_of_rows_and_numbers_them_in_the_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "some words"}, {"text": "\u200b"}, {"text": None},
                                              {"text": {"title": "t", "body": "b"}}])
    chunk = next(iter_chunks(path, 3))
    assert find_empty_texts(chunk, ["text"], path) == [1, 2]
    assert find_empty_texts(datasets.Dataset.from_list(chunk), ["text"], path) == [1, 2]
    with pytest.raises(DataError, match=r"p.jsonl, row 4, column 'text': a JSON object \(\{\"title\""):
        find_empty_texts([{"text": "fine"}, {"text": {"title": "t", "body": "b"}}], ["text"], path, first_row=3)


# 3. nested values

def test_an_object_as_text_is_an_error_naming_the_column_its_fields_and_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": {"title": "t", "body": f"words {i}"}, "label": i % 2}
                                              for i in range(10)])
    with pytest.raises(DataError) as caught:
        load_splits(path, None)
    message = str(caught.value)
    assert f"{path}, column 'text': its values are objects (JSON objects, or Parquet structs) with fields 'title', " \
           f"'body', not text" in message
    assert "naming it 'text.title') and pass it with --text-columns" in message


def test_a_parquet_struct_as_text_and_a_list_as_text_are_errors(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"review": [{"body": f"words {i}", "stars": 3} for i in range(10)],
                             "label": [i % 2 for i in range(10)]}), path)
    with pytest.raises(DataError, match="column 'review': its values are objects .* with fields 'body', 'stars'"):
        load_splits(str(path), None)
    lists = write_jsonl(tmp_path / "l.jsonl", [{"text": ["some", "words"], "label": i % 2} for i in range(10)])
    with pytest.raises(DataError, match="column 'text': its values are lists, not text; join each list"):
        load_splits(lists, None, text_columns=["text"])


@pytest.mark.parametrize("label", [{"name": "pos"}, [{"name": "pos"}], [["pos"]]], ids=["object", "list of objects",
                                                                                         "list of lists"])
def test_an_object_as_label_is_an_error(tmp_path, label):
    path = write_jsonl(tmp_path / "o.jsonl", [{"text": f"some words {i}", "label": label} for i in range(10)])
    with pytest.raises(DataError, match=f"{path}, column 'label': .*a label is a class name, a number, or a list of "
                                        f"class names .*--label-column"):
        load_splits(path, None)


@pytest.mark.parametrize("labels", [["sport", "tech", "money"], [1, 2, 3]], ids=["names", "numbers"])
def test_lists_of_names_or_numbers_are_multilabel(tmp_path, labels):
    records = [{"text": f"some words {i}", "labels": labels[:1 + i % 3]} for i in range(30)]
    splits = load_splits(write_jsonl(tmp_path / "m.jsonl", records), None)
    assert splits.task.kind == "multilabel" and splits.task.label_names == sorted(map(str, labels))


# 4. a label that is nearly one class per row

def test_a_label_column_with_a_class_per_row_warns_and_is_an_error_with_strict(tmp_path, capsys):
    path = write_csv(tmp_path / "ids.csv", ["text", "label"], [(f"words of row {i}", f"id-{i}") for i in range(200)])
    load_splits(path, None)
    warning = capsys.readouterr().out
    assert (f"warning: {path}, column 'label': 200 classes in 200 rows, most of them seen once; is it an id column, "
            f"or a text column taken as the label? Name the label column with --label-column") in warning
    with pytest.raises(DataError, match="200 classes in 200 rows.*an error because of --strict"):
        load_splits(path, None, strict=True)


def test_many_classes_with_examples_each_do_not_warn(tmp_path, capsys):
    path = write_csv(tmp_path / "intents.csv", ["text", "intent"],
                     [(f"words of row {i}", f"intent-{i % 40}") for i in range(400)])
    assert load_splits(path, None, strict=True).task.num_labels == 40
    assert "warning" not in capsys.readouterr().out


# 5. the same column as text and label; too many text columns

def test_one_column_as_text_and_label_is_an_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["text", "label"], reviews())
    with pytest.raises(DataError, match=f"{path}: column 'label' cannot be both a text column and the label"):
        load_splits(path, None, text_columns=["label"], label_column="label")


def test_three_text_columns_are_an_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "label"], [("x y", "y z", "z w", i % 2) for i in range(10)])
    with pytest.raises(DataError, match=f"{path}: --text-columns names 3 columns \\(a, b, c\\); finch takes one text "
                                        f"column, or two for sentence pairs"):
        load_splits(path, None, text_columns=["a", "b", "c"])
    with pytest.raises(DataError, match="--text-columns names 'a' twice"):
        load_splits(path, None, text_columns=["a", "a"])


def test_a_label_named_like_a_text_column_is_not_taken_from_the_given_texts(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label", "category"], [(f"words in row {i}", i % 3) for i in range(30)])
    texts, label = infer_columns(datasets.Dataset.from_csv(path), path, text_columns=["label"])
    assert (texts, label) == (["label"], "category")


# 6. the label inferred by name (stars, rating...) or by its values, and the reason said

@pytest.mark.parametrize("name", ["stars", "rating", "Ratings", "grade", "emotion", "polarity", "overall"])
def test_rating_style_columns_are_labels_by_name(tmp_path, name):
    path = write_csv(tmp_path / "r.csv", ["id", "review", name], [(i, *row) for i, row in enumerate(reviews())])
    splits = load_splits(path, None)
    assert splits.text_columns == ["review"] and f"label {name}: multiclass classification, 5 labels" in \
        splits.description


def test_a_label_without_a_known_name_is_inferred_by_its_values_and_the_reason_shown(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["row_id", "opinion", "mood"],
                     [(i, f"a long text with words number {i}", ("happy", "sad", "meh")[i % 3]) for i in range(60)])
    dataset = datasets.Dataset.from_csv(path)
    columns = find_columns(dataset, path)
    assert (columns.texts, columns.label) == (["opinion"], "mood")
    splits = load_splits(path, None)
    assert ("text opinion, label mood (inferred: the one column beside the text with few distinct values, 3): "
            "multiclass classification, 3 labels: happy, meh, sad") in splits.description


def test_two_possible_labels_are_named_in_the_error(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["opinion", "mood", "shop"],
                     [(f"a long text with words number {i}", ("happy", "sad")[i % 2], ("a", "b", "c")[i % 3])
                      for i in range(60)])
    with pytest.raises(DataError, match=r"no label column among \['opinion', 'mood', 'shop'\]; name it with "
                                        r"--label-column; by their values, 'mood' or 'shop' could be it"):
        load_splits(path, None)


# held-out validation when stratifying by class is impossible (it was sklearn's ValueError)

def test_classes_too_rare_to_stratify_are_held_out_at_random_with_a_warning(tmp_path, capsys):
    rows = [(f"words of row {i}", "common" if i else "rare") for i in range(20)]
    path = write_csv(tmp_path / "r.csv", ["text", "label"], rows)
    splits = load_splits(path, None)
    assert "10% of" in splits.description and "stratified" not in splits.description
    assert ("1 class(es) have a single row ('rare'), too few to hold out validation stratified by label; it is held "
            "out at random instead. Add rows, or pass a validation file with --validation") in capsys.readouterr().out
    few = write_csv(tmp_path / "f.csv", ["text", "label"], [(f"words of row {i}", i % 5) for i in range(30)])
    with pytest.raises(DataError, match=r"10% of the rows \(3\) are fewer than the 5 classes.*--strict"):
        load_splits(few, None, strict=True)
    one = write_csv(tmp_path / "o.csv", ["text", "label"], [("words of row", 0.5)])
    with pytest.raises(DataError, match="o.csv: 1 row\\(s\\): too few to train on and hold out validation"):
        load_splits(one, None)
