"""Hyperparameter search on Optuna: HuggingFace's `Trainer.hyperparameter_search`, and the engine of `finch search`.

A trial is: parameters from the space -> `TrainingArguments` with them -> a fresh model (seeded by the trial's
`seed` before it is built) -> `train()` in the trial's own folder `output_dir/run-<trial number>` -> the objective.
Why each piece is as it is:

- Checked first. The space is tried on a throw-away in-memory trial and every value it can give is put through
  `TrainingArguments`' validation, the storage is opened, and folders of other searches are looked for, all before
  the first model is built: a typo in a name or an unreachable database costs seconds, not a trial.
- Pruning is a callback: at each evaluation it reports the objective to the trial and, when the pruner says so,
  asks the loop to stop (`control.should_training_stop`), so the loop ends as it always does (callbacks told);
  then the trial's checkpoints are removed and the trial is marked pruned.
- A killed worker loses nothing. With a database URL, running trials send heartbeats; a trial that stops sending
  them is marked failed and re-queued with the same parameters (Optuna's `RetryHeartbeatStaleTrialCallback`), and
  whichever worker takes it resumes the original trial's folder from its last checkpoint. Resume is exact, so the
  objective is the one an uninterrupted trial gets; the objective so far is saved in each checkpoint (the reporter
  is a stateful callback) for a trial killed after its last evaluation.
- Under torchrun, rank 0 owns the study and every rank trains each trial as one DDP run: rank 0 gives the others
  each trial's parameters and every pruning decision, and says when the study is over (`finch.search.ranks`).
- `n_jobs > 1` is refused: Optuna's threads would share one trainer. Search across processes or machines through
  a database instead, which is what Optuna's storages are for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import json
import logging
import math
import numbers
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.trainer_utils import BestRun

from finch.args import TrainingArguments, check_keys
from finch.errors import ConfigError, NonFiniteLossError, UnknownArgumentError
from finch.events import TrainerCallback
from finch.runs import folders as run_folders
from finch.search.ranks import RankChannel, TrialNotRun, TrialPlan, follow, lead, snapshot
from finch.search.storage import HEARTBEAT_INTERVAL, create_study, import_optuna, open_storage

logger = logging.getLogger("finch")

STUDY_OPTIONS = ("storage", "study_name", "load_if_exists", "sampler", "pruner")
OPTIMIZE_OPTIONS = ("timeout", "gc_after_trial", "callbacks", "n_jobs", "catch", "show_progress_bar")
FINCH_OPTIONS = ("heartbeat_interval", "grace_period")
RUN_DIR = "finch_run_dir"  # trial user attribute: the folder the trial trains in (kept by retries)
TRIAL_FILE = "trial.json"  # in each run folder: which study and trial it belongs to
NOT_SEARCHABLE = ("output_dir", "overwrite_output_dir", "hub_token", "push_to_hub", "hub_model_id")


# ---- HuggingFace's defaults -------------------------------------------------------------------------------------
def default_hp_space(trial: Any) -> dict[str, Any]:
    """HuggingFace's default Optuna space: learning rate, epochs, seed and batch size."""
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
            "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
            "seed": trial.suggest_int("seed", 1, 40),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size",
                                                                     [4, 8, 16, 32, 64])}


def default_compute_objective(metrics: dict[str, float]) -> float:
    """HuggingFace's default objective: the evaluation loss when it is the only metric, else the sum of the
    metrics (speed figures and the epoch left out)."""
    timing = ("_runtime", "_per_second", "_compilation_time")
    scores = {k: v for k, v in metrics.items() if k not in ("eval_loss", "epoch") and not k.endswith(timing)}
    return sum(scores.values()) if scores else metrics["eval_loss"]


def trial_arguments(args: TrainingArguments, params: dict[str, Any], output_dir: str | Path,
                    where: str = "the hyperparameter space") -> TrainingArguments:
    """`args` with the trial's parameters that are `TrainingArguments` fields, training in `output_dir`."""
    fields = {k: v for k, v in params.items() if k in TrainingArguments.__dataclass_fields__ and k not in
              NOT_SEARCHABLE}
    try:
        return dataclasses.replace(args, output_dir=str(output_dir), **fields)
    except ConfigError as error:
        raise ConfigError(f"{where} gives a value TrainingArguments refuses: {error}") from error


