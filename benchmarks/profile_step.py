"""Where a training step's time goes, and what finch's CPU dropout saves, on the same MRPC batches.

Trains the pretrained all-MiniLM-L6-v2 on MRPC batches in finch's length-grouped order (bf16 autocast where the
CPU has it, fused AdamW, clipping) with torch's dropout and with finch's
(`finch.training.dropout.fast_dropout`), alternating
which goes first for --repeats rounds, and prints milliseconds per step split into forward / backward / clip /
optimizer, the median ratio, and the profiler's top operators for one of each.

Usage (from the repo root):
    python benchmarks/profile_step.py                      # batch 32, 30 timed steps x 3 rounds
    python benchmarks/profile_step.py --batch-size 8 --steps 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrpc
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import DataCollatorWithPadding

import finch
from finch.distributed.runtime import choose_precision
from finch.training.dropout import fast_dropout
from finch.training.optim import create_optimizer

PARTS = ("forward", "backward", "clip", "optimizer")


def batches_for(a: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """The first `--steps` + 3 batches of epoch 0 in finch's order, padded as finch pads them under bf16."""
    tok, train, _ = mrpc.tokenized_mrpc(a)
    rows = train.select_columns(["input_ids", "token_type_ids", "attention_mask", "label"]).to_list()
    order = finch.data.batching.epoch_batches(len(rows), a.batch_size, 42, 0, "group_by_length",
                                     [len(r["input_ids"]) for r in rows])
    collate = DataCollatorWithPadding(tok, pad_to_multiple_of=8)
    return [collate([rows[i] for i in indices]) for indices in order[:a.steps + 3]]


def run(batches: list[dict], fast: bool, profiler: profile | None = None) -> dict[str, float]:
    """Train on `batches`; milliseconds per step for each part, the first 3 steps (warm-up) left out."""
    model = mrpc.pretrained_model(42)
    optimizer = create_optimizer(model, finch.TrainingArguments(output_dir="unused", learning_rate=5e-5,
                                                                weight_decay=0.01))
    precision = choose_precision(None, None, torch.device("cpu"))
    totals = dict.fromkeys(PARTS, 0.0)
    model.train()
    with fast_dropout(model, enabled=fast):
        for index, batch in enumerate(batches):
            if index == 3 and profiler is not None:
                profiler.start()
            marks = [time.perf_counter()]
            with precision.autocast(torch.device("cpu")):
                loss = model(**batch).loss
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            marks.append(time.perf_counter())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            marks.append(time.perf_counter())
            if index >= 3:
                for part, start, end in zip(PARTS, marks, marks[1:]):
                    totals[part] += (end - start) * 1e3 / (len(batches) - 3)
    if profiler is not None:
        profiler.stop()
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="profiler rows to print per side (0: no profile)")
    p.add_argument("--data", type=Path, default=mrpc.DEFAULT_DATA)
    a = p.parse_args()
    a.subset = None
    batches = batches_for(a)
    print(f"batch {a.batch_size}, {a.steps} timed steps, mean padded length "
          f"{statistics.mean(b['input_ids'].shape[1] for b in batches):.1f}, {torch.get_num_threads()} threads")
    ratios = []
    for round_index in range(a.repeats):
        sides = (False, True) if round_index % 2 == 0 else (True, False)
        result = {fast: run(batches, fast) for fast in sides}
        for fast in (False, True):
            parts = " ".join(f"{part} {result[fast][part]:6.1f}" for part in PARTS)
            print(f"round {round_index + 1} {'finch dropout' if fast else 'torch dropout'}: "
                  f"{sum(result[fast].values()):6.1f} ms/step ({parts})")
        ratios.append(sum(result[False].values()) / sum(result[True].values()))
    print(f"torch dropout / finch dropout, median per-round step time: {statistics.median(ratios):.3f}x "
          f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})")
    for fast in (False, True) if a.top else ():
        profiler = profile(activities=[ProfilerActivity.CPU])
        run(batches[:13], fast, profiler)  # starts after 3 warm-up steps
        print(f"\ntop operators, {'finch' if fast else 'torch'} dropout, 10 steps:")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))


if __name__ == "__main__":
    main()
