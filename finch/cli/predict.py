"""Using a saved model on a file: `finch predict` (label every row) and `finch eval` (metrics on labelled rows).

Both read the model folder, its card (`finch.json`: the columns and token limit of training) and the data through the
same pieces as `finch train`: `finch.data.models` for the folder, `finch.data.readers` for the file (the same checks:
encoding, binary, ragged rows, empty files), `finch.data.columns` for the columns. Nothing is written until the input
has been read and checked, and outputs go to a temporary file that replaces `--out` only when complete.

`finch predict` reads the rows a chunk at a time (CSV/TSV/JSONL stream; Parquet by record batch), runs them in
batches of similar length (longest first, under `inference_mode` and bf16 where fast), and writes them back in input
order with every input column unchanged plus the prediction, so memory holds one chunk whatever the file's size.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from finch.data.columns import find_empty_texts
from finch.data.models import load_classifier, load_config, load_tokenizer, max_length_for, model_source
from finch.data.readers import iter_chunks
from finch.data.tasks import Task
from finch.errors import DataError, OutputError
from finch.runs.card import ModelCard
from finch.runs.files import check_output_file, replaced_on_success, write_text
from finch.runs.folders import checkpoint_around

PREFIX = "predicted_"  # prediction columns: no input column is overwritten (a clash is an error)


class Predictor:
    """A saved classifier/regressor and its tokenizer, ready to label rows.

    Args:
        model_dir: a folder saved by `finch train` or `save_pretrained` (with a tokenizer).
        text_columns: the input's text column(s); default: those recorded at training, else inferred.
        batch_size: rows per forward pass.
        max_length: the token limit; default: the one recorded at training, else the model's.
    """

    def __init__(self, model_dir: str | Path, text_columns: list[str] | None = None, batch_size: int = 64,
                 max_length: int | None = None) -> None:
        from finch.distributed.runtime import choose_device, choose_precision

        model_dir = model_source(str(model_dir))
        card = ModelCard.read(model_dir)
        self.device = choose_device(False)
        self.precision = choose_precision(None, None, self.device)
        self.precision.apply()
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_classifier(model_dir).to(self.device).eval()
        self.task = Task.from_config(self.model.config)
        self.text_columns = list(text_columns or card.text_columns)
        self.max_length = max_length_for(self.model.config, max_length, card.max_length, fallback=None)
        self.batch_size = batch_size

    @torch.inference_mode()
    def logits(self, rows: list[dict[str, Any]], columns: list[str]) -> torch.Tensor:
        """Logits for `rows` (float32, CPU, in row order); batches are formed longest first."""
        texts = [[_text(row.get(c)) for row in rows] for c in columns]
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
        """Per row: the label (or value) and the probabilities by label name, under `predicted_*` names."""
        names = self.task.label_names
        if self.task.kind == "regression":
            return [{f"{PREFIX}value": float(v)} for v in logits[:, 0]]
        if self.task.kind == "multilabel":
            probabilities = torch.sigmoid(logits)
            return [{f"{PREFIX}labels": "|".join(n for n, p in zip(names, row) if p >= self.task.threshold),
                     f"{PREFIX}probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}}
                    for row in probabilities]
        probabilities = torch.softmax(logits, dim=-1)
        best = probabilities.argmax(-1)
        return [{f"{PREFIX}label": names[int(b)], f"{PREFIX}score": round(float(row[b]), 6),
                 f"{PREFIX}probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}}
                for b, row in zip(best, probabilities)]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def text_columns_for(row: dict[str, Any], where: str, given: list[str] | None, card: ModelCard) -> list[str]:
    """The text columns to read: given, else recorded at training, else inferred; checked against `row`."""
    import datasets

    from finch.data.columns import infer_columns

    columns, _ = infer_columns(datasets.Dataset.from_list([row]), where, given or card.text_columns or None,
                               need_label=False)
    return list(columns)


def _flat(result: dict[str, Any]) -> dict[str, Any]:
    """A prediction as CSV columns: the probabilities spread over `predicted_prob_<label>` columns."""
    flat = {k: v for k, v in result.items() if k != f"{PREFIX}probabilities"}
    flat.update({f"{PREFIX}prob_{name}": p for name, p in result.get(f"{PREFIX}probabilities", {}).items()})
    return flat


def predict_file(model_dir: str | Path, data: str | Path, out: str | Path, text_columns: list[str] | None = None,
                 batch_size: int = 64, rows_per_chunk: int = 2048, progress: bool = True,
                 encoding: str = "utf-8", overwrite: bool = False) -> int:
    """Write predictions for every row of `data` to `out` (.csv or .jsonl), in input order; return the row count.

    Raises:
        OutputError: `out` is not .csv/.jsonl, is the input itself, is inside a checkpoint folder, is a file of a
            run or model folder, exists and is not an earlier prediction file (without `overwrite`), cannot be
            written, or a prediction column would overwrite an input column.
        DataError: the input is missing, unreadable, empty or lacks the text columns (before `out` is touched).
    """
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise OutputError(f"--out {out}: write predictions to a .csv or .jsonl file")
    check_output_file(out, inputs=(data,), model_dir=model_dir, command="predict", overwrite=overwrite)
    check_not_in_checkpoint(out)
    model_dir = model_source(str(model_dir))
    chunks = iter_chunks(data, rows_per_chunk, encoding=encoding)
    first = next(chunks, None)  # the input is read and checked before the weights load or `out` is opened
    if not first:
        raise DataError(f"{data}: no data rows to predict")
    columns = text_columns_for(first[0], str(data), text_columns, ModelCard.read(model_dir))
    find_empty_texts(first, columns, str(data))
    predictor = Predictor(model_dir, columns, batch_size)
    started, written, empty = time.perf_counter(), 0, 0
    jsonl = out.suffix.lower() == ".jsonl"
    with replaced_on_success(out, encoding="utf-8", newline="") as file:
        writer = None
        for chunk in _chain(first, chunks):
            empty += len(find_empty_texts(chunk, columns, str(data), first_row=written + 1))
            results = predictor.describe(predictor.logits(chunk, columns))
            for row, result in zip(chunk, results):
                _check_no_clash(row, result, str(data))
                if jsonl:
                    file.write(json.dumps({**row, **result}, ensure_ascii=False) + "\n")
                    continue
                flat = {**row, **_flat(result)}
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
    if empty:
        print(f"warning: {empty} row(s) of {data} have empty text in {' + '.join(columns)}; their predictions "
              f"describe an empty input", file=sys.stderr)
    return written


def _chain(first: list, rest: Any) -> Any:
    yield first
    yield from rest


def _check_no_clash(row: dict[str, Any], result: dict[str, Any], where: str) -> None:
    clashes = [name for name in (*result, *_flat(result)) if name in row]
    if clashes:
        raise OutputError(f"{where} already has column(s) {sorted(set(clashes))}, which finch predict writes; "
                          f"rename them in the input")


def evaluate_file(model_dir: str | Path, data: str | Path, out: str | Path | None = None,
                  text_columns: list[str] | None = None, label_column: str | None = None, batch_size: int = 64,
                  encoding: str = "utf-8", overwrite: bool = False) -> tuple[dict[str, float], str, Path]:
    """Metrics of a saved model on a labelled file, saved as JSON; returns (metrics, what was read, where saved).

    Columns default to those recorded at training (the card), else they are inferred; labels are mapped with the
    model's `id2label`, and a label it does not know is an error naming the rows. `out` defaults to
    `<model>/eval_<data name>.json`, or beside a checkpoint, never inside it (see `default_eval_out`).
    """
    from finch.args import TrainingArguments
    from finch.data.columns import Checks, drop_empty_texts, encode_labels, infer_columns
    from finch.data.readers import read_source
    from finch.data.tasks import compute_metrics_for
    from finch.data.tokenize import tokenize_splits
    from finch.training.trainer import Trainer

    model_dir = model_source(str(model_dir))
    card = ModelCard.read(model_dir)
    out = Path(out) if out else default_eval_out(model_dir, data)
    check_output_file(out, inputs=(data,), suffixes=(".json",), model_dir=model_dir, command="eval",
                      overwrite=overwrite)
    check_not_in_checkpoint(out)
    found = read_source(data, encoding=encoding)
    split = found.get("data", found.get("validation", found.get("test")))
    if split is None:
        raise DataError(f"{data}: no data, validation or test split (it has {sorted(found)}); pass the file itself")
    where = str(data)
    texts, label = infer_columns(split, where, text_columns or card.text_columns or None,
                                 label_column or _recorded_label(card, split))
    config = load_config(model_dir)
    task = Task.from_config(config)
    split = encode_labels(drop_empty_texts(split, texts, label, where, Checks()), texts, label, task, where,
                          known_from=f"the labels of the model ({model_dir}/config.json id2label)")
    tokenizer = load_tokenizer(model_dir)
    max_length = max_length_for(config, None, card.max_length, fallback=None)
    tokenized = tokenize_splits({"eval": split}, texts, tokenizer, max_length)["eval"]
    model = load_classifier(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, disable_tqdm=True)
        positive = task.label_names.index(card.positive_label) if card.positive_label in task.label_names else 1
        trainer = Trainer(model=model, args=args, processing_class=tokenizer,
                          compute_metrics=compute_metrics_for(task, positive=positive))
        metrics = trainer.evaluate(tokenized)
    metrics.pop("epoch", None)  # this Trainer trained nothing: its 0.0 would read as the saved model's epochs
    write_text(out, json.dumps(metrics, indent=2) + "\n")
    said = f"{len(tokenized)} rows of {where} (text {' + '.join(texts)}, label {label}): {task.describe()}"
    return metrics, said, out


def default_eval_out(model_dir: str | Path, data: str | Path) -> Path:
    """Where `finch eval` writes its metrics without `--out`: `<model>/eval_<data name>.json`; for a checkpoint,
    whose files are never changed after its save, beside it: `<run>/eval_<data name>_checkpoint-<step>.json`."""
    name = f"eval_{Path(data).stem}"
    checkpoint = checkpoint_around(model_dir) if Path(model_dir).is_dir() else None
    if checkpoint is None:
        return Path(model_dir) / f"{name}.json"
    return checkpoint.parent / f"{name}_{checkpoint.name}.json"


def check_not_in_checkpoint(out: Path) -> None:
    """Raise `OutputError` if `out` is inside a checkpoint folder: resume checks each of its files against its
    manifest, and a file added there would make it a damaged checkpoint."""
    checkpoint = checkpoint_around(out)
    if checkpoint is not None:
        raise OutputError(f"--out {out} is inside the checkpoint {checkpoint}, which is never written to after its "
                          f"save (resume checks every file against its manifest.json); choose an --out outside it, "
                          f"e.g. {checkpoint.parent / out.name}")


def _recorded_label(card: ModelCard, split: Any) -> str | None:
    """The label column recorded at training, when this file has it (else it is inferred as usual)."""
    return card.label_column if card.label_column in split.column_names else None