def check_space(space: Callable[[Any], dict], args: TrainingArguments, free_names: bool) -> list[str]:
    """Call `space` on a throw-away in-memory trial and check what it returns; the names it searches.

    Args:
        free_names: names that are not `TrainingArguments` fields are allowed (a `model_init(trial)` reads them),
            unless they look like a misspelt field.

    Raises:
        ConfigError: `space` is not a function, returns no dict, a name that is no field (unless `free_names`), a
            field that cannot be searched, a bad value, or `num_train_epochs` while `max_steps` fixes the length.
    """
    if not callable(space):
        raise ConfigError(f"hp_space is a {type(space).__name__}; it is a function of the trial that returns the "
                          f"values to try, e.g. hp_space=lambda trial: {{'learning_rate': "
                          f"trial.suggest_float('learning_rate', 1e-5, 1e-3, log=True)}}")
    optuna = import_optuna()
    with quiet_optuna():
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = space(probe)
    if not isinstance(params, dict):
        raise ConfigError(f"hp_space must return a dict of TrainingArguments field -> value; it returned "
                          f"{type(params).__name__}")
    check_searchable(list(params), "hp_space")
    fields = set(TrainingArguments.__dataclass_fields__) - set(NOT_SEARCHABLE)
    unknown = [k for k in params if k not in fields]
    if unknown and not free_names:
        check_keys({k: None for k in unknown}, fields, "hp_space (TrainingArguments fields only, as "
                                "model_init takes no trial to read others)")
    misspelt = {k: difflib.get_close_matches(k, fields, n=1, cutoff=0.8) for k in unknown}
    misspelt = {k: close[0] for k, close in misspelt.items() if close}
    if misspelt:
        listed = ", ".join(f"{k!r} (did you mean {v!r}?)" for k, v in misspelt.items())
        raise ConfigError(f"hp_space searches {listed}: not TrainingArguments fields, so the field would stay fixed "
                          f"while the misspelt name is searched and reported. Correct the name; if model_init(trial) "
                          f"reads it from trial.params, give it a name unlike a field's")
    if unknown:
        logger.warning("hp_space: %s are not TrainingArguments fields: only model_init(trial) can use them (from "
                       "trial.params); the trainer's arguments do not change with them", ", ".join(unknown))
    _check_length_searched(params, args, space is default_hp_space)
    trial_arguments(args, params, args.output_dir)
    return list(params)


def check_searchable(names: list[str], where: str) -> None:
    """Refuse fields that say where and how a search runs, not what a trial learns (`NOT_SEARCHABLE`)."""
    fixed = [name for name in names if name in NOT_SEARCHABLE]
    if fixed:
        raise ConfigError(f"{where}: {', '.join(fixed)} cannot be searched: these say where and how the search runs "
                          f"(each trial trains in output_dir/run-<number>), not what a trial learns. Take them out "
                          f"of the space and set them once (CLI: --output-dir DIR, --push-to-hub ...)")


def _check_length_searched(params: dict[str, Any], args: TrainingArguments, default: bool) -> None:
    """`num_train_epochs` searched while `max_steps` fixes every trial's length: its values change nothing, yet the
    best one would be reported. Refused in the user's space; HuggingFace's default space searches it: a warning."""
    if "num_train_epochs" not in params or args.max_steps <= 0:
        return
    said = (f"the space searches num_train_epochs, but max_steps={args.max_steps} fixes every trial's length "
            f"(max_steps overrides num_train_epochs), so its values would change nothing yet be reported as a best "
            f"parameter")
    if not default:
        raise ConfigError(f"{said}. Take num_train_epochs out of the space, or drop max_steps (--max-steps) to search "
                          f"the length in epochs")
    logger.warning("%s (HuggingFace's default space searches it): pass a space without it (CLI: --space FILE), or "
                   "drop max_steps", said)


