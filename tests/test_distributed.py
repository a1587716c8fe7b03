"""Many processes under torchrun (gloo on the CPU, 2 ranks, tiny BERT): the same run as one process, exact
evaluation, agreed control decisions, preemption and exact resume. Each multi-process run is a subprocess with a
timeout, so a rank left waiting in a collective fails the test instead of hanging it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import sentiment_dataset, tiny_bert

from finch import Trainer, TrainingArguments
from finch.data import batching
from finch.distributed.runtime import Launch
from finch.errors import ResumeError
from finch.runs.checkpoint import rng_file
from finch.runs.folders import checkpoints, launch_of, verify, world_size_of
from finch.runs.resume import plan_resume
from finch.training.preemption import EXIT_PREEMPTED

WORKER = Path(__file__).with_name("distributed_worker.py")
RUN_TIMEOUT = 240  # seconds: a hang fails the test instead of blocking the suite


def environment() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def torchrun_command(*worker_args: str, processes: int = 2, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            f"--max-restarts={restarts}", str(WORKER), *worker_args]


def torchrun(*worker_args: str, processes: int = 2, restarts: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun_command(*worker_args, processes=processes, restarts=restarts), check=False,
                            env=environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-6000:]}"
    return result


def ranks(out: Path, count: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(count)]


def run_in_process(out: Path, **options) -> dict:
    """The worker's `train` scenario in this process (one rank, no torchrun)."""
    sys.path.insert(0, str(WORKER.parent))
    import distributed_worker

    values = {"per_device": 4, "accumulation": 1, "dropout": 0.0, "step_seconds": 0.0, "save_steps": 1000,
              "resume": "auto", "fail_at_step": 0, "kill_in_save": 0, "fsdp": False, "sharded": False,
              "load_best": False, "model": "bert", **options}
    out.mkdir(parents=True, exist_ok=True)
    return distributed_worker.train(argparse.Namespace(**values), out)


# ---- planning (in process) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 5, 8, 41])
def test_rank_shares_cover_each_global_batch_once(rows):
    for global_batch in batching.epoch_batches(rows, 8, seed=3, epoch=0, strategy="random"):
        shares = [batching.rank_share(global_batch, rank, 2) for rank in range(2)]
        counted = [index for rows_, counts in shares if counts for index in rows_]
        assert sorted(counted) == sorted(global_batch), "every example once, none twice"
        assert all(rows_ for rows_, _ in shares), "an idle rank still gets a (zero-weight) row for DDP's backward"


def test_drop_last_drops_the_incomplete_global_batch():
    steps = batching.epoch_steps(41, 8, 1, seed=0, epoch=0, strategy="random", drop_last=True)
    assert len(steps) == batching.steps_per_epoch(41, 8, 1, drop_last=True) == 5
    assert all(len(batch) == 8 for step in steps for batch in step)
    assert batching.steps_per_epoch(41, 8, 1) == 6


def test_one_process_makes_no_torch_distributed_call(tmp_path, tokenizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a single process called torch.distributed")

    for name in ("init_process_group", "all_reduce", "all_gather_object", "broadcast_object_list", "barrier"):
        monkeypatch.setattr(torch.distributed, name, refuse)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, save_steps=1, bf16=False, disable_tqdm=True,
                             eval_strategy="steps", eval_steps=1)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=sentiment_dataset(tokenizer, rows=16),
                      eval_dataset=sentiment_dataset(tokenizer, rows=4), processing_class=tokenizer)
    trainer.train()
    assert trainer.is_world_process_zero() and args.world_size == 1 and args.process_index == 0
    assert world_size_of(tmp_path / "checkpoint-2") == 1


