"""Peak memory of a causal LM's evaluation and training: finch against HF's Trainer, side by side in one run.

Each measurement runs in its own process (peak RSS is per process, and a process never gives its peak back), on the
same tiny GPT-2 (vocabulary 8,000, 2 layers, width 64) and the same synthetic sequences:

- evaluate: `--rows` sequences of 16-128 tokens (default 2,000), batch 8, run_clm.py's way: a
  `preprocess_logits_for_metrics` that keeps the argmax and a `compute_metrics` of the token accuracy; and without
  `compute_metrics` (the loss alone). The evaluation's whole logits would be rows x 128 x 8,000 floats (8 GB at 2,000
  rows): whoever holds them all at once shows it.
- train: a few steps at batch 16, sequences of 512 tokens, with and without `activation_checkpointing`
  (`gradient_checkpointing`): what recomputing activations saves.

Usage (from the repo root):
    python benchmarks/causal_memory.py               # every case, finch and HF
    python benchmarks/causal_memory.py --rows 500
Prints one line per case with the peak RSS above the process's baseline (after the imports and the model), and the
finch/HF ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model(positions: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=8000, n_embd=64, n_layer=2, n_head=2, n_positions=positions,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0))


def sequences(rows: int, low: int, high: int):
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(0)
    return Dataset.from_dict({"input_ids": [rng.integers(3, 8000, rng.integers(low, high + 1)).tolist()
                                            for _ in range(rows)]})


def collate(features):
    """Right padding with 0, labels -100 there (DataCollatorForLanguageModeling(mlm=False) without a tokenizer)."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, feature in enumerate(features):
        ids[row, :len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        mask[row, :len(feature["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def argmax(logits, labels):
    return logits.argmax(-1)


def accuracy(prediction):
    import numpy as np

    predictions, labels = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]
    keep = labels != -100
    return {"accuracy": float(np.mean(predictions[keep] == labels[keep]))}


def one_case(engine: str, case: str, rows: int) -> dict:
    """Runs in a child process: build, measure the baseline, run the case, report the peak above it."""
    import torch

    torch.set_num_threads(1)
    if engine == "finch":
        from finch import Trainer, TrainingArguments
    else:
        from transformers import Trainer, TrainingArguments
    out = tempfile.mkdtemp()
    common = {"output_dir": out, "report_to": [], "use_cpu": True, "disable_tqdm": True, "save_strategy": "no"}
    if engine == "finch":
        common["bf16"] = False  # fp32 on both sides
    if case.startswith("evaluate"):
        data = sequences(rows, 16, 128)
        net = model(128)
        metrics = {"compute_metrics": accuracy, "preprocess_logits_for_metrics": argmax} if case == "evaluate" else {}
        trainer = Trainer(model=net, args=TrainingArguments(per_device_eval_batch_size=8, **common),
                          data_collator=collate, **metrics)
        base = peak_mb()
        result = trainer.evaluate(data)
    else:
        data = sequences(64, 512, 512)
        net = model(512)
        checkpointing = case == "train checkpointed"
        args = TrainingArguments(per_device_train_batch_size=16, max_steps=3, gradient_checkpointing=checkpointing,
                                 **common)
        trainer = Trainer(model=net, args=args, data_collator=collate, train_dataset=data)
        base = peak_mb()
        result = trainer.train().metrics
    return {"peak_above_baseline_mb": round(peak_mb() - base, 1), "baseline_mb": round(base, 1),
            "loss": result.get("eval_loss", result.get("train_loss"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(one_case(*a.child, a.rows)))
        return
    import torch

    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; rows {a.rows}; one thread per process")
    cases = ("evaluate", "evaluate loss only", "train", "train checkpointed")
    results = {}
    for case in cases:
        for engine in ("hf", "finch"):
            child = subprocess.run([sys.executable, __file__, "--rows", str(a.rows), "--child", engine, case],
                                   capture_output=True, text=True, check=False)
            if child.returncode != 0:
                print(f"{case:20s} {engine:5s} FAILED\n{child.stderr[-2000:]}")
                continue
            results[case, engine] = json.loads(child.stdout.strip().splitlines()[-1])
            row = results[case, engine]
            print(f"{case:20s} {engine:5s} peak +{row['peak_above_baseline_mb']:8.1f} MB "
                  f"(baseline {row['baseline_mb']:.0f} MB)  loss {row['loss']:.4f}", flush=True)
        if (case, "hf") in results and (case, "finch") in results:
            hf, ours = (results[case, e]["peak_above_baseline_mb"] for e in ("hf", "finch"))
            print(f"{case:20s} finch/HF peak ratio {ours / max(hf, 1e-9):.2f}")
    for engine in ("hf", "finch"):
        if ("train", engine) in results and ("train checkpointed", engine) in results:
            plain, saved = (results[c, engine]["peak_above_baseline_mb"] for c in ("train", "train checkpointed"))
            print(f"activation checkpointing, {engine}: peak +{plain:.0f} MB -> +{saved:.0f} MB "
                  f"({100 * (1 - saved / max(plain, 1e-9)):.0f}% less)")


if __name__ == "__main__":
    main()