def checked_objective(compute_objective: Callable[[dict], Any], directions: int) -> Callable[[dict], Any]:
    """`compute_objective`, its value checked: one number (a list of `directions` numbers for several), or a
    `ConfigError` naming compute_objective, the value and the metrics it was given; NaN is a warning (Optuna fails
    that trial) naming it too."""
    name = _objective_name(compute_objective).removeprefix("compute_objective=")

    def objective(metrics: dict[str, Any]) -> Any:
        value = compute_objective(metrics)
        values = list(value) if directions > 1 and isinstance(value, (list, tuple)) else [value]
        if len(values) != directions or not all(_is_number(v) for v in values):
            wanted = "one number" if directions == 1 else f"a list of {directions} numbers (one per direction)"
            raise ConfigError(f"compute_objective ({name}) returned {value!r} ({type(value).__name__}), not "
                              f"{wanted}: it turns the evaluation metrics ({', '.join(sorted(metrics))}) into the "
                              f"objective, e.g. compute_objective=lambda metrics: metrics['eval_loss']")
        if any(math.isnan(float(v)) for v in values):
            logger.warning("compute_objective (%s) returned %r for the metrics %s: this trial fails (Optuna ranks no "
                           "NaN); check the metric it reads", name, value, metrics)
        return value
    return objective


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ---- output folders ---------------------------------------------------------------------------------------------
def check_run_folders(output_dir: str | Path, study_name: str, overwrite: bool) -> None:
    """Refuse to search in a folder that holds another search's trial folders (trials of both would share `run-N`,
    and its best model would be replaced): `overwrite_output_dir=True` lets the new one replace them."""
    others = []
    for marker in sorted(Path(output_dir).glob(f"*/{TRIAL_FILE}")):
        owner = json.loads(marker.read_text()).get("study")
        if owner != study_name:
            others.append(f"{marker.parent.name} (study {owner})")
    if others and not overwrite:
        raise ConfigError(f"output_dir {output_dir} holds trial folders of another search: "
                          f"{', '.join(others[:5])}. Use another output_dir, delete them, continue that study "
                          f"(same storage and study_name), or pass overwrite_output_dir=True")


# ---- one trial --------------------------------------------------------------------------------------------------
class TrialReporter(TrainerCallback):
    """Reports the objective at each evaluation to the Optuna trial and stops training when it should be pruned.

    Stateful (saved in checkpoints): a trial resumed after its last evaluation still knows its objective.

    Args:
        decide: runs the report and the pruning decision where the trial lives (rank 0 under torchrun) and gives
            the answer to every rank; in one process it just calls it.
    """

    def __init__(self, trial: Any, compute_objective: Callable, prune: bool, params: dict[str, Any],
                 decide: Callable[[Callable[[], bool]], bool] = lambda decision: decision(),
                 examples_per_epoch: int | None = None) -> None:
        self.trial, self.compute_objective, self.prune, self.params = trial, compute_objective, prune, params
        self.decide, self.examples_per_epoch = decide, examples_per_epoch
        self.objective: Any = None
        self.pruned = False

    def on_train_begin(self, args, state, control, **kwargs):
        state.is_hyper_param_search = True
        state.trial_name, state.trial_params = Path(args.output_dir).name, dict(self.params)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.objective = self.compute_objective(dict(metrics or {}))  # on every rank: the same metrics everywhere
        if isinstance(self.objective, (list, tuple)):  # several directions: Optuna cannot prune those
            return
        value, step = float(self.objective), self.progress(state)
        self.pruned = self.decide(lambda: self._report(value, step))
        if self.pruned:
            control.should_training_stop = True

    def progress(self, state: Any) -> int:
        """The "step" an objective is reported at: training examples seen. The pruner compares trials at equal steps,
        and optimizer steps mean different amounts of training when the batch size is searched (HF reports those:
        a trial of batch 64 at step 10 is compared with one of batch 4 at step 10, or with none at all)."""
        if self.examples_per_epoch is None or state.epoch is None:
            return state.global_step
        return round(state.epoch * self.examples_per_epoch)

    def _report(self, value: float, step: int) -> bool:
        self.trial.report(value, step)
        if self.prune and self.trial.should_prune():
            logger.info("trial %d pruned after %d training examples (objective %s)", self.trial.number, step, value)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective = state.get("objective")


