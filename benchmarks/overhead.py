"""finch's training step against a raw forward/backward/optimizer step on identical batches: the overhead ratio.

Both sides train the same model on the same pre-collated MRPC batches (length-grouped, so shapes vary as in real
training) with the same recipe: finch's default precision here (bf16 autocast on AMX/AVX-512-bf16 CPUs, else fp32),
finch's CPU dropout, clipping at 1.0, fused AdamW, linear schedule. finch gets the batches through a collator that
hands back the pre-built batch, so collation costs nothing on either side and the difference is finch's loop: loss
normalisation, item counting, callbacks, non-finite checks, logging/eval/save decisions. The two alternate for
--repeats rounds, each going first in every other round; the median of the per-round ratios is the overhead. The
final weights of every round are compared too (after one untimed warm-up pass): with the same seed they must be
identical.

`--model minilm` (default) is the pretrained all-MiniLM-L6-v2: on a CPU its matmuls hide the loop's host work.
`--model tiny` is a 2-layer BERT of width 32 (random init, MiniLM's vocabulary): compute is near zero, so the
milliseconds per step are the host's, the part that bounds small-model steps on a GPU.

Usage (from the repo root):
    python benchmarks/overhead.py                 # 200 steps x 6 rounds each, first side alternating
    python benchmarks/overhead.py --model tiny --steps 300 --repeats 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mrpc
import torch
from transformers import DataCollatorWithPadding, get_scheduler

import finch
from finch.distributed.runtime import choose_precision
from finch.training.dropout import fast_dropout
from finch.training.optim import create_optimizer

MODEL = "minilm"  # --model


def prebuilt_batches(a: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """`--steps` collated batches of MRPC, in finch's length-grouped order for seed 42, epoch 0."""
    tok, train, _ = mrpc.tokenized_mrpc(a)
    rows = train.select_columns(["input_ids", "token_type_ids", "attention_mask", "label"]).to_list()
    order = finch.data.batching.epoch_batches(len(rows), a.batch_size, 42, 0, "group_by_length",
                                     [len(r["input_ids"]) for r in rows])
    collate = DataCollatorWithPadding(tok)
    return [collate([rows[i] for i in indices]) for indices in order[:a.steps]]


def build_model(kind: str, seed: int) -> torch.nn.Module:
    if kind == "minilm":
        return mrpc.pretrained_model(seed)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, num_labels=2))


def raw_loop(batches: list[dict], args: finch.TrainingArguments) -> tuple[float, torch.nn.Module]:
    """The plain step: forward in finch's precision (with finch's CPU dropout), backward, clip, optimizer, schedule,
    zero_grad."""
    model = build_model(MODEL, args.seed)
    precision = choose_precision(args.bf16, args.fp16, torch.device("cpu"))
    optimizer = create_optimizer(model, args)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=len(batches))
    model.train()
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    with fast_dropout(model):  # finch's CPU dropout kernels, as finch's loop uses them
        for batch in batches:
            with precision.autocast(torch.device("cpu")):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started, model


def finch_loop(batches: list[dict], args: finch.TrainingArguments) -> tuple[float, torch.nn.Module]:
    """finch's Trainer on the same batches: a dataset of batch numbers, a collator that returns the batch."""
    model = build_model(MODEL, args.seed)
    trainer = finch.Trainer(model=model, args=args, train_dataset=[{"batch": i} for i in range(len(batches))],
                            data_collator=lambda rows: dict(batches[rows[0]["batch"]]))
    output = trainer.train()
    return output.metrics["train_runtime"], model


def timed_digest(loop, batches: list[dict], args: finch.TrainingArguments) -> tuple[float, str]:
    """Run `loop`; its seconds and a SHA-256 of the final weights (the model itself is let go)."""
    seconds, model = loop(batches, args)
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return seconds, digest.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--data", type=Path, default=mrpc.DEFAULT_DATA)
    a = p.parse_args()
    a.subset = None
    global MODEL
    MODEL = a.model
    if a.threads:
        torch.set_num_threads(a.threads)
    batches = prebuilt_batches(a)
    with tempfile.TemporaryDirectory() as out_dir:
        args = finch.TrainingArguments(output_dir=out_dir, per_device_train_batch_size=1, max_steps=len(batches),
                                       learning_rate=mrpc.LEARNING_RATE, weight_decay=mrpc.WEIGHT_DECAY,
                                       train_sampling_strategy="sequential", save_strategy="no",
                                       logging_steps=50, disable_tqdm=True, remove_unused_columns=False)
        raw_loop(batches, args)  # warm-up: oneDNN builds its kernels for each new shape on first use
        raw_times, finch_times, same = [], [], True
        for round_index in range(a.repeats):
            # which side goes first alternates: this machine's speed drifts by several % from minute to minute
            order = (raw_loop, finch_loop) if round_index % 2 == 0 else (finch_loop, raw_loop)
            # each side's model is reduced to a digest before the other runs: holding two models would slow the second
            results = {loop: timed_digest(loop, batches, args) for loop in order}
            (raw_s, raw_digest), (finch_s, finch_digest) = results[raw_loop], results[finch_loop]
            raw_times.append(raw_s)
            finch_times.append(finch_s)
            same = same and raw_digest == finch_digest
            print(f"round {round_index}: raw {raw_s:.2f} s, finch {finch_s:.2f} s, ratio {finch_s / raw_s:.3f}",
                  flush=True)
    raw_ms, finch_ms = (1000 * statistics.median(t) / len(batches) for t in (raw_times, finch_times))
    ratio = statistics.median(f / r for f, r in zip(finch_times, raw_times))
    print(f"\n{a.model}: {len(batches)} steps of batch {a.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {a.repeats} rounds")
    print(f"raw loop   {raw_ms:8.2f} ms/step")
    print(f"finch      {finch_ms:8.2f} ms/step")
    print(f"overhead   {100 * (ratio - 1):+.2f}%  (median over rounds of finch / raw = {ratio:.3f})")
    print(f"final weights identical in every round: {same}")


if __name__ == "__main__":
    main()
