"""`finch predict`: label a file of any size with a saved model, in constant memory.

Rows are read a chunk at a time (CSV/TSV/JSONL stream; Parquet by record batch), tokenized, run in batches of
similar length (longest first, under `inference_mode` and bf16 where fast), and written back in input order with
the predicted label and the probabilities. Memory holds one chunk, whatever the file's size.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from finch.errors import DataError
from finch.tasks import Task

MODEL_CARD = "finch.json"  # written next to a model by `finch train`: text columns, max length, task


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """What `finch train` recorded about the data a model was trained on (empty for other models)."""
    path = Path(model_dir) / MODEL_CARD
    return json.loads(path.read_text()) if path.exists() else {}


def iter_chunks(path: str | Path, rows_per_chunk: int) -> Iterator[list[dict[str, Any]]]:
    """Lists of at most `rows_per_chunk` rows, read lazily from a CSV, TSV, JSONL or Parquet file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_chunk):
            yield batch.to_pylist()
        return
    if suffix not in (".csv", ".tsv", ".txt", ".jsonl"):
        raise DataError(f"{path}: finch predict streams .csv, .tsv, .jsonl or .parquet; convert {suffix or 'it'} "
                        f"to one of those")
    with path.open(encoding="utf-8-sig", newline="") as file:
        if suffix == ".jsonl":
            rows: Iterator[dict] = (_json_line(line, number, path) for number, line in enumerate(file, start=1)
                                    if line.strip())
        else:
            tab = suffix != ".csv"
            rows = csv.DictReader(file, delimiter="\t" if tab else ",",
                                  quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
        chunk: list[dict[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == rows_per_chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _json_line(line: str, number: int, path: Path) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from error


class Predictor:
    """A saved classifier/regressor and its tokenizer, ready to label rows.

    Args:
        model_dir: a folder saved by `finch train` or `save_pretrained` (with a tokenizer).
        text_columns: the input's text column(s); default: those recorded at training, else inferred.
        batch_size: rows per forward pass.
    """

    def __init__(self, model_dir: str | Path, text_columns: list[str] | None = None, batch_size: int = 64,
                 max_length: int | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from finch.runtime import choose_device, choose_precision

        card = read_card(model_dir)
        self.device = choose_device(False)
        self.precision = choose_precision(None, None, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        self.task = Task.from_config(self.model.config)
        self.text_columns = text_columns or card.get("text_columns")
        self.max_length = max_length or card.get("max_length") or min(
            512, getattr(self.model.config, "max_position_embeddings", 512))
        self.batch_size = batch_size

    def columns_for(self, row: dict[str, Any], where: str) -> list[str]:
        """The text columns to read, checked against the first row (inferred when not recorded or given)."""
        if self.text_columns:
            missing = [c for c in self.text_columns if c not in row]
            if missing:
                raise DataError(f"{where}: no column(s) {missing}; the columns are {list(row)}. Pass --text-columns")
            return list(self.text_columns)
        import datasets

        from finch.loading import infer_columns

        self.text_columns, _ = infer_columns(datasets.Dataset.from_list([row]), where, need_label=False)
        return list(self.text_columns)

    @torch.inference_mode()
    def logits(self, rows: list[dict[str, Any]], columns: list[str]) -> torch.Tensor:
        """Logits for `rows` (float32, CPU, in row order); batches are formed longest first."""
        texts = [[str(row.get(c) or "") for row in rows] for c in columns]
        encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(rows)), key=lambda i: -lengths[i])
        out = torch.empty(len(rows), self.model.config.num_labels)
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            batch = self.tokenizer.pad([{k: v[i] for k, v in encoded.items()} for i in indices], return_tensors="pt")
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.precision.autocast(self.device):
                out[indices] = self.model(**batch).logits.float().cpu()
        return out

    def describe(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        """Per row: the label (or value) and the probabilities by label name."""
        names = self.task.label_names
        if self.task.kind == "regression":
            return [{"prediction": float(v)} for v in logits[:, 0]]
        if self.task.kind == "multilabel":
            probabilities = torch.sigmoid(logits)
            return [{"labels": "|".join(n for n, p in zip(names, row) if p >= self.task.threshold),
                     "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}} for row in probabilities]
        probabilities = torch.softmax(logits, dim=-1)
        best = probabilities.argmax(-1)
        return [{"label": names[int(b)], "score": round(float(row[b]), 6),
                 "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}}
                for b, row in zip(best, probabilities)]


def predict_file(model_dir: str | Path, data: str | Path, out: str | Path, text_columns: list[str] | None = None,
                 batch_size: int = 64, rows_per_chunk: int = 2048, progress: bool = True) -> int:
    """Write predictions for every row of `data` to `out` (.csv or .jsonl), in input order; return the row count."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"{out}: write predictions to a .csv or .jsonl file")
    predictor = Predictor(model_dir, text_columns, batch_size)
    started, written = time.perf_counter(), 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as file:
        writer = None
        for chunk in iter_chunks(data, rows_per_chunk):
            columns = predictor.columns_for(chunk[0], str(data))
            results = predictor.describe(predictor.logits(chunk, columns))
            for row, result in zip(chunk, results):
                if out.suffix.lower() == ".jsonl":
                    file.write(json.dumps({**row, **result}, ensure_ascii=False) + "\n")
                    continue
                flat = {**row, **{k: v for k, v in result.items() if k != "probabilities"},
                        **{f"prob_{name}": p for name, p in result.get("probabilities", {}).items()}}
                if writer is None:
                    writer = csv.DictWriter(file, fieldnames=list(flat))
                    writer.writeheader()
                writer.writerow(flat)
            written += len(chunk)
            if progress:
                rate = written / max(time.perf_counter() - started, 1e-9)
                print(f"\rpredicted {written:,} rows | {rate:,.0f} rows/s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return written