@dataclass
class Trials:
    """The objective Optuna calls: one trial, trained in its own folder (a retry in its original's, resumed).

    Args:
        args: the search's arguments; each trial's are these with its parameters and its folder.
        space: trial -> parameters.
        compute_objective: evaluation metrics -> objective (one value, or one per direction).
        trainer_for: (trial arguments, trial, resuming) -> the `Trainer` to train, with a fresh model.
        study_name: written in each run folder, so another search's folders are recognised.
        prune: report to the trial at each evaluation and stop when the pruner says so.
        run_name: trial -> its folder's name under `args.output_dir`.
        best_metric_objective: the objective is `state.best_metric` when the best model is loaded at the end
            (the CLI's choice: the objective of the model it keeps); otherwise HF's: the last evaluation's.
        after_trial: (trainer, trial, objective) -> None, called when a trial completes (the CLI keeps the best).
        total: stop at this many trials in the study, whatever the workers (the CLI's `--trials`).
        channel: how rank 0 tells the other ranks under torchrun (see `finch.search.ranks`); one process by default.
        survivable: exceptions that fail a trial and let the search go on (raised on every rank at the same point).
    """

    args: TrainingArguments
    space: Callable[[Any], dict]
    compute_objective: Callable[[dict], Any]
    trainer_for: Callable[[TrainingArguments, Any, bool], Any]
    study_name: str
    prune: bool = True
    run_name: Callable[[Any], str] | None = None
    best_metric_objective: bool = False
    after_trial: Callable[[Any, Any, Any], None] | None = None
    total: int | None = None
    channel: RankChannel = field(default_factory=RankChannel)
    survivable: tuple[type[BaseException], ...] = (NonFiniteLossError,)

    def __call__(self, trial: Any) -> Any:
        """Optuna's objective, on rank 0 (or the only process): plan the trial, tell the other ranks, train it."""
        optuna = import_optuna()
        try:
            plan = self.plan(trial)
        except BaseException as error:
            self.channel.tell(TrialNotRun(f"{type(error).__name__}: {error}"))
            raise
        self.channel.tell(plan)
        trainer, reporter, objective = self.run(plan, trial)
        if reporter.pruned:
            for folder in run_folders.run_checkpoints(plan.folder, trainer.state.run_id):
                run_folders.delete_checkpoint(folder, trainer.state.run_id)
            raise optuna.TrialPruned(f"pruned at step {trainer.state.global_step}")
        if self.after_trial is not None:
            self.after_trial(trainer, trial, objective)
        return objective

    def plan(self, trial: Any) -> TrialPlan:
        """Rank 0: the trial's parameters, folder (a retry trains in its original's) and whether it resumes."""
        if self.total is not None and _trials_before(trial) >= self.total:
            trial.study.stop()  # another worker started the last trial at the same moment: this one is one too many
            trial.set_user_attr("finch_surplus", True)
            raise SurplusTrial(f"the study has its {self.total} trials; trial {trial.number} is not run")
        original = _retried_trial_number(trial)
        folder = trial.user_attrs.get(RUN_DIR) or str(Path(self.args.output_dir) / self._name(trial))
        trial.set_user_attr(RUN_DIR, folder)
        trial.set_user_attr("host", socket.gethostname())
        params = self.space(trial)
        trial_arguments(self.args, params, folder)  # a value the arguments refuse fails the trial here, on rank 0
        resume = original is not None and run_folders.latest_checkpoint(folder, quiet=True) is not None
        if original is not None:
            logger.info("trial %d retries trial %d (its worker stopped) %s", trial.number, original,
                        f"from {run_folders.latest_checkpoint(folder, quiet=True)}" if resume else "from the start")
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / TRIAL_FILE).write_text(json.dumps(
            {"study": self.study_name, "trial": trial.number, "retry_of": original, "params": params}) + "\n")
        return TrialPlan(trial.number, params, folder, resume, snapshot(trial) if self.channel.distributed else None)

    def run(self, plan: TrialPlan, trial: Any) -> tuple[Any, TrialReporter, Any]:
        """Every rank: train the planned trial (`trial` is Optuna's on rank 0, the plan's snapshot elsewhere).
        Returns the trainer, its reporter and the objective (None when pruned)."""
        args = trial_arguments(self.args, plan.params, plan.folder)
        trainer = self.trainer_for(args, trial, plan.resume)
        reporter = TrialReporter(trial, self.compute_objective, self.prune, plan.params, self.channel.decide,
                                 _length(trainer.train_dataset))
        trainer.add_callback(reporter)
        try:
            with self.channel.training(self.survivable):
                trainer.train(resume_from_checkpoint=True if plan.resume else None)
                objective = None if reporter.pruned else self._objective(trainer, reporter)
        finally:
            trainer.pop_callback(reporter)
        return trainer, reporter, objective

    def _name(self, trial: Any) -> str:
        return self.run_name(trial) if self.run_name is not None else f"run-{trial.number}"

    def _objective(self, trainer: Any, reporter: TrialReporter) -> Any:
        if self.best_metric_objective and trainer.args.load_best_model_at_end and \
                trainer.state.best_metric is not None:
            return trainer.state.best_metric
        if reporter.objective is not None:
            return reporter.objective
        return self.compute_objective(trainer.evaluate())  # no evaluation during training: one now, as HF does


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an iterable dataset: the pruner compares optimizer steps
        return None


