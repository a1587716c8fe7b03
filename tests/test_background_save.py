"""Background checkpoint saves: the state is copied on the training thread and written in another, so the steps
after a save overlap the disk. The invariants: the files are those a synchronous save writes (the state as it
was at the save, not as training left it later), one write at a time, every reader of checkpoints waits, and a
failed write is raised on the training thread."""

from __future__ import annotations

import errno
import json
import threading
import time

import pytest
import safetensors.torch
import torch
from conftest import tiny_bert

import finch.runs.checkpoint
from finch import Trainer, TrainerCallback, TrainingArguments
from finch.runs.checkpoint import CheckpointError
from finch.runs.folders import checkpoints, verify

SAME_FILES = ("model.safetensors", "scheduler.json", "rng_state.json", "config.json")


def run_args(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path), "save_strategy": "steps", "save_steps": 3, "logging_steps": 1000,
              "disable_tqdm": True, "learning_rate": 2e-3, "seed": 3, "per_device_train_batch_size": 8,
              "max_steps": 9, "bf16": False}
    return TrainingArguments(**{**values, **overrides})


class SlowWrites:
    """`save_checkpoint` made slow (it waits `delay` seconds first), counting the writes in flight at once."""

    def __init__(self, monkeypatch, delay=0.4):
        self.real, self.delay = finch.runs.checkpoint.save_checkpoint, delay
        self.in_flight = self.most = 0
        self.threads, self.lock = set(), threading.Lock()
        monkeypatch.setattr(finch.runs.checkpoint, "save_checkpoint", self)

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.delay)
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1


class SeenAtStepEnd(TrainerCallback):
    """Which checkpoint folders were on disk at the end of each step."""

    def __init__(self, folder):
        self.folder, self.seen = folder, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.seen[state.global_step] = [path.name for path in checkpoints(self.folder)]


@pytest.mark.slow
def test_background_save_overlaps_training_and_writes_what_a_synchronous_save_writes(tmp_path, toy, tokenizer,
                                                                                       monkeypatch):
    Trainer(model=tiny_bert(), args=run_args(tmp_path / "sync", background_save=False), train_dataset=toy,
            processing_class=tokenizer).train()
    slow = SlowWrites(monkeypatch, delay=1.5)  # long enough that step 4 ends first on a loaded machine
    seen = SeenAtStepEnd(tmp_path / "background")
    trainer = Trainer(model=tiny_bert(), args=run_args(tmp_path / "background"), train_dataset=toy,
                      processing_class=tokenizer, callbacks=[seen])
    trainer.train()
    assert slow.threads == {"finch-checkpoint-writer"} and slow.most == 1, "one write at a time, in the background"
    assert "checkpoint-3" not in seen.seen[4], "step 4 ran while checkpoint-3 was being written"
    assert [p.name for p in checkpoints(tmp_path / "background")] == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    for step in (3, 6, 9):  # the weights as they were at the save, though training had moved on while it wrote
        sync, background = tmp_path / "sync" / f"checkpoint-{step}", tmp_path / "background" / f"checkpoint-{step}"
        assert verify(background) is None
        for name in SAME_FILES:
            assert (sync / name).read_bytes() == (background / name).read_bytes(), f"checkpoint-{step}/{name}"
        states = [json.loads((folder / "trainer_state.json").read_text()) for folder in (sync, background)]
        assert {**states[0], "run_id": None} == {**states[1], "run_id": None}
        assert states[1]["global_step"] == step
        expected, got = torch.load(sync / "optimizer.pt"), torch.load(background / "optimizer.pt")
        assert expected["param_groups"] == got["param_groups"]
        assert all(torch.equal(expected["state"][i][key], got["state"][i][key])
                   for i in expected["state"] for key in expected["state"][i])


@pytest.mark.slow
def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path, toy, tokenizer, monkeypatch):
    real_save = torch.save

    def disk_full_at_step_6(obj, path, *args, **kwargs):
        if "checkpoint-6" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_6)
    seen = SeenAtStepEnd(tmp_path)
    trainer = Trainer(model=tiny_bert(), args=run_args(tmp_path, max_steps=12), train_dataset=toy,
                      processing_class=tokenizer, callbacks=[seen])
    with pytest.raises(CheckpointError, match=r"No space left on device.*newest: .*checkpoint-3.*free disk space"):
        trainer.train()
    assert max(seen.seen) == 9, "raised at the next wait (the save at step 9), not lost"
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-3"] and verify(tmp_path / "checkpoint-3") is None
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
def test_readers_of_checkpoints_get_them_whole(tmp_path, toy, tokenizer, monkeypatch):
    """A callback's on_save, the best model loaded at the end, rotation, save_model: each sees whole checkpoints."""
    SlowWrites(monkeypatch, delay=0.3)
    found = []

    class ReadsOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = tmp_path / f"checkpoint-{state.global_step}"
            found.append(folder.is_dir() and verify(folder) is None)

    args = run_args(tmp_path, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                    metric_for_best_model="loss", greater_is_better=True, save_total_limit=1)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(16)),
                      processing_class=tokenizer, callbacks=[ReadsOnSave()])
    trainer.train()
    assert found == [True, True, True]
    best = trainer.state.best_model_checkpoint
    kept = sorted(p.name for p in checkpoints(tmp_path))
    assert verify(tmp_path / kept[-1]) is None and best.endswith(tuple(kept))
    loaded = safetensors.torch.load_file(f"{best}/model.safetensors")
    assert all(torch.equal(loaded[name], tensor) for name, tensor in trainer.model.state_dict().items()
               if name in loaded), "the best model was read back whole"
    trainer.save_model(str(tmp_path / "final"))
    assert json.loads((tmp_path / "final" / "config.json").read_text())["hidden_size"] == 32


@pytest.mark.slow
def test_background_save_off_writes_on_the_training_thread(tmp_path, toy, tokenizer, monkeypatch):
    slow = SlowWrites(monkeypatch, delay=0.0)
    Trainer(model=tiny_bert(), args=run_args(tmp_path, background_save=False, max_steps=3), train_dataset=toy,
            processing_class=tokenizer).train()
    assert slow.threads == {threading.main_thread().name}
