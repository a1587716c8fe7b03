"""Checkpoint format, exact resume, rotation that keeps the best, resume discovery."""

import json

import pytest
import safetensors.torch
import torch
from conftest import sentiment_dataset, tiny_bert, weights_of
from transformers import DataCollatorWithPadding

import finch.training.trainer
from finch import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from finch.errors import ResumeError
from finch.runs.checkpoint import CheckpointError
from finch.runs.folders import checkpoints, latest_checkpoint, verify


class StopAt(TrainerCallback):
    """Simulates an interruption: training ends after `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def run_args(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path), "save_strategy": "steps", "save_steps": 4, "logging_steps": 1000,
                  "disable_tqdm": True, "learning_rate": 2e-3, "seed": 3, "per_device_train_batch_size": 4,
                  "gradient_accumulation_steps": 2, "max_steps": 14, "bf16": False}
    values.update(overrides)
    return TrainingArguments(**values)


def test_checkpoint_folder_holds_no_pickles(tmp_path, toy, tokenizer):
    Trainer(model=tiny_bert(), args=run_args(tmp_path, max_steps=4), train_dataset=toy,
            processing_class=tokenizer).train()
    folder = tmp_path / "checkpoint-4"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.json", "rng_state.json",
            "trainer_state.json", "training_args.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl"))]
    torch.load(folder / "optimizer.pt", weights_only=True)  # loads without unpickling arbitrary objects
    state = json.loads((folder / "trainer_state.json").read_text())
    assert (state["global_step"], state["micro_step"]) == (4, 8)
    assert not list(tmp_path.glob(".tmp-*")), "temporary checkpoint folders must be renamed away"


@pytest.mark.slow
@pytest.mark.parametrize("bf16, strategy", [(False, "group_by_length"), (True, "group_by_length"), (False, "random")])
def test_resume_mid_epoch_gives_identical_weights(tmp_path, tokenizer, bf16, strategy):
    data = sentiment_dataset(tokenizer, rows=40)  # 10 micro-batches = 5 steps per epoch; checkpoint 4 is mid-epoch
    straight = Trainer(model=tiny_bert(), args=run_args(tmp_path / "a", bf16=bf16, train_sampling_strategy=strategy),
                       train_dataset=data, processing_class=tokenizer)
    straight.train()

    args = run_args(tmp_path / "b", bf16=bf16, train_sampling_strategy=strategy)
    Trainer(model=tiny_bert(), args=args, train_dataset=data, processing_class=tokenizer,
            callbacks=[StopAt(10)]).train()
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-8"
    resumed = Trainer(model=tiny_bert(seed=99), args=args, train_dataset=data, processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    assert resumed.state.global_step == 14 and resumed.state.micro_step == straight.state.micro_step
    expected, got = weights_of(straight.model), weights_of(resumed.model)
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed run differs from uninterrupted one"


def test_resume_true_takes_the_newest_checkpoint(tmp_path, toy, tokenizer):
    args = run_args(tmp_path)
    Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer, callbacks=[StopAt(9)]).train()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-8"]
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=True)
    first = next(e for e in trainer.state.log_history if "train_runtime" in e)
    assert trainer.state.global_step == 14 and first["step"] == 14
    history_steps = [e["step"] for e in trainer.state.log_history]
    assert history_steps == sorted(history_steps)


def test_resume_true_without_checkpoints_is_a_clear_error(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=run_args(tmp_path), train_dataset=toy, processing_class=tokenizer)
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_resume_with_different_data_is_refused(tmp_path, toy, tokenizer):
    args = run_args(tmp_path, max_steps=4)
    Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer).train()
    trainer = Trainer(model=tiny_bert(), args=run_args(tmp_path, max_steps=8), train_dataset=toy.select(range(20)),
                      processing_class=tokenizer)
    with pytest.raises(ResumeError, match="the training data differs from the data this checkpoint was trained on"):
        trainer.train(resume_from_checkpoint=True)


def test_rotation_keeps_the_best_and_loads_it_at_the_end(tmp_path, toy, tokenizer):
    scores = iter(
        [0.0, 0.9, 0.5, 0.4, 0.3, 0.2]
    )  # 0.0: compute_metrics tried before training; then the first evaluation is the best
    args = run_args(tmp_path, eval_strategy="steps", eval_steps=2, save_steps=2, max_steps=10, save_total_limit=1,
                    load_best_model_at_end=True, metric_for_best_model="score")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                      processing_class=tokenizer, compute_metrics=lambda prediction: {"score": next(scores)})
    trainer.train()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    best = safetensors.torch.load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(torch.equal(best[k], v) for k, v in weights_of(trainer.model).items() if k in best)


def test_early_stopping_counter_survives_resume(tmp_path, toy, tokenizer):
    args = run_args(tmp_path, eval_strategy="steps", eval_steps=2, save_steps=2, max_steps=20,
                    metric_for_best_model="score")
    metric = {"compute_metrics": lambda prediction: {"score": 0.5}}
    Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
            processing_class=tokenizer, callbacks=[EarlyStoppingCallback(3), StopAt(4)], **metric).train()
    # evaluations at steps 2 (best) and 4 (no improvement): one more bad evaluation than 1 remains before stopping
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                      processing_class=tokenizer, callbacks=[EarlyStoppingCallback(3)], **metric)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 8


def test_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, toy, tokenizer, caplog):
    args = run_args(tmp_path, save_steps=2, max_steps=6)
    Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer).train()
    assert latest_checkpoint(tmp_path).name == "checkpoint-6"
    weights = tmp_path / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated by a crash
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert "skipping" in caplog.text and "model.safetensors has" in caplog.text
    optimizer = tmp_path / "checkpoint-4" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte, same size
    optimizer.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    (tmp_path / "checkpoint-2" / "manifest.json").unlink()  # the save never finished
    assert latest_checkpoint(tmp_path) is None
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    with pytest.raises(ValueError, match="checkpoint-4 is damaged: optimizer.pt does not match its checksum"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_disk_full_while_saving_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, toy, tokenizer,
                                                                                 monkeypatch):
    args = run_args(tmp_path, save_steps=2, max_steps=4)
    real_save = torch.save

    def save_until_step_4(obj, path, *a, **k):
        if "checkpoint-4" in str(path):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_step_4)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    with pytest.raises(CheckpointError, match=r"No space left on device.*newest: .*checkpoint-2.*free disk space"):
        trainer.train()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2"] and verify(tmp_path / "checkpoint-2") is None
    assert not list(tmp_path.glob(".tmp-*"))


def test_resume_with_other_seed_or_model_is_refused(tmp_path, toy, tokenizer):
    Trainer(model=tiny_bert(), args=run_args(tmp_path, max_steps=4), train_dataset=toy,
            processing_class=tokenizer).train()
    other_seed = Trainer(model=tiny_bert(), args=run_args(tmp_path, seed=4), train_dataset=toy,
                         processing_class=tokenizer)
    with pytest.raises(ValueError, match="cannot resume .* exactly: seed: 3 then, 4 now"):
        other_seed.train(resume_from_checkpoint=True)
    bigger = Trainer(model=tiny_bert(num_labels=3), args=run_args(tmp_path), train_dataset=toy,
                     processing_class=tokenizer)
    with pytest.raises(ResumeError, match="the model differs from the one this checkpoint was trained on"):
        bigger.train(resume_from_checkpoint=True)


class CountingCollator:
    def __init__(self, tokenizer):
        self.inner, self.batches = DataCollatorWithPadding(tokenizer), 0

    def __call__(self, rows):
        self.batches += 1
        return self.inner(rows)


@pytest.mark.parametrize("stop_at", [2, 22])  # 10% and 90% into the 24-step epoch
def test_resume_does_not_replay_batches(tmp_path, tokenizer, stop_at):
    """Resume cost does not grow with the position: only the remaining batches are ever collated."""
    data = sentiment_dataset(tokenizer, rows=96)  # 24 batches of 4 = 12 steps of accumulation 2 per epoch
    args = run_args(tmp_path, save_steps=1, max_steps=12)
    Trainer(model=tiny_bert(), args=args, train_dataset=data, processing_class=tokenizer,
            callbacks=[StopAt(stop_at // 2)]).train()
    collator = CountingCollator(tokenizer)
    Trainer(model=tiny_bert(), args=args, train_dataset=data, processing_class=tokenizer,
            data_collator=collator).train(resume_from_checkpoint=True)
    assert collator.batches == 24 - stop_at


@pytest.mark.parametrize("scores, best, loads", [([0.1, 0.2, 0.3], "checkpoint-6", 0),  # the last step is the best
                                                  ([0.3, 0.2, 0.1], "checkpoint-2", 1)])
def test_the_best_model_is_loaded_at_the_end_only_when_it_is_not_the_current_one(tmp_path, toy, tokenizer,
                                                                                   monkeypatch, scores, best, loads):
    """When the best checkpoint was saved at the last step it holds the model's current weights: reading them back
    is skipped. Either way the model ends with the best checkpoint's weights, bit for bit."""
    loaded = []
    real_load = finch.training.trainer.checkpoint.load_model_weights
    monkeypatch.setattr(finch.training.trainer.checkpoint, "load_model_weights",
                        lambda *a, **k: loaded.append(a[1]) or real_load(*a, **k))
    values = iter([0.0, *scores])  # 0.0: compute_metrics tried before training
    args = run_args(tmp_path, eval_strategy="steps", eval_steps=2, save_steps=2, max_steps=6,
                    load_best_model_at_end=True, metric_for_best_model="score")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                      processing_class=tokenizer, compute_metrics=lambda prediction: {"score": next(values)})
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / best)
    assert len(loaded) == loads
    saved = safetensors.torch.load_file(tmp_path / best / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in weights_of(trainer.model).items() if k in saved)


def test_a_damaged_checkpoint_is_warned_about_once_per_process(tmp_path, toy, tokenizer, caplog):
    """The CLI's early resume check, its check with the data's fingerprint and train() each look: one warning."""
    Trainer(model=tiny_bert(), args=run_args(tmp_path, save_steps=2, max_steps=4), train_dataset=toy,
            processing_class=tokenizer).train()
    weights = tmp_path / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="finch"):
        assert [latest_checkpoint(tmp_path).name for _ in range(3)] == ["checkpoint-2"] * 3
    assert caplog.text.count("skipping") == 1
