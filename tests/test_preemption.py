"""Killed and preempted training processes resume to the same weights, bit for bit, as a run never stopped."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import FAST, reviews, write_csv

import finch.cli.job
from finch import TrainerCallback
from finch.cli.commands import main
from finch.runs.folders import checkpoints, verify
from finch.training.preemption import EXIT_PREEMPTED

WORKER = Path(__file__).resolve().parent / "train_worker.py"


def start(output_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(output_dir), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_started(process: subprocess.Popen) -> None:
    line = process.stdout.readline()
    assert line.strip() == "started", f"worker failed to start: {line!r} {process.stderr.read()[-2000:]}"


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


KILLS = 6  # each restart costs an interpreter's imports (~8 s on 2 cores); the points are random


@pytest.mark.slow
def test_sigkill_at_six_random_points_then_resume_matches_uninterrupted_run(tmp_path):
    expected = finish(start(tmp_path / "straight", "--steps", "100"))
    killed_dir, rng, kills = tmp_path / "killed", random.Random(0), 0
    while kills < KILLS:
        process = start(killed_dir, "--steps", "100", "--step-seconds", "0.02")
        wait_started(process)
        time.sleep(rng.uniform(0.0, 0.8))  # each step saves (~50 ms in all): kills land in and between saves
        if process.poll() is not None:  # it finished before the kill: that run does not count
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills == KILLS, "the run finished before every kill; lengthen it"
    final = finish(start(killed_dir, "--steps", "100"))
    assert final == expected
    damaged = {folder.name: verify(folder) for folder in checkpoints(killed_dir) if verify(folder) is not None}
    assert not damaged, f"checkpoints left damaged after the resumed run finished: {damaged}"
    assert not list(killed_dir.glob(".tmp-*")), "leftover temporary folders are cleaned on the next start"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_75_and_resumes_exactly(tmp_path):
    expected = finish(start(tmp_path / "straight", "--save-steps", "1000"))
    run_dir = tmp_path / "preempted"
    process = start(run_dir, "--save-steps", "1000", "--step-seconds", "0.05")
    wait_started(process)
    time.sleep(0.8)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, err[-3000:]
    saved = checkpoints(run_dir)
    assert len(saved) == 1 and 0 < int(saved[0].name.split("-")[1]) < 40, "one checkpoint, mid-run"
    assert "training stopped by SIGTERM" in err and str(saved[0]) in err
    assert finish(start(run_dir, "--save-steps", "1000")) == expected


@pytest.mark.slow
def test_resume_exact_with_dataloader_workers(tmp_path):
    expected = finish(start(tmp_path / "straight", "--workers", "2", "--steps", "12"))
    run_dir = tmp_path / "stopped"
    process = start(run_dir, "--workers", "2", "--steps", "12", "--save-steps", "1000", "--step-seconds", "0.1")
    wait_started(process)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED
    assert finish(start(run_dir, "--workers", "2", "--steps", "12", "--save-steps", "1000")) == expected


class SignalAt(TrainerCallback):
    """A stop signal arriving during step `step` (Ctrl-C, or a scheduler's SIGTERM)."""

    def __init__(self, number: int, step: int) -> None:
        self.number, self.step = number, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.number)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_finch_train_stopped_by_a_signal_says_to_rerun_it_with_resume_auto(tmp_path, tiny_model_dir, monkeypatch,
                                                                          caplog, number):
    """The stop message names the command line's way to go on, not only the Python API's, and that way works."""
    real_trainer = finch.cli.job.Trainer

    def stopped_at_step_2(*args, **kwargs):
        trainer = real_trainer(*args, **kwargs)
        trainer.add_callback(SignalAt(number, 2))
        return trainer

    command = ["train", "--model", tiny_model_dir, "--train", write_csv(tmp_path / "t.csv", reviews(24)),
               "--output-dir", str(tmp_path / "run"), "--per-device-train-batch-size", "4", *FAST]
    monkeypatch.setattr(finch.cli.job, "Trainer", stopped_at_step_2)  # where the CLI builds its Trainer
    with pytest.raises(SystemExit) as stop:
        main(command)
    assert stop.value.code == EXIT_PREEMPTED
    message = next(record.getMessage() for record in caplog.records if "training stopped by" in record.getMessage())
    assert f"training stopped by {signal.Signals(number).name}" in message
    assert "checkpoint-2" in message and "the same command with --resume auto" in message
    assert "finch train ... --resume auto" in message
    monkeypatch.setattr(finch.cli.job, "Trainer", real_trainer)
    caplog.set_level(logging.INFO, logger="finch")
    assert main([*command, "--resume", "auto"]) == 0  # the advice, followed
    assert f"Resuming from {tmp_path / 'run' / 'checkpoint-2'} at step 2" in caplog.text
