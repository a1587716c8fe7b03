"""Where labelled text comes from: files, folders and hub names, read into `datasets.Dataset`s with every row intact.

`read_source(spec)` returns a dict of named splits:
- a file: .csv, .tsv/.txt (quoting off, as GLUE needs), .jsonl, .json (array or lines), .parquet -> {"data": ...}
- a folder saved with `save_to_disk` -> its split(s); a GLUE-style folder (train.tsv, dev.tsv...) -> those splits
- anything else is taken as a hub name for `datasets.load_dataset` ("glue/mrpc" = ("glue", "mrpc"); "name:config")

`iter_chunks(path, rows_per_chunk)` streams the same files in constant memory (`finch predict`). Both go through
one row reader (`_text_rows` for text, `_parquet_batches` for Parquet), so both make the same checks: missing,
unreadable, empty or binary files, encodings (UTF-8 by default; byte-order marks of UTF-8/16/32 are followed),
duplicated header names, a wrong delimiter, ragged rows, bad JSON, corrupt Parquet. Each raises `DataError` naming
the file, the line and the fix. Only the error types that reading raises are caught: a bug keeps its traceback.
"""

from __future__ import annotations

import codecs
import csv
import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv  # at import: a process that drops its privileges later may not reach site-packages

from finch.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json")
GLUE_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv", "validation.tsv", "dev_matched.tsv"),
              "test": ("test.tsv",)}
SNIFF_BYTES = 8192
# csv's default field limit is 128 KiB; long texts are valid (tokenization truncates them). sys.maxsize overflows
# the C long that csv keeps the limit in on some platforms (Windows); 2**31 - 1 fits everywhere.
FIELD_SIZE_LIMIT = 2**31 - 1
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE first: FF FE 00 00


def read_source(spec: str | Path, encoding: str = "utf-8") -> dict[str, datasets.Dataset]:
    """Named splits from a file, a folder or a hub name (see the module docstring).

    Args:
        spec: a file, a folder, or a hub name.
        encoding: of text files without a byte-order mark (those with one are read as it says).
    Raises:
        DataError: a missing or unreadable file, or malformed data (the message names the file, line and fix).
    """
    _refuse_url(str(spec))
    path = Path(spec).expanduser()
    looks_like_a_path = path.suffix.lower() in (*TEXT_SUFFIXES, ".parquet") or str(spec).startswith((".", "/", "~"))
    if not _exists(path, raise_missing=looks_like_a_path):
        return _read_hub(str(spec))
    if path.is_dir():
        return _read_folder(path, encoding)
    return {"data": read_file(path, encoding)}


def read_file(path: str | Path, encoding: str = "utf-8") -> datasets.Dataset:
    """One file's rows, every value as read (text from CSV/TSV, JSON types from JSON, Arrow types from Parquet).

    Raises:
        DataError: as `read_source`.
    """
    path, suffix = _checked_file(path)
    if suffix == ".parquet":

        return table_dataset(pa.Table.from_batches(list(_parquet_batches(path, 65536))))
    if suffix in (".csv", ".tsv", ".txt"):
        table = _arrow_table(path, suffix, encoding)
        if table is not None:
            return table_dataset(table)
    rows = list(_text_rows(path, suffix, encoding))
    if suffix in (".tsv", ".txt"):
        _check_line_count(path, encoding, len(rows))
    return _as_dataset(rows, path, json_values=suffix in (".jsonl", ".json"))


def table_dataset(table: pa.Table, info: datasets.DatasetInfo | None = None) -> datasets.Dataset:
    """A Dataset over an in-memory Arrow table, with a fresh random fingerprint: without one, `datasets` hashes the
    whole table by pickling it (a 200 MB file: 1 s per 50 MB and a transient copy, three times on the way to
    training). A random fingerprint is what `datasets` itself falls back to; finch's token cache keys on the
    content (`finch.data.tokenize.cache_key`), not on fingerprints."""
    return datasets.Dataset(table, info=info, fingerprint=uuid.uuid4().hex)


