"""The NaN/Inf guard: a non-finite step changes nothing and is counted; too many in a row stop training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

from finch import Trainer, TrainerCallback, TrainingArguments
from finch.training.nonfinite import NonFiniteGuard, NonFiniteLossError


class PoisonedTrainer(Trainer):
    """Returns a NaN loss on the given (1-based) optimizer steps."""

    def __init__(self, *args, poisoned_steps=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.poisoned_steps = set(poisoned_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training and self.state.global_step + 1 in self.poisoned_steps:
            return (result[0] * float("nan"), result[1]) if return_outputs else result * float("nan")
        return result


def args_for(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path), "max_steps": 8, "per_device_train_batch_size": 8, "learning_rate": 1e-3,
              "logging_steps": 4, "save_strategy": "no", "disable_tqdm": True, "bf16": False, "seed": 1}
    return TrainingArguments(**{**values, **overrides})


def test_nan_step_is_skipped_and_counted(tmp_path, toy, tokenizer, caplog):
    trainer = PoisonedTrainer(model=tiny_bert(), args=args_for(tmp_path), train_dataset=toy,
                              processing_class=tokenizer, poisoned_steps={3})
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    adam_steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {7}, "the poisoned step must not reach the optimizer"
    assert trainer.lr_scheduler.last_epoch == 7, "nor the schedule"
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged[0]["nonfinite_steps"] == 1 and all(entry["loss"] == entry["loss"] for entry in logged)
    assert "step 3: loss or gradient norm is NaN/Inf; update skipped" in caplog.text
    assert "examples " in caplog.text


def test_too_many_nan_steps_in_a_row_stop_with_the_last_checkpoint(tmp_path, toy, tokenizer):
    args = args_for(tmp_path, save_strategy="steps", save_steps=2, max_nonfinite_steps=3)
    trainer = PoisonedTrainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer,
                              poisoned_steps={3, 4, 5, 6, 7, 8})
    with pytest.raises(NonFiniteLossError, match=r"step 5: 3 steps in a row.*checkpoint-4"):
        trainer.train()


def test_nan_steps_that_recover_do_not_stop(tmp_path, toy, tokenizer):
    trainer = PoisonedTrainer(model=tiny_bert(), args=args_for(tmp_path, max_nonfinite_steps=2), train_dataset=toy,
                              processing_class=tokenizer, poisoned_steps={2, 4, 6})
    trainer.train()
    assert trainer.state.global_step == 8


def test_on_device_skip_leaves_weights_and_adam_untouched(tmp_path, toy, tokenizer, monkeypatch):
    """The CUDA path (fused AdamW's found_inf, flag read a step late), exercised on the CPU's fused kernel."""
    guards = []

    class RecordedGuard(NonFiniteGuard):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            guards.append(self)

    monkeypatch.setattr(NonFiniteGuard, "supports_on_device", staticmethod(lambda optimizer, device: True))
    monkeypatch.setattr("finch.training.trainer.NonFiniteGuard", RecordedGuard)
    poisoned = PoisonedTrainer(model=tiny_bert(), args=args_for(tmp_path / "a"), train_dataset=toy,
                               processing_class=tokenizer, poisoned_steps={3})
    poisoned.train()
    assert len(guards) == 1 and guards[0].on_device and guards[0].skipped == 1
    assert all(torch.isfinite(p).all() for p in poisoned.model.parameters())
    assert {int(s["step"]) for s in poisoned.optimizer.state.values()} == {7}


def test_on_device_limit_is_found_at_the_next_read_and_freezes_the_weights(tmp_path, toy, tokenizer, monkeypatch):
    """On the device the flags are read at logging/saving steps only; the limit reached in between freezes the
    weights (every later step skipped on the device) and the error names the step where it was reached."""
    monkeypatch.setattr(NonFiniteGuard, "supports_on_device", staticmethod(lambda optimizer, device: True))
    args = args_for(tmp_path, max_steps=12, logging_steps=10, save_strategy="steps", save_steps=10,
                    max_nonfinite_steps=2)
    trainer = PoisonedTrainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer,
                              poisoned_steps={3, 4})
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots[state.global_step] = [p.detach().clone() for p in kwargs["model"].parameters()]

    trainer.add_callback(Snapshot())
    with pytest.raises(NonFiniteLossError, match=r"step 4: 2 steps in a row.*no checkpoint was saved"):
        trainer.train()
    assert sorted(snapshots) == list(range(1, 11)), "read at step 10 (logging and saving), not before"
    assert all(torch.equal(a, b) for step in range(3, 11) for a, b in zip(snapshots[2], snapshots[step]))
    assert not list(tmp_path.glob("checkpoint-*")), "a step past the limit is never saved"
