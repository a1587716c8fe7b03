"""The tokenization cache: a second run of the same job skips tokenizing; any change to its inputs does not."""

from __future__ import annotations

import datasets
import pytest

from finch.data.tokenize import cache_key, tokenize_splits


class CountingTokenizer:
    """Wraps a real tokenizer and counts the texts it is asked to encode."""

    def __init__(self, tokenizer):
        self.inner, self.texts_encoded = tokenizer, 0
        self.backend_tokenizer = tokenizer.backend_tokenizer

    def __call__(self, *texts, **kwargs):
        self.texts_encoded += len(texts[0])
        return self.inner(*texts, **kwargs)


def pairs(n: int = 40) -> dict[str, datasets.Dataset]:
    rows = {"sentence1": [f"the cat sat on mat {i}" for i in range(n)],
            "sentence2": [f"a dog lay on rug number {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    return {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows).select(range(8))}


def test_second_run_reuses_the_tokenized_data(tokenizer, tmp_path):
    columns = ["sentence1", "sentence2"]
    first_tokenizer, second_tokenizer = CountingTokenizer(tokenizer), CountingTokenizer(tokenizer)
    first = tokenize_splits(pairs(), columns, first_tokenizer, 32, cache_dir=tmp_path)
    second = tokenize_splits(pairs(), columns, second_tokenizer, 32, cache_dir=tmp_path)
    assert first_tokenizer.texts_encoded == 48 and second_tokenizer.texts_encoded == 0
    assert list(second["train"]["input_ids"]) == list(first["train"]["input_ids"])
    assert list(second["train"]["label"]) == [i % 2 for i in range(40)]
    train = pairs()["train"]
    expected = tokenizer(list(train["sentence1"]), list(train["sentence2"]), truncation=True, max_length=32)
    assert list(second["train"]["input_ids"]) == expected["input_ids"]
    assert "sentence1" not in second["train"].column_names


def test_key_changes_with_texts_labels_settings_and_tokenizer(tokenizer):
    columns = ["sentence1", "sentence2"]
    base = cache_key(pairs(), columns, tokenizer, 32)
    assert cache_key(pairs(), columns, tokenizer, 32) == base
    edited = pairs()
    edited["train"] = edited["train"].map(lambda row, i: {"sentence2": row["sentence2"] + ("!" if i == 7 else "")},
                                          with_indices=True)
    relabelled = pairs()
    relabelled["validation"] = relabelled["validation"].map(lambda row: {"label": 1 - row["label"]})
    other_vocab = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    other_vocab.add_tokens(["finchword"])

    class Other:
        backend_tokenizer = other_vocab

    assert len({base, cache_key(edited, columns, tokenizer, 32), cache_key(relabelled, columns, tokenizer, 32),
                cache_key(pairs(), columns, tokenizer, 64), cache_key(pairs(), columns[:1], tokenizer, 32),
                cache_key(pairs(), columns, Other(), 32)}) == 6


@pytest.mark.slow
def test_cache_can_be_turned_off(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("FINCH_CACHE", "off")
    counting = CountingTokenizer(tokenizer)
    for _ in range(2):
        tokenize_splits(pairs(), ["sentence1", "sentence2"], counting, 32)
    assert counting.texts_encoded == 96


@pytest.mark.parametrize("columns", [["sentence1"], ["sentence1", "sentence2"]])
@pytest.mark.parametrize("side", ["right", "left"])
def test_the_fast_path_gives_what_the_tokenizers_call_gives(tokenizer, monkeypatch, columns, side):
    """The backend's encodings turned into Arrow columns directly: the same ids, token types and masks as
    `tokenizer(..., truncation=True)` row for row, truncation on either side, and the tokenizer left as it was."""
    monkeypatch.setenv("FINCH_CACHE", "off")
    monkeypatch.setattr(tokenizer, "truncation_side", side)
    rows = pairs(30)["train"]
    rows = rows.map(lambda r, i: {"sentence1": r["sentence1"] + " word" * (i % 13)}, with_indices=True)
    before = (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding)
    limit = 8 + 6 * len(columns)  # some rows longer, some shorter
    tokenized = tokenize_splits({"train": rows}, columns, tokenizer, max_length=limit)["train"]
    assert (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding) == before
    expected = tokenizer(*(list(rows[c]) for c in columns), truncation=True, max_length=limit)
    assert tokenized.column_names == [*(c for c in rows.column_names if c not in columns), *expected.keys()]
    for name, values in expected.items():
        assert [list(v) for v in tokenized[name]] == values, name
    assert max(len(v) for v in tokenized["input_ids"]) == limit > min(len(v) for v in tokenized["input_ids"])
    assert tokenized.features["input_ids"].feature.dtype == "int32"