def _arrow_table(path: Path, suffix: str, encoding: str) -> Any:
    """A UTF-8 CSV or TSV read by `pyarrow.csv` (C++, every core), every value as text: the rows `_text_rows` gives,
    at a hundred times its speed. None when the file needs the row reader: another encoding, a header that is not
    line 1, or anything Arrow cannot read as it would (a ragged row, an undecodable byte, no rows...): the row
    reader then finds the problem and says where it is, as it always has."""
    tab = suffix != ".csv"
    delimiter = "\t" if tab else ","
    with _open_text(path, suffix, encoding) as file:  # the encoding checks: byte-order marks, NUL bytes
        if codecs.lookup(file.encoding).name != "utf-8":
            return None
        reader = csv.reader(file, delimiter=delimiter, quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeError):
            return None
        if not header or reader.line_num != 1 or re.fullmatch(r"sep=(.?)", delimiter.join(header)):
            return None
    _check_header(path, header, 1)

    def blank_line(row: Any) -> str:  # a line of spaces and delimiters: the row reader skips it too
        return "skip" if not row.text.replace(delimiter, "").strip() else "error"

    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False if tab else '"',
                                             newlines_in_values=not tab, invalid_row_handler=blank_line),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()),
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError, UnicodeError):
        return None
    blank = None  # rows whose every field is blank: the row reader leaves them out
    for name in header:
        if (pc.max(pc.binary_length(table.column(name))).as_py() or 0) > FIELD_SIZE_LIMIT:
            return None  # the row reader's limit (csv.field_size_limit) says what is wrong
        column = table.column(name)  # blank: empty or only whitespace (no trimmed copy of the text: 200 MB files)
        empty = pc.or_(pc.equal(pc.binary_length(column), 0), pc.utf8_is_space(column))
        blank = empty if blank is None else pc.and_(blank, empty)
    if blank is not None and pc.any(blank).as_py():
        table = table.filter(pc.invert(blank))
    return table if table.num_rows else None


def iter_chunks(path: str | Path, rows_per_chunk: int, encoding: str = "utf-8") -> Iterator[list[dict[str, Any]]]:
    """Lists of at most `rows_per_chunk` rows (dicts), read lazily: memory holds one chunk whatever the file's size.

    CSV, TSV and JSON Lines are streamed, Parquet is read by record batches, a .json array is read whole. The checks
    are those of `read_file` (the TSV check that compares rows with lines needs the whole file and is left out).

    Raises:
        DataError: as `read_source`, when the chunk that holds the problem is reached.
    """
    path, suffix = _checked_file(path)
    if suffix == ".parquet":
        for batch in _parquet_batches(path, rows_per_chunk):
            yield batch.to_pylist()
        return
    chunk: list[dict[str, Any]] = []
    for row in _text_rows(path, suffix, encoding):
        chunk.append(row)
        if len(chunk) == rows_per_chunk:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _exists(path: Path, raise_missing: bool = True) -> bool:
    """Whether `path` exists; a broken link, a link loop or a permission problem is a `DataError`."""
    try:
        path.stat()
        return True
    except (FileNotFoundError, NotADirectoryError) as error:
        if path.is_symlink():
            target = os.readlink(path)
            resolved = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(path)), target))
            shown = target if target == resolved else f"{target} ({resolved})"
            raise DataError(f"{path}: a symbolic link to {shown}, which does not exist; point the link at the data "
                            f"file, or pass the file itself") from error
        if not raise_missing:
            return False
        if isinstance(error, NotADirectoryError):
            raise DataError(f"{path}: no such file (a part of the path before its name is a file, not a folder); "
                            f"check the path") from error
        raise DataError(f"{path}: no such file") from error
    except OSError as error:
        raise _os_error(path, error) from error


def _refuse_url(spec: str) -> None:
    if spec.lower().startswith(("http://", "https://", "s3://", "gs://", "hf://", "ftp://")):
        raise DataError(f"{spec}: finch reads local files, folders and hub data set names, not URLs; download the "
                        f"file first (e.g. curl -LO '{spec}') and pass its path")


def _checked_file(path: str | Path) -> tuple[Path, str]:
    """The path and its suffix, once the file is known to exist, to be a file of a type finch reads, and not empty."""
    _refuse_url(str(path))
    path = Path(path)
    _exists(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file; pass a data file, or the folder itself as --train to read a "
                        f"saved or GLUE-style data set")
    if suffix not in (*TEXT_SUFFIXES, ".parquet"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet, or a "
                        f"folder saved with Dataset.save_to_disk")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path, suffix