def _retried_trial_number(trial: Any) -> int | None:
    """The number of the trial that `trial` retries (its worker stopped), or None."""
    optuna = import_optuna()
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


class SurplusTrial(Exception):
    """A trial started after the study already had its `total` (caught: marked failed, never trained)."""


def _trials_before(trial: Any) -> int:
    """Trials of the study numbered before `trial` that are or will be run (failed ones are not, or are retried)."""
    optuna = import_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING,
              optuna.trial.TrialState.WAITING)
    return sum(1 for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number)


# ---- Trainer.hyperparameter_search ----------------------------------------------------------------------------
def hyperparameter_search(trainer: Any, hp_space: Callable[[Any], dict] | None = None,
                          compute_objective: Callable[[dict], Any] | None = None, n_trials: int | None = 20,
                          direction: str | list[str] = "minimize", backend: Any = "optuna",
                          hp_name: Callable[[Any], str] | None = None, **kwargs: Any) -> BestRun | list[BestRun]:
    """`Trainer.hyperparameter_search`: `n_trials` Optuna trials, each training a fresh model from `model_init`.

    Args:
        trainer: a `Trainer` built with `model_init` (no argument, or the trial) and an `eval_dataset`.
        hp_space: trial -> {TrainingArguments field: value}; default `default_hp_space` (HuggingFace's).
        compute_objective: evaluation metrics -> objective; default `default_compute_objective` (HuggingFace's).
        n_trials: trials this call runs.
        direction: "minimize" or "maximize", or a list of them for several objectives.
        backend: "optuna" (the only one).
        hp_name: trial -> its folder's name under `output_dir` (default `run-<trial number>`).
        **kwargs: `storage` (a URL: heartbeats and retries on; or an Optuna storage), `study_name`,
            `load_if_exists`, `sampler`, `pruner` go to `optuna.create_study`; `timeout`, `gc_after_trial`,
            `callbacks`, `catch`, `show_progress_bar` to `study.optimize`; `heartbeat_interval`, `grace_period`
            (seconds) to the storage. A trial whose loss turns NaN/Inf fails and the search goes on. Under torchrun
            every rank calls this with the same arguments; rank 0 alone opens the study.

    Returns:
        `BestRun(run_id, objective, hyperparameters, run_summary)` of the best trial (`run_summary`: its folder);
        a list of the Pareto-best for several directions. Under torchrun every rank returns rank 0's.

    Raises:
        ConfigError: no `model_init`, no `eval_dataset`, another backend, `n_jobs > 1`, an unknown option, a bad
            space or storage; all before any training.
    """
    optuna = import_optuna()
    directions = _directions(direction)
    _check_search(trainer, backend, kwargs)
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ConfigError(f"n_trials={n_trials!r}: the number of trials this call runs, a whole number of at least 1 "
                          f"(or None, with timeout=SECONDS to stop)")
    takes_trial = _takes_trial(trainer.model_init)
    space = hp_space or default_hp_space
    check_space(space, trainer.args, free_names=takes_trial)
    channel = RankChannel(trainer.runtime)  # under torchrun rank 0 owns the study; the others train with it
    study = channel.on_leader(lambda: _open_study(trainer.args, directions, kwargs,
                                                  _objective_name(compute_objective)))
    base_args, model_init = trainer.args, trainer.model_init

    def trainer_for(args: TrainingArguments, trial: Any, resume: bool) -> Any:
        trainer.args = args
        trainer.model_init = channel.model_builder(model_init, trial) if takes_trial else model_init
        trainer.optimizer = trainer.lr_scheduler = None  # a fresh optimizer for the fresh model
        if resume:  # train() builds the model only for a fresh run; a resumed one loads into the trial's model
            trainer.model = trainer._build_model().to(trainer.device)
        return trainer

    catch = (*tuple(kwargs.get("catch") or ()), NonFiniteLossError)
    objective = Trials(base_args, space, checked_objective(compute_objective or default_compute_objective,
                                                          len(directions)), trainer_for,
                       study.study_name if study is not None else "", run_name=hp_name, channel=channel,
                       survivable=catch)
    optimize = {k: kwargs[k] for k in OPTIMIZE_OPTIONS if k in kwargs and k not in ("n_jobs", "catch")}
    try:
        if not channel.leader:
            return follow(channel, lambda plan: objective.run(plan, plan.trial), catch)
        return lead(channel, lambda: study.optimize(objective, n_trials=n_trials, catch=catch, **optimize),
                    lambda: best_runs(study, optuna))
    finally:
        trainer.args, trainer.model_init = base_args, model_init


