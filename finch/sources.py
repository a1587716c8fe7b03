"""Where labelled text comes from: files, folders and hub names, read into `datasets.Dataset`s with every row intact.

`read_source(spec)` returns a dict of named splits:
- a file: .csv, .tsv/.txt (quoting off, as GLUE needs), .jsonl, .json (array or lines), .parquet -> {"data": ...}
- a folder saved with `save_to_disk` -> its split(s); a GLUE-style folder (train.tsv, dev.tsv...) -> those splits
- anything else is taken as a hub name for `datasets.load_dataset` ("glue/mrpc" = ("glue", "mrpc"); "name:config")
Problems (missing, empty or binary files, a wrong delimiter, ragged or merged rows, bad JSON) raise `DataError`
naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets

from finch.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json")
GLUE_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv", "validation.tsv", "dev_matched.tsv"),
              "test": ("test.tsv",)}


def read_source(spec: str | Path) -> dict[str, datasets.Dataset]:
    """Named splits from a file, a folder or a hub name (see the module docstring)."""
    path = Path(spec)
    if path.is_dir():
        return _read_folder(path)
    if path.exists():
        return {"data": read_file(path)}
    if path.suffix.lower() in (*TEXT_SUFFIXES, ".parquet") or str(spec).startswith((".", "/", "~")):
        raise DataError(f"{spec}: no such file")
    return _read_hub(str(spec))


def read_file(path: str | Path) -> datasets.Dataset:
    """One file's rows, every value as read (text from CSV/TSV, JSON types from JSON)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet, or a "
                        f"folder saved with Dataset.save_to_disk")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    with open(path, "rb") as file:
        if b"\x00" in file.read(8192):
            raise DataError(f"{path}: this is a binary file, not {suffix[1:].upper()} text; export the data as text")
    rows = _read_json(path) if suffix in (".jsonl", ".json") else _read_delimited(path, suffix)
    if not rows:
        raise DataError(f"{path}: no data rows (only a header, or blank lines)")
    try:
        return datasets.Dataset.from_list(rows)
    except (TypeError, ValueError):  # Arrow cannot type a column holding mixed values
        if suffix not in (".jsonl", ".json"):
            raise
        return datasets.Dataset.from_list(_as_text(rows))


def _as_text(rows: list[dict]) -> list[dict]:
    """Values of mixed JSON types as text (lists as "a|b"), so that the checks can say which rows differ."""
    def text(value: object) -> object:
        if value is None:
            return None
        return "|".join(map(str, value)) if isinstance(value, list) else str(value)

    return [{k: text(v) for k, v in row.items()} for row in rows]


def _read_delimited(path: Path, suffix: str) -> list[dict]:
    tab = suffix in (".tsv", ".txt")
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter="\t" if tab else ",", quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
        try:
            header = next(reader)
        except StopIteration:
            header = []
        records = list(reader)
    if len(header) <= 1 and header:
        for name, mark, fix in (("tabs", "\t", "name the file .tsv"), ("semicolons", ";", "save it with commas"),
                                ("commas", ",", "name the file .csv")):
            if mark in header[0]:
                raise DataError(f"{path}: one column only, but the header {header[0][:60]!r} is separated by {name}; "
                                f"{fix} so that its columns are read")
    records = [r for r in records if any(field.strip() for field in r)]
    for number, record in enumerate(records, start=2):
        if len(record) != len(header):
            raise DataError(f"{path}, line {number}: {len(record)} fields, the header has {len(header)}; fix that line "
                            f"(a stray delimiter or quote?)")
    if tab:  # with quoting off each line is one row: a mismatch means rows were merged or split
        with path.open(encoding="utf-8-sig", newline="") as file:
            lines = sum(1 for line in file if line.strip()) - 1
        if lines != len(records):
            raise DataError(f"{path}: {len(records)} rows read from {lines} lines; a line break inside a field?")
    return [dict(zip(header, record)) for record in records]


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from error
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}); each line must be one "
                                f"JSON object") from error
    bad = [i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)]
    if bad:
        raise DataError(f"{path}: record(s) {bad[:5]} are not JSON objects; each must be {{\"column\": value, ...}}")
    return rows


def _read_folder(folder: Path) -> dict[str, datasets.Dataset]:
    if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
        loaded = datasets.load_from_disk(str(folder))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"data": loaded}
    splits = {}
    for split, names in GLUE_FILES.items():
        found = next((folder / n for n in names if (folder / n).exists()), None)
        if found is not None:
            splits[split] = read_file(found)
    if not splits:
        raise DataError(f"{folder}: a folder, but neither a saved dataset (Dataset.save_to_disk) nor a GLUE-style "
                        f"one with train.tsv/dev.tsv; pass the files themselves")
    return splits


def _read_hub(name: str) -> dict[str, datasets.Dataset]:
    """`datasets.load_dataset`; offline or unknown names give an error that suggests local files."""
    path, _, config = name.partition(":")
    attempts = [(path, config or None)]
    if not config and path.count("/") == 1:
        attempts.append(tuple(path.split("/")))  # "glue/mrpc": the glue dataset, its mrpc configuration
    error: Exception | None = None
    for dataset_path, dataset_config in attempts:
        try:
            return dict(datasets.load_dataset(dataset_path, dataset_config))
        except Exception as failure:  # noqa: BLE001 (datasets raises many types; all mean "could not load")
            error = failure
    raise DataError(f"{name!r} is not a local file or folder, and loading it from the HuggingFace hub failed "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Offline (HF_HUB_OFFLINE=1 or no "
                    f"network), download it elsewhere and pass local files: --train train.csv --validation dev.csv")