def _os_error(path: Path, error: OSError) -> DataError:
    """An `OSError` met while reading `path`, as the problem and its fix."""
    if error.errno == errno.ELOOP:
        return DataError(f"{path}: a symbolic link loop (the link leads, directly or through other links, back to "
                         f"itself); point it at the data file, or pass the file itself")
    if error.errno in (errno.EACCES, errno.EPERM):
        return DataError(f"{path}: permission denied; make the file readable (chmod a+r {path}), or copy it to a "
                         f"folder you can read")
    if error.errno == errno.EISDIR:
        return DataError(f"{path}: a folder, not a file; pass a data file")
    return DataError(f"{path}: cannot be read ({error.strerror or error}); check that the file and its disk are "
                     f"there and readable")


def _text_rows(path: Path, suffix: str, encoding: str) -> Iterator[dict[str, Any]]:
    """The rows of a CSV, TSV or JSON file, one dict at a time; raises `DataError` when there are none."""
    count = 0
    with _open_text(path, suffix, encoding) as file:
        try:
            rows = _json_rows(file, path, suffix) if suffix in (".jsonl", ".json") else _delimited_rows(
                file, path, tab=suffix != ".csv")
            for row in rows:
                count += 1
                yield row
        except UnicodeDecodeError as error:
            raise _decode_error(path, file.encoding, error) from error
        except UnicodeError as error:  # a codec's own complaint, not a byte it cannot decode
            raise DataError(
                f"{path}: cannot be read as {file.encoding} text ({error}); pass the file's encoding "
                f"with --encoding (utf-8, cp1252, latin-1, utf-16-le...), or convert it to UTF-8"
            ) from error
        except OSError as error:
            raise _os_error(path, error) from error
    if count == 0:
        raise DataError(f"{path}: no data rows (only a header, or blank lines)")


def _open_text(path: Path, suffix: str, encoding: str) -> IO[str]:
    """`path` opened as text in its encoding: a byte-order mark's if it has one, else `encoding`."""
    try:
        info = codecs.lookup(encoding)
    except LookupError as error:
        raise DataError(f"encoding {encoding!r}: unknown; use e.g. utf-8, cp1252, latin-1 or utf-16") from error
    if not getattr(info, "_is_text_encoding", True):  # rot13, base64, zip...: codecs, but not of text files
        raise DataError(f"encoding {encoding!r}: not a text encoding; use e.g. utf-8, cp1252, latin-1 or utf-16")
    codec = info.name
    try:
        with path.open("rb") as raw:
            head = raw.read(SNIFF_BYTES)
        return path.open(encoding=_encoding_of(path, suffix, head, codec), newline="")
    except OSError as error:
        raise _os_error(path, error) from error


def _encoding_of(path: Path, suffix: str, head: bytes, codec: str) -> str:
    for mark, name in BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return name
    if codec in ("utf-16", "utf-32"):  # these need a byte-order mark, and the file starts without one
        sniffed = _utf16_order(head) if codec == "utf-16" else None
        if sniffed is not None:
            return sniffed
        raise DataError(f"{path}: --encoding {codec} needs a byte-order mark at the start of the file, and this file "
                        f"has none; pass --encoding {codec}-le (or {codec}-be), or check that the file is "
                        f"{codec.upper()} at all (without --encoding, finch reads UTF-8)")
    if codec.startswith(("utf-16", "utf-32")):
        return codec
    if b"\x00" in head:  # NUL bytes: UTF-16 without a mark, or binary
        sniffed = _utf16_order(head)
        if sniffed is not None:
            return sniffed
        raise DataError(f"{path}: this is a binary file, not {suffix[1:].upper()} text (it holds NUL bytes); export "
                        f"the data as text (CSV, TSV or JSON Lines) or Parquet. If it is UTF-16 text without a "
                        f"byte-order mark, pass --encoding utf-16-le (or utf-16-be)")
    return codec


def _utf16_order(head: bytes) -> str | None:
    """"utf-16-le"/"utf-16-be" when `head` looks like UTF-16 without a byte-order mark (mostly ASCII text: every
    other byte is 0), else None."""
    half = len(head) // 2
    zeros_even, zeros_odd = head[0:half * 2:2].count(0), head[1:half * 2:2].count(0)
    if half >= 2 and zeros_odd > 0.6 * half and zeros_even < 0.1 * half:
        return "utf-16-le"
    if half >= 2 and zeros_even > 0.6 * half and zeros_odd < 0.1 * half:
        return "utf-16-be"
    return None


