"""One rank of the hyperparameter search tests under torchrun
(`torchrun --nproc-per-node 2 tests/search_worker.py SCENARIO OUT`). Each rank writes what it saw to
`OUT/rank<r>.json`: every trial it trained (the parameters, the learning rate it trained with, what `model_init(trial)`
read, the steps it ran) and what `hyperparameter_search` returned or raised.

Scenarios:
    prune    3 trials on a SQLite study (learning rates enqueued: the third diverges and is pruned at its first
             evaluation), `model_init(trial)` suggesting a dropout of its own; then a second search of up to 100
             trials that its `timeout` ends after a few.
    fail     the first trial's loss turns NaN on every rank (the search goes on), then rank 0's space raises in the
             second trial: every rank must leave with that error.
    crash    a callback on rank 0 only raises in the middle of the first trial: every rank must leave.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
from conftest import sentiment_dataset, tiny_bert
from distributed_worker import tokenizer

from finch import Trainer, TrainerCallback, TrainingArguments

RANK = int(os.environ.get("RANK", "0"))
PRUNE_LEARNING_RATES = [1e-3, 2e-3, 30.0]  # the last one explodes at once: pruned at its first evaluation


class Seen(TrainerCallback):
    """Records each trial as this rank trains it."""

    def __init__(self) -> None:
        self.trials: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.trials.append({"learning_rate": args.learning_rate, "folder": args.output_dir})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.trials[-1].update(trial=state.trial_name, params=state.trial_params, steps=state.global_step,
                               dropout=model.config.hidden_dropout_prob)


class CrashOnRankZero(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if RANK == 0 and state.global_step == 2:
            raise RuntimeError("a callback on rank 0 broke")


def space(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 100.0, log=True)}


def model_init(trial):
    dropout = 0.1 if trial is None else trial.suggest_categorical("dropout", [0.0, 0.2])
    return tiny_bert(dropout=dropout)


def make_trainer(output_dir: Path, callbacks: list) -> Trainer:
    words = tokenizer()
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=6,
                             eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                             logging_steps=100, disable_tqdm=True, bf16=False, seed=3, report_to="none",
                             ddp_timeout=120)  # a rank left waiting fails (and exits) within the test's timeout
    return Trainer(model_init=model_init, args=args, train_dataset=sentiment_dataset(words, rows=41),
                   eval_dataset=sentiment_dataset(words, rows=16, seed=1), processing_class=words,
                   callbacks=callbacks)


def search(output_dir: Path, callbacks: list, **kwargs) -> dict:
    seen = Seen()
    trainer = make_trainer(output_dir, [seen, *callbacks])
    outcome = {"trials": seen.trials}
    started = time.monotonic()
    try:
        best = trainer.hyperparameter_search(hp_space=kwargs.pop("hp_space", space), **kwargs)
        outcome["best"] = list(best)
    except Exception as error:  # noqa: BLE001 - what the search raised is what the test reads
        outcome["error"] = f"{type(error).__name__}: {error}"
        outcome["traceback"] = traceback.format_exc()
    outcome["seconds"] = time.monotonic() - started
    return outcome


def prune(out: Path) -> dict:
    url = f"sqlite:///{out / 'study.db'}"
    if RANK == 0:  # rank 0 owns the study: the others never open it
        study = optuna.create_study(study_name="p", storage=url)
        for learning_rate in PRUNE_LEARNING_RATES:
            study.enqueue_trial({"learning_rate": learning_rate, "dropout": 0.2})
    pruned = search(out / "pruned", [], n_trials=3, storage=url, study_name="p", load_if_exists=True,
                    pruner=optuna.pruners.MedianPruner(n_startup_trials=2))

    def slow_space(trial):  # rank 0 only: each trial takes a second more, so the timeout ends the study
        time.sleep(1.0)
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    timed = search(out / "timed", [], hp_space=slow_space, n_trials=100, timeout=2.5,
                   sampler=optuna.samplers.RandomSampler(seed=0))
    return {"pruned": pruned, "timed": timed}


def fail(out: Path) -> dict:
    def breaks(trial):
        if trial.number == 1:
            raise RuntimeError("the space broke")
        return {"learning_rate": 1e30, "max_nonfinite_steps": 1}  # NaN at once: NonFiniteLossError on every rank

    return {"search": search(out / "fail", [], hp_space=breaks, n_trials=3)}


def crash(out: Path) -> dict:
    return {"search": search(out / "crash", [CrashOnRankZero()], n_trials=2)}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = {"prune": prune, "fail": fail, "crash": crash}[scenario](out)
    (out / f"rank{RANK}.json").write_text(json.dumps(result, indent=1, default=str))
    if any("error" in search_ for search_ in result.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
