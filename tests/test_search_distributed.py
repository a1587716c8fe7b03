"""Hyperparameter search under torchrun (2 ranks, gloo, tiny BERT): rank 0 owns the study, every rank trains each
trial with the same parameters, pruning and the `timeout` end trials and studies on every rank together, and a
failure on rank 0 never leaves rank 1 waiting. Each torchrun is a subprocess with a timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from test_distributed import RUN_TIMEOUT, environment

WORKER = Path(__file__).with_name("search_worker.py")


def torchrun(scenario: str, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
               scenario, str(out)]
    return subprocess.run(command, check=False, env=environment(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def untimed(rank: dict) -> dict:
    return {name: {k: v for k, v in search.items() if k != "seconds"} for name, search in rank.items()}


@pytest.mark.slow
def test_two_ranks_train_the_same_trials_prune_together_and_stop_at_the_timeout(tmp_path):
    result = torchrun("prune", tmp_path)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    zero, one = ranks(tmp_path)
    assert untimed(zero) == untimed(one)  # the same trials, parameters, steps and best run on both ranks
    # 3 trials: the enqueued learning rates, and the dropout model_init(trial) suggested on rank 0, on both ranks
    pruned = zero["pruned"]
    assert [t["learning_rate"] for t in pruned["trials"]] == [1e-3, 2e-3, 30.0]
    assert [t["dropout"] for t in pruned["trials"]] == [0.2, 0.2, 0.2]
    assert [t["trial"] for t in pruned["trials"]] == ["run-0", "run-1", "run-2"]
    assert [t["steps"] for t in pruned["trials"]] == [6, 6, 2]  # the diverging one left at its first evaluation
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert not list((tmp_path / "pruned" / "run-2").glob("checkpoint-*"))  # the pruned trial's are removed
    best = min((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert pruned["best"][:3] == [str(best.number), best.value, best.params]  # rank 1 returns rank 0's BestRun
    # the timeout (2.5 s, a trial takes more than 1 s) ended a study of up to 100 trials on both ranks
    timed = zero["timed"]
    assert 1 <= len(timed["trials"]) < 100 and "error" not in timed
    assert len({t["learning_rate"] for t in timed["trials"]}) == len(timed["trials"])  # sampled, not repeated


@pytest.mark.slow
def test_a_failure_on_rank_zero_ends_the_search_on_every_rank(tmp_path):
    result = torchrun("fail", tmp_path)
    assert result.returncode != 0
    zero, one = ranks(tmp_path)
    # the first trial's NaN failed it on both ranks and the search went on; then rank 0's space raised
    assert [t["learning_rate"] for t in zero["search"]["trials"]] == [1e30]
    assert one["search"]["trials"] == zero["search"]["trials"]
    assert zero["search"]["error"] == "RuntimeError: the space broke"
    assert one["search"]["error"] == ("SearchAborted: rank 0's hyperparameter search failed: RuntimeError: the "
                                      "space broke")
    assert "failed on every rank" in result.stderr  # rank 1 said why it waited for rank 0's next trial


@pytest.mark.slow
def test_a_crash_on_rank_zero_mid_trial_never_leaves_rank_one_waiting(tmp_path):
    result = torchrun("crash", tmp_path)
    assert result.returncode != 0 and "a callback on rank 0 broke" in result.stderr
    zero, one = ranks(tmp_path)
    assert zero["search"]["error"] == "RuntimeError: a callback on rank 0 broke"
    assert "error" in one["search"]  # rank 1 left its collective when rank 0's process group closed
    assert one["search"]["seconds"] < 60  # long before its collective's timeout (ddp_timeout=120) would end it