def test_a_restart_resumes_only_checkpoints_of_its_own_launch(tmp_path, tokenizer, monkeypatch, one_thread):
    """Checkpoints record torchrun's launch id; a restarted worker takes the newest of its own launch's, over what
    the command asks; another launch's are never taken for its own, and before a restart nothing changes."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, bf16=False, disable_tqdm=True)
    Trainer(model=tiny_bert(), args=args, train_dataset=sentiment_dataset(tokenizer, rows=16),
            processing_class=tokenizer).train()
    assert [launch_of(folder) for folder in checkpoints(tmp_path)] == ["job-1", "job-1"]
    older = tmp_path / "checkpoint-2"
    assert plan_resume(tmp_path, None, args, launch=Launch("job-1", restarts=1)) == tmp_path / "checkpoint-4"
    assert plan_resume(tmp_path, older, args, launch=Launch("job-1", restarts=2)) == tmp_path / "checkpoint-4"
    assert plan_resume(tmp_path, older, args, launch=Launch("job-1", restarts=0)) == older, "the first attempt"
    with pytest.raises(ResumeError, match="another run"):
        plan_resume(tmp_path, None, args, launch=Launch("job-2", restarts=1))  # another job's: refused as before


# ---- two ranks (torchrun) -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_of_four_equal_one_process_of_eight_and_of_four_with_accumulation(tmp_path):
    """41 examples: the last global batch has one row, so rank 1 runs a zero-weight row there."""
    torchrun("train", str(tmp_path / "ddp"), "--per-device", "4")
    two = ranks(tmp_path / "ddp")
    assert two[0]["digest"] == two[1]["digest"], "the ranks' weights drifted apart"
    run_in_process(tmp_path / "eight", per_device=8)
    run_in_process(tmp_path / "accumulated", per_device=4, accumulation=2)
    weights = {name: torch.load(tmp_path / name / "weights.pt") for name in ("ddp", "eight", "accumulated")}
    start = tiny_bert().state_dict()
    for name in ("ddp", "accumulated"):
        for key, expected in weights["eight"].items():
            assert torch.allclose(weights[name][key], expected, atol=1e-5, rtol=0), f"{name}: {key} differs"
    assert not torch.allclose(weights["ddp"]["classifier.weight"], start["classifier.weight"], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lora", "causal"])
def test_two_ranks_of_four_equal_one_process_of_eight_for_lora_and_a_causal_lm(tmp_path, model):
    """A LoRA adapter (DDP over a frozen base) and a causal LM (the loss over the step's target tokens of both
    ranks, each row's first token no target) train as one process of eight does."""
    pytest.importorskip("peft")
    torchrun("train", str(tmp_path / "ddp"), "--per-device", "4", "--model", model)
    two = ranks(tmp_path / "ddp")
    assert two[0]["digest"] == two[1]["digest"], "the ranks' weights drifted apart"
    assert two[0]["losses"] == two[1]["losses"]
    one = run_in_process(tmp_path / "eight", per_device=8, model=model)
    assert two[0]["losses"] == pytest.approx(one["losses"], rel=1e-5)
    ddp, eight = (torch.load(tmp_path / name / "weights.pt") for name in ("ddp", "eight"))
    assert ddp.keys() == eight.keys()
    for key, expected in eight.items():
        assert torch.allclose(ddp[key], expected, atol=1e-5, rtol=0), f"{key} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """The weights digest of the uninterrupted 2-rank run (dropout 0.1, 12 steps) that every stopped, killed or
    restarted run of the same arguments must end with, bit for bit."""
    out = tmp_path_factory.mktemp("uninterrupted")
    torchrun("train", str(out), "--dropout", "0.1")
    first, second = ranks(out)
    assert first["digest"] == second["digest"] and first["step"] == 12
    return first["digest"]


@pytest.mark.slow
def test_sigterm_saves_one_whole_checkpoint_every_rank_exits_75_and_the_resume_is_exact(tmp_path, uninterrupted):
    """The run of `uninterrupted` stopped by SIGTERM to torchrun, then resumed."""

    out = tmp_path / "stopped"
    launcher = subprocess.Popen(torchrun_command("train", str(out), "--dropout", "0.1", "--step-seconds", "0.4"),
                                env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while "started" not in (launcher.stdout.readline() or "") and time.monotonic() < deadline:
            pass
        time.sleep(1.5)  # a few steps in
        launcher.send_signal(signal.SIGTERM)
        launcher.communicate(timeout=RUN_TIMEOUT)
    finally:
        launcher.kill()
    assert [(out / f"exit-{rank}").read_text() for rank in range(2)] == [str(EXIT_PREEMPTED)] * 2
    saved = checkpoints(out)
    assert len(saved) == 1 and verify(saved[0]) is None, f"one whole checkpoint, found {saved}"
    assert 0 < int(saved[0].name.split("-")[1]) < 12, "stopped mid-run"
    assert world_size_of(saved[0]) == 2 and (saved[0] / rng_file(1)).exists(), "rank 1's RNG state is saved"
    assert not list(out.glob(".tmp-*")), "no half-written save left behind"

    with pytest.raises(ResumeError, match=r"saved by 2 process\(es\), this run has 1.*allow_world_size_change"):
        run_in_process(out, dropout=0.1)
    torchrun("train", str(out), "--dropout", "0.1")
    resumed = ranks(out)
    assert resumed[0]["step"] == 12
    assert resumed[0]["digest"] == resumed[1]["digest"] == uninterrupted, \
        "2-rank runs are bit-identical: an uninterrupted one and one stopped and resumed"


@pytest.mark.slow
def test_max_restarts_resumes_the_launchs_newest_checkpoint_by_itself(tmp_path, uninterrupted):
    """Rank 1 dies after step 7 on the first attempt; `torchrun --max-restarts 1` restarts both ranks, which resume
    checkpoint-6 although the script never asks to resume, and end with the uninterrupted run's weights."""
    out = tmp_path / "restarted"
    torchrun("train", str(out), "--dropout", "0.1", "--save-steps", "3", "--fail-at-step", "7", "--resume", "none",
             restarts=1)
    first, second = ranks(out)
    assert first["restarts"] == second["restarts"] == 1, "the run finished on torchrun's restart"
    assert first["start_step"] == second["start_step"] == 6, "both ranks resumed the newest whole checkpoint"
    assert first["step"] == 12 and first["digest"] == second["digest"] == uninterrupted


@pytest.mark.slow
def test_sigkill_of_a_rank_in_a_checkpoint_write_and_at_a_random_moment_then_the_resume_is_exact(tmp_path,
                                                                                              uninterrupted):
    """The `uninterrupted` run, saving every 2 steps, under `torchrun --max-restarts 2`: rank 0 SIGKILLed half-way
    through writing checkpoint-4; the restart resumes checkpoint-2, and a rank chosen at random is SIGKILLed at a
    random moment; the second restart resumes and finishes. No process gets to clean up; the end is the
    uninterrupted run's, bit for bit."""
    seed = random.randrange(2**32)
    chance, why = random.Random(seed), f"random seed {seed}"
    out, log = tmp_path / "killed", (tmp_path / "torchrun.log").open("w+")  # a file: a full pipe would block it
    launcher = subprocess.Popen(torchrun_command("train", str(out), "--dropout", "0.1", "--save-steps", "2",
                                                 "--step-seconds", "0.3", "--kill-in-save", "4", restarts=2),
                                env=environment(), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        victim = chance.choice([0, 1])
        while not (out / f"pid-{victim}-1").exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the first restart is training
        time.sleep(chance.uniform(0.0, 2.0))  # anywhere in its steps, checkpoint writes included
        os.kill(int((out / f"pid-{victim}-1").read_text()), signal.SIGKILL)
        launcher.wait(timeout=RUN_TIMEOUT)
    finally:
        launcher.kill()
        log.close()
    output = (tmp_path / "torchrun.log").read_text()
    assert launcher.returncode == 0, f"{why}\n{output[-4000:]}"
    assert re.search(r"\(restart 1\): resuming \S+/checkpoint-2, ", output), "checkpoint-4 was half-written"
    first, second = ranks(out)
    assert first["restarts"] == 2 and first["start_step"] >= 2 and first["step"] == 12, why
    assert first["digest"] == second["digest"] == uninterrupted, f"{why}: not the uninterrupted run's weights"
    assert not list(out.glob(".tmp-*")) and all(verify(folder) is None for folder in checkpoints(out)), why


@pytest.mark.slow
def test_evaluation_on_two_ranks_counts_every_example_once_in_order(tmp_path):
    torchrun("evaluate", str(tmp_path / "two"))
    two = ranks(tmp_path / "two")
    assert two[0] == two[1], "metrics and predictions identical on every rank"
    sys.path.insert(0, str(WORKER.parent))
    import distributed_worker

    one = distributed_worker.evaluate(tmp_path / "one")
    for rows in ("1", "7", "37"):
        assert two[0][rows]["metrics"]["eval_count"] == int(rows), "compute_metrics saw each example once"
        assert len(two[0][rows]["predictions"]) == int(rows)
        assert two[0][rows]["label_ids"] == one[rows]["label_ids"], "dataset order"
        assert torch.allclose(torch.tensor(two[0][rows]["predictions"]), torch.tensor(one[rows]["predictions"]),
                              atol=1e-6)
        assert two[0][rows]["metrics"] == pytest.approx(one[rows]["metrics"], abs=1e-6)


@pytest.mark.slow
def test_every_rank_agrees_on_nan_steps_callback_stops_and_early_stopping(tmp_path):
    torchrun("control", str(tmp_path))
    first, second = ranks(tmp_path)
    assert first == second, "the ranks took different decisions"
    assert first["stopped_by_callback"] == 5, "a callback on rank 1 alone stopped both ranks at step 5"
    assert first["adam_steps"] == [4] and first["scheduler_steps"] == 4, "the NaN on rank 1 skipped step 2 on both"
    assert first["early_stop_step"] == 2 and len(first["eval_losses"]) == 2