def _decode_error(path: Path, encoding: str, error: UnicodeDecodeError) -> DataError:
    """Where the first byte that `encoding` cannot decode is (line, bytes, context), and the fix."""
    line, bad, context = _first_undecodable(path, encoding)
    if bad is None:  # not found again (the file changed?): say what the decoder said
        bad, context = error.object[error.start:error.end], ""
    shown = " ".join(f"0x{byte:02x}" for byte in bad[:8])
    where = f"{path}, line {line}" if line else str(path)
    name = codecs.lookup(encoding).name.removesuffix("-sig")
    if name == "utf-8":
        fix = (f"It is probably in cp1252 or Latin-1 (as Excel and older tools write): convert it to UTF-8, e.g. "
               f"iconv -f cp1252 -t utf-8 {path.name} > {path.stem}-utf8{path.suffix}, or pass --encoding cp1252 "
               f"(or --encoding latin-1)")
    else:
        fix = "Pass the file's encoding with --encoding (utf-8, cp1252, latin-1, utf-16...), or convert it to UTF-8"
    return DataError(f"{where}: not valid {name} text: byte(s) {shown}{f' in {context!r}' if context else ''}. {fix}")


def _first_undecodable(path: Path, encoding: str) -> tuple[int | None, bytes | None, str]:
    """(line number, the bytes, the text around them) of the first bytes that do not decode; line None at the end."""
    decoder = codecs.getincrementaldecoder(encoding)()
    newlines = 0
    with path.open("rb") as raw:
        for chunk in raw:  # binary lines: the decoder keeps a character split between them
            try:
                newlines += decoder.decode(chunk).count("\n")
            except UnicodeDecodeError as error:
                data = error.object
                context = data[max(0, error.start - 30):error.end + 30].decode(encoding, errors="backslashreplace")
                return newlines + 1, data[error.start:error.end], context.strip()
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            return newlines + 1, error.object[error.start:error.end], "the end of the file: is it truncated?"
    return None, None, ""


