"""`Trainer.evaluate()` on MRPC dev: finch's defaults against HF Trainer's (tutorial flags), the same model.

Both evaluate the same all-MiniLM-L6-v2 weights (a classification head from seed 42, then one short fine-tune so
the predictions are not all one class) on the 408 dev pairs with `per_device_eval_batch_size=8`, the tutorial's
`DataCollatorWithPadding` and `compute_metrics`. HF runs with its default flags (fp32, dataset order); finch with
its defaults (bf16 where the CPU has it, longest-first batches by token budget, `inference_mode`). The two alternate
for --repeats rounds after a warm-up each; the medians are compared, and so are the predictions (how many of the
408 argmaxes agree between fp32 and bf16).

Usage (from the repo root):
    python benchmarks/evaluate.py                 # 5 rounds
    python benchmarks/evaluate.py --repeats 3 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrpc
import numpy as np
import sklearn.metrics  # noqa: F401  compute_metrics' import must not land in the first evaluate() timed
import torch
import transformers
from transformers import DataCollatorWithPadding

import finch


def trainers(a: argparse.Namespace, out_dir: str) -> dict[str, object]:
    """An HF and a finch Trainer around the same fine-tuned weights (two copies of one model)."""
    tok, train, dev = mrpc.tokenized_mrpc(a)
    model = mrpc.pretrained_model(42)
    warm = finch.TrainingArguments(output_dir=f"{out_dir}/warm", max_steps=60, per_device_train_batch_size=16,
                                   learning_rate=1e-4, save_strategy="no", disable_tqdm=True, report_to="none")
    finch.Trainer(model=model, args=warm, train_dataset=train, processing_class=tok).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    built = {}
    for name, module in (("hf", transformers), ("finch", finch)):
        copy = mrpc.pretrained_model(42)
        copy.load_state_dict(state)
        args = module.TrainingArguments(output_dir=f"{out_dir}/{name}", per_device_eval_batch_size=a.batch_size,
                                        report_to="none", disable_tqdm=True)
        built[name] = module.Trainer(
            model=copy,
            args=args,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
            compute_metrics=mrpc.compute_metrics,
        )
    return built


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", type=Path, default=mrpc.DEFAULT_DATA)
    a = p.parse_args()
    a.subset = 400
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as out_dir:
        built = trainers(a, out_dir)
        seconds: dict[str, list[float]] = {name: [] for name in built}
        metrics = {}
        first: dict[str, float] = {}
        for name, trainer in built.items():  # the first call builds oneDNN kernels for shapes not seen yet
            started = time.perf_counter()
            trainer.evaluate()
            first[name] = time.perf_counter() - started
        for round_index in range(a.repeats):
            for name, trainer in built.items():
                started = time.perf_counter()
                metrics[name] = trainer.evaluate()
                seconds[name].append(time.perf_counter() - started)
            print(f"round {round_index}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
        predictions = {name: trainer.predict(trainer.eval_dataset).predictions.argmax(-1)
                       for name, trainer in built.items()}
    hf_s, finch_s = (statistics.median(seconds[n]) for n in ("hf", "finch"))
    print(f"\nevaluate() on {len(predictions['hf'])} MRPC dev pairs, eval batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {a.repeats} rounds")
    for name in built:
        m = metrics[name]
        print(f"{name:<6} {statistics.median(seconds[name]):6.2f} s   accuracy {m['eval_accuracy']:.4f}  "
              f"F1 {m['eval_f1']:.4f}  loss {m['eval_loss']:.4f}")
    agree = int(np.sum(predictions["hf"] == predictions["finch"]))
    print(f"first call (kernels built): hf {first['hf']:.2f} s, finch {first['finch']:.2f} s, "
          f"{first['hf'] / first['finch']:.2f}x")
    print(f"finch evaluate() {hf_s / finch_s:.2f}x faster than HF's; predictions agree on {agree} of "
          f"{len(predictions['hf'])}")


if __name__ == "__main__":
    main()