def _objective_name(compute_objective: Callable | None) -> str:
    """What a study optimises, as recorded in it: the `compute_objective` function's full name."""
    if compute_objective is None:
        return "HuggingFace's default objective (the evaluation loss, or the sum of the metrics)"
    name = getattr(compute_objective, "__qualname__", type(compute_objective).__qualname__)
    return f"compute_objective={getattr(compute_objective, '__module__', '?')}.{name}"


def _open_study(args: TrainingArguments, directions: list[str], kwargs: dict[str, Any], objective: str) -> Any:
    """The study `kwargs` describe (its storage opened), after checking `args.output_dir` holds no other search."""
    storage = kwargs.get("storage")
    if isinstance(storage, (str, os.PathLike)):
        storage = open_storage(str(storage), kwargs.get("heartbeat_interval") or HEARTBEAT_INTERVAL,
                               kwargs.get("grace_period"))
    study = create_study(storage, kwargs.get("study_name"), directions, bool(kwargs.get("load_if_exists")),
                         kwargs.get("sampler"), kwargs.get("pruner"), objective=objective)
    check_run_folders(args.output_dir, study.study_name, args.overwrite_output_dir)
    return study


def _check_search(trainer: Any, backend: Any, kwargs: dict[str, Any]) -> None:
    name = getattr(backend, "value", backend)
    if name not in (None, "optuna"):
        raise ConfigError(f"backend={name!r}: finch searches with Optuna only; pass backend='optuna' (or leave it)")
    unknown = sorted(set(kwargs) - set(STUDY_OPTIONS) - set(OPTIMIZE_OPTIONS) - set(FINCH_OPTIONS))
    if unknown:
        raise UnknownArgumentError(f"hyperparameter_search got unknown option(s) {unknown}; it takes "
                                   f"{', '.join(STUDY_OPTIONS + OPTIMIZE_OPTIONS + FINCH_OPTIONS)}")
    if (kwargs.get("n_jobs") or 1) != 1:
        raise ConfigError(f"n_jobs={kwargs['n_jobs']}: trials in threads would share one trainer and its model. Run "
                          f"several processes against one storage instead (storage='sqlite:///search.db' or a "
                          f"PostgreSQL URL, the same study_name, load_if_exists=True)")
    if trainer.model_init is None:
        raise ConfigError("hyperparameter_search needs a Trainer built with model_init=... (a function returning a "
                          "fresh model, taking no argument or the trial), so that each trial trains its own model")
    if trainer.eval_dataset is None:
        raise ConfigError("hyperparameter_search needs an eval_dataset: each trial's objective comes from its "
                          "evaluation metrics")


def _directions(direction: str | list[str]) -> list[str]:
    directions = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    names = [getattr(d, "name", d).lower() if not isinstance(d, str) else d for d in directions]
    if not names or any(d not in ("minimize", "maximize") for d in names):
        raise ConfigError(f"direction={direction!r}: use 'minimize' or 'maximize' (a list for several objectives)")
    return names


def _takes_trial(model_init: Callable) -> bool:
    count = len(inspect.signature(model_init).parameters)
    if count > 1:
        raise ConfigError(f"model_init takes {count} arguments; it takes none, or the trial")
    return count == 1


def best_runs(study: Any, optuna: Any) -> BestRun | list[BestRun]:
    """The best trial as a `BestRun` (a list of them for several objectives)."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        counts = state_counts(study)
        raise RuntimeError(f"no trial of study {study.study_name!r} completed ({counts}); nothing to choose from")
    if len(study.directions) > 1:
        return [_best_run(trial) for trial in study.best_trials]
    return _best_run(study.best_trial)


def _best_run(trial: Any) -> BestRun:
    objective = trial.values if len(trial.values) > 1 else trial.value
    return BestRun(str(trial.number), objective, dict(trial.params), trial.user_attrs.get(RUN_DIR))


def state_counts(study: Any) -> str:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no trials"


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    optuna = import_optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def better(value: float, than: float | None, direction: str) -> bool:
    if than is None or (isinstance(than, float) and math.isnan(than)):
        return True
    return value > than if direction == "maximize" else value < than