def _delimited_rows(file: IO[str], path: Path, tab: bool) -> Iterator[dict[str, str]]:
    """Rows of a CSV (quoted fields) or TSV (quoting off, as GLUE's files need), checked against the header."""
    csv.field_size_limit(FIELD_SIZE_LIMIT)
    reader = csv.reader(file, delimiter="\t" if tab else ",", quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
    try:
        header = next((record for record in reader if record), None)
        first_line = ("\t" if tab else ",").join(header or [])
        declared = re.fullmatch(r"sep=(.?)", first_line) if reader.line_num == 1 else None
        if declared:  # Excel's "sep=," first line names the delimiter: honoured when it is this file type's
            if declared.group(1) != ("\t" if tab else ","):
                raise DataError(f"{path}, line 1: Excel's {declared.group(0)!r} line says the columns are separated "
                                f"by {declared.group(1)!r}, which finch does not read; save the file with commas "
                                f"(.csv) or tabs (.tsv)")
            header = next((record for record in reader if record), None)
        if header is None:
            return
        _check_header(path, header, reader.line_num)
        start = reader.line_num  # the line a record starts on is one past where the previous one ended
        for record in reader:
            if any(field.strip() for field in record):
                if len(record) != len(header):
                    raise DataError(f"{path}, line {start + 1}: {len(record)} fields, the header has {len(header)}; "
                                    f"fix that line (a stray delimiter or quote?)")
                yield dict(zip(header, record))
            start = reader.line_num
    except csv.Error as error:
        raise DataError(
            f"{path}, line {max(reader.line_num, 1)}: {error}; fix that line (an unclosed quote?)"
        ) from error


def _check_header(path: Path, header: list[str], line: int) -> None:
    if len(header) == 1:
        for name, mark, fix in (("tabs", "\t", "name the file .tsv"), ("semicolons", ";", "save it with commas"),
                                ("commas", ",", "name the file .csv")):
            if mark in header[0]:
                raise DataError(f"{path}: one column only, but the header {header[0][:60]!r} is separated by {name}; "
                                f"{fix} so that its columns are read")
    positions: dict[str, list[int]] = {}
    for position, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(position)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if repeated:
        listed = "; ".join(f"{name!r} {len(where)} times (columns {', '.join(map(str, where))})"
                           for name, where in repeated.items())
        hint = " (empty names: a delimiter at the end of the header?)" if "" in repeated else ""
        raise DataError(f"{path}, line {line}: the header names a column more than once: {listed}{hint}; give each "
                        f"column its own name, or remove the repeated ones")


def _check_line_count(path: Path, encoding: str, rows: int) -> None:
    """With quoting off each line of a TSV is one row: a mismatch means that rows were merged or split."""
    with _open_text(path, ".tsv", encoding) as file:
        lines = sum(1 for line in file if line.strip()) - 1
    if lines != rows:
        raise DataError(f"{path}: {rows} rows read from {lines} lines; a line break inside a field?")


class _RepeatedKeys(Exception):
    """A JSON object that names a key twice (json keeps the last value silently)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) < len(pairs):
        keys = [key for key, _ in pairs]
        raise _RepeatedKeys(sorted({key for key in keys if keys.count(key) > 1}))
    return record


def _json_rows(file: IO[str], path: Path, suffix: str) -> Iterator[dict[str, Any]]:
    """Records of a JSON array (read whole) or of JSON Lines (streamed), each checked to be an object."""
    head = file.read(SNIFF_BYTES).lstrip()
    file.seek(0)
    if suffix == ".json" and head.startswith("["):
        try:
            records = json.loads(file.read(), object_pairs_hook=_object)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from error
        except _RepeatedKeys as error:
            raise DataError(f"{path}: a record names key(s) {error.args[0]} more than once; give each its own "
                            f"name") from error
        numbered: Iterator[tuple[str, Any]] = ((f"record {n}", r) for n, r in enumerate(records, start=1))
    else:
        numbered = _json_lines(file, path, suffix)
    for where, record in numbered:
        if not isinstance(record, dict):
            raise DataError(f"{path}, {where}: {json.dumps(record)[:60]} is not a JSON object; each record must "
                            f"be one {{\"column\": value, ...}}")
        yield record


def _json_lines(file: IO[str], path: Path, suffix: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line, object_pairs_hook=_object)
        except json.JSONDecodeError as error:
            also = " (or the whole file one array of them: [{...}, ...])" if suffix == ".json" else ""
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}); each line must be one JSON "
                            f"object{also}") from error
        except _RepeatedKeys as error:
            raise DataError(f"{path}, line {number}: the object names key(s) {error.args[0]} more than once; give "
                            f"each its own name") from error


def _parquet_batches(path: Path, rows_per_batch: int) -> Iterator[Any]:
    """A Parquet file's record batches; a corrupt file or one with no rows is a `DataError`."""
    import pyarrow.parquet as pq

    rows = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_batch):
            rows += batch.num_rows
            yield batch
    except (pa.ArrowInvalid, OSError) as error:
        if isinstance(error, OSError) and error.errno is not None:  # the file system's error, not the content's
            raise _os_error(path, error) from error
        reason = str(error).splitlines()[0][:160]
        raise DataError(f"{path}: not a valid Parquet file ({reason}); is it truncated (an interrupted download or "
                        f"copy?) or another format named .parquet? Export it again") from error
    if rows == 0:
        raise DataError(f"{path}: no data rows (the Parquet file has a schema but no rows)")


def _as_dataset(rows: list[dict[str, Any]], path: Path, json_values: bool) -> datasets.Dataset:
    """Rows as a Dataset, with every key any row has as a column (missing values None).

    A JSON column whose values Arrow cannot hold together (numbers and text, lists and text) is read as text (lists
    as "a|b"), so that the checks can say which rows differ; objects mixed with other values are an error.
    """

    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {name: [row.get(name) for row in rows] for name in names}
    try:
        return datasets.Dataset.from_dict(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if not json_values:  # text from CSV/TSV always fits: a failure there is a bug
            raise
    for name, values in columns.items():
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            objects = [i for i, v in enumerate(values, start=1) if isinstance(v, dict)]
            if objects:
                raise DataError(f"{path}: column {name!r} holds JSON objects (rows {objects[:5]}) and other values "
                                f"that cannot be stored together; give the column one kind of value: flatten the "
                                f"objects, or pick one of their fields") from error
            columns[name] = [_text(v) for v in values]
    return datasets.Dataset.from_dict(columns)


def _text(value: Any) -> Any:
    if value is None:
        return None
    return "|".join(map(str, value)) if isinstance(value, list) else str(value)


def _read_folder(folder: Path, encoding: str) -> dict[str, datasets.Dataset]:
    if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
        loaded = datasets.load_from_disk(str(folder))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"data": loaded}
    splits = {}
    for split, names in GLUE_FILES.items():
        found = next((folder / n for n in names if (folder / n).exists()), None)
        if found is not None:
            splits[split] = read_file(found, encoding)
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
