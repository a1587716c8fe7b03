"""`finch search`: the no-code hyperparameter search, on a job that `finch.cli.job.prepare` has checked and tokenized.

The data is read, checked and tokenized once; every trial builds a fresh model with `job.build(args)`. The study
lives in a database (by default `<output_dir>/search.db`, SQLite), so re-running the command continues it, and the
same command on several machines against one PostgreSQL URL shares it. `--trials N` is the study's total, whatever
the number of workers. The best trial's model is kept as an ordinary model folder, `<output_dir>/best-model`.

A space file maps `TrainingArguments` fields to a list of choices or a range:

    learning_rate: {low: 1e-5, high: 1e-3, log: true}
    num_train_epochs: {low: 1, high: 4}
    per_device_train_batch_size: [8, 16, 32]

Under torchrun (`finch search --nproc-per-node N`), every trial trains on all N processes: rank 0 owns the study and
tells the others each trial's parameters and every prune decision (`finch.search.ranks`), and it alone keeps the best
model and writes the study's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finch.args import FIELD_GROUPS, SCRIPTS_ONLY, TrainingArguments, check_keys, convert_value
from finch.errors import ConfigError, NonFiniteLossError
from finch.runs import checkpoint
from finch.runs import folders as run_folders
from finch.runs.files import RUN_OUTPUTS, turn_lock
from finch.search.ranks import RankChannel, follow, lead
from finch.search.storage import HEARTBEAT_INTERVAL, check_storage_url, create_study, import_optuna, open_storage
from finch.search.study import (
    NOT_SEARCHABLE,
    RUN_DIR,
    SurplusTrial,
    Trials,
    better,
    check_run_folders,
    check_searchable,
    check_space,
    default_hp_space,
    quiet_optuna,
    state_counts,
    trial_arguments,
)


# ---- the space --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched `TrainingArguments` field: a range (`low`..`high`, maybe `log` or `step`) or `choices`."""

    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> tuple:
        return self.choices if self.kind == "categorical" else (self.low, self.high)


@dataclass(frozen=True)
class SearchSpace:
    """A space read from YAML; called with a trial like an `hp_space` function."""

    params: tuple[Param, ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {param.name: param.suggest(trial) for param in self.params}


def load_space(path: str | Path, args: TrainingArguments) -> SearchSpace:
    """Read a space file: each key a `TrainingArguments` field, each value a list of choices or a mapping
    `{low, high, log, step}` (`type: int|float|categorical` optional: the field's type by default).

    Raises:
        ConfigError: an unknown field, a value of the wrong type, an empty range, or a value the field refuses.
    """
    from finch.cli import config as config_files

    raw = config_files.load_file(path)
    if not raw:
        raise ConfigError(f"{path}: the space is empty; give at least one field, e.g. learning_rate: "
                          f"{{low: 1e-5, high: 1e-3, log: true}}")
    hints = typing.get_type_hints(TrainingArguments)
    searchable = set(hints) - set(NOT_SEARCHABLE)
    check_searchable(list(raw), f"{path} (the space)")
    check_keys(raw, searchable, f"{path} (the space)")
    space = SearchSpace(tuple(_param(name, spec, hints[name], path) for name, spec in raw.items()))
    for param in space.params:  # every end of every range through TrainingArguments' own checks
        for value in param.extremes():
            trial_arguments(args, {param.name: value}, args.output_dir, where=f"{path}: {param.name}")
    return space


def _param(name: str, spec: Any, hint: Any, path: str | Path) -> Param:
    where = f"{path}: {name}"
    options = typing.get_args(hint) or (hint,)
    numeric = "float" if float in options else "int" if int in options and bool not in options else None
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {spec!r} is a fixed value; a space gives choices ([8, 16]) or a range "
                          f"({{low: 1e-5, high: 1e-3, log: true}}). Fixed values go in flags or --config")
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; use low, high, log, step, or choices")
    kind = spec.get("type") or ("categorical" if "choices" in spec else numeric)
    if kind not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: type {kind!r} is not one of float, int, categorical")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: give the choices as a non-empty list, e.g. [8, 16, 32]")
        return Param(name, kind, choices=tuple(_convert(choice, hint, where) for choice in choices))
    if numeric is None or (kind == "float" and numeric == "int"):
        wanted = "a whole number: use type: int" if numeric == "int" else "not a number: give choices as a list"
        raise ConfigError(f"{where}: a {kind} range, but {name} is {wanted}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs low and high, e.g. {{low: 1, high: 5}}")
    number = int if kind == "int" else float
    low, high = (_convert(spec[key], number, f"{where}: {key}") for key in ("low", "high"))
    log = _convert(spec.get("log", False), bool, f"{where}: log")
    step = None if spec.get("step") is None else _convert(spec["step"], number, f"{where}: step")
    if not low < high:
        raise ConfigError(f"{where}: low={low} must be less than high={high}")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step={step} must be positive")
    return Param(name, kind, low, high, log, step)


def _convert(value: Any, hint: Any, where: str) -> Any:
    try:
        return convert_value(value, hint)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}, but it is {value!r}") from error


# ---- finch search -----------------------------------------------------------------------------------------------
BEST_MODEL = "best-model"
BEST_TRIAL_FILE = "search_trial.json"
STORAGE_FILE = "search.db"


def check_not_a_training_run(output_dir: str | Path) -> None:
    """Refuse to search in the output folder of a `finch train` run (its checkpoints, model or log at the top): a
    search writes its trials in run-<n> folders, and cannot continue, or be mixed with, a training run."""
    output = Path(output_dir)
    found = [p.name for p in run_folders.checkpoints(output)][-2:] + \
        [name for name in RUN_OUTPUTS if name != "report.html" and (output / name).exists()]
    if found:
        raise ConfigError(f"output_dir {output} is a finch train run's folder (it holds {', '.join(found)}): a search "
                          f"writes its trials in run-<n> folders, its study and best model beside them, and cannot "
                          f"continue a training run. Choose another --output-dir for the search")


def check_search_inputs(args: TrainingArguments, space_file: str | None, storage_url: str | None) -> None:
    """What `finch search` adds to the training flags, checked before the data is read: the space file (every end
    of every range through `TrainingArguments`) and the storage URL (parsed, its SQLite folder looked at; nothing
    is connected to or created). `search_job` reads them again, unchanged, once the data is ready."""
    if space_file:
        check_space(load_space(space_file, args), args, free_names=False)
    if storage_url:
        check_storage_url(storage_url)


def default_storage(output_dir: str | Path) -> str:
    """The study's database when no `--storage` is given: a SQLite file in the output folder."""
    return f"sqlite:///{Path(output_dir).resolve() / STORAGE_FILE}"


def search_job(job: Any, options: dict[str, Any], trials: int, storage_url: str | None = None,
               study_name: str | None = None, space_file: str | None = None, prune: bool = True,
               heartbeat_interval: int = HEARTBEAT_INTERVAL) -> Any:
    """`finch search`: run the study of `job` until it has `trials` trials (all workers together); keep the best
    model in `<output_dir>/best-model`. Returns the study (None on ranks other than 0 under torchrun).

    The objective is the job's `metric_for_best_model` (the CLI's `--metric`), maximised when greater is better;
    each trial's value is that of the model it keeps (the best evaluation's with `load_best_model_at_end`)."""
    from finch.distributed.connect import runtime_for

    args = job.args
    space = load_space(space_file, args) if space_file else default_hp_space
    searched = check_space(space, args, free_names=False)
    # under torchrun this process joins the group here (each trial's Trainer then finds it); alone, no one to tell
    channel = RankChannel(runtime_for(args) if args.world_size > 1 else None)
    if channel.distributed and args.fsdp:
        raise ConfigError("finch search under torchrun trains each trial with DDP; fsdp is not searched: leave it out "
                          "(or call Trainer.hyperparameter_search in a script)")
    if channel.leader:
        for name in _overridden_by_space(options, searched):
            print(f"warning: {name}={options[name]} is ignored: the search space sets {name} for each trial (take "
                  f"{name} out of the space to train every trial with that value)", flush=True)
    metric = args.metric_for_best_model
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    direction = "maximize" if args.greater_is_better else "minimize"
    periodic = prune and args.eval_strategy != "no"
    settings = fixed_settings(job, options, searched)
    study = channel.on_leader(lambda: _open_study(job, options, settings, storage_url, study_name,
                                                  heartbeat_interval, key, direction, periodic))
    done = channel.decide(lambda: _study_done(study, trials))
    if done:
        if channel.leader:
            print(f"study {study.study_name} has {trials} trials already; raise --trials to run more", flush=True)
        return study

    def metric_of(metrics: dict[str, float]) -> float:
        return metrics[key]

    def stop_when_done(study_: Any, trial: Any) -> None:
        if _study_done(study_, trials):
            study_.stop()

    name = study.study_name if study is not None else ""  # only rank 0, which holds the study, writes it anywhere
    runner = Trials(args, space, metric_of, lambda trial_args, trial, resume: job.build(trial_args), name,
                    prune=periodic, best_metric_objective=True, after_trial=_best_model_keeper(job, name, direction),
                    total=trials, channel=channel)
    if not channel.leader:
        follow(channel, lambda plan: runner.run(plan, plan.trial), runner.survivable)
        return None
    lead(channel, lambda: study.optimize(runner, n_trials=trials, callbacks=[stop_when_done],
                                         catch=(NonFiniteLossError, SurplusTrial)), lambda: None)
    return study


def _open_study(job: Any, options: dict[str, Any], settings: dict[str, Any], storage_url: str | None,
                study_name: str | None, heartbeat_interval: int, key: str, direction: str, periodic: bool) -> Any:
    """Rank 0 (or the only process): the study, opened or created, claimed for this job's data, model, objective
    and fixed settings; the output folder checked; a dead worker's trial re-queued."""
    optuna = import_optuna()
    output = Path(job.args.output_dir)
    if storage_url is None:
        output.mkdir(parents=True, exist_ok=True)  # every input check has passed (prepare): the first write
    storage = open_storage(storage_url or default_storage(output), heartbeat_interval)
    name = study_name or output.resolve().name
    pruner = optuna.pruners.MedianPruner() if periodic else optuna.pruners.NopPruner()
    with quiet_optuna():
        study = create_study(storage, name, [direction], load_if_exists=True, pruner=pruner, objective=key)
    created = "finch" not in study.user_attrs  # read before _claim_study records it
    _claim_study(study, {"objective": key, "direction": direction, "model": str(options.get("model") or "demo"),
                         "data": _data_digest(job.splits.train), "validation": _data_digest(job.splits.validation)})
    _claim_settings(study, settings, created)
    check_run_folders(output, name, job.args.overwrite_output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is re-queued before the count below
    return study


def _study_done(study: Any, total: int) -> bool:
    """The study has `total` trials finished or running, and none waiting to be retried."""
    optuna = import_optuna()
    state = optuna.trial.TrialState
    found = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING, state.WAITING))
    return not any(t.state == state.WAITING for t in found) and len(found) >= total


def _claim_study(study: Any, identity: dict[str, str]) -> None:
    """Record what the study optimises on what; refuse to continue it with other data, model or objective."""
    recorded = study.user_attrs.get("finch")
    if recorded is None:
        study.set_user_attr("finch", identity)
        return
    changed = [name for name in identity if recorded.get(name) != identity[name]]
    if changed:
        details = [f"the {name} set is not the one its trials used" if name in ("data", "validation")
                   else f"{name}: {recorded.get(name)} then, {identity[name]} now" for name in changed]
        raise ConfigError(f"study {study.study_name!r} was started with another {', '.join(changed)} "
                          f"({'; '.join(details)}); its trials cannot be compared with these. Continue it with "
                          f"the same data, model and --metric, or use --study-name NAME for a new study")


# ---- the settings a study is continued with ---------------------------------------------------------------------
# TrainingArguments fields that cannot change a trial's objective: where things are written, what is logged or shown,
# the hub, how many checkpoints are kept, and process plumbing (timeouts, loader processes, gradient buckets). Every
# other field counts, a new one too until it is listed here: a needless refusal names its fix, a silent mix does not.
INERT_FIELDS = frozenset({
    "output_dir", "overwrite_output_dir", "save_total_limit", "save_only_model", "save_on_each_node",
    "logging_strategy", "logging_steps", "logging_first_step", "report_to", "tensorboard_dir", "run_name",
    "disable_tqdm", "dataloader_num_workers", "dataloader_pin_memory", "ddp_backend", "ddp_timeout",
    "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "allow_world_size_change", "push_to_hub", "hub_model_id",
    "hub_strategy", "hub_token", "hub_private_repo", "hub_revision",
    "metric_for_best_model", "greater_is_better",  # the study's objective and direction (`_claim_study`) say these
})
SETTINGS_ATTR = "finch_settings"  # study user attribute: the fixed settings of the run that created the study


def fixed_settings(job: Any, options: dict[str, Any], searched: list[str]) -> dict[str, Any]:
    """What every trial of this run trains and is evaluated with, less what the space searches: the resolved
    `TrainingArguments` fields but `INERT_FIELDS` (`eval_steps` as resolved, so an unset one follows
    `logging_steps`); `max_length` and `freeze` as given; the text columns in their order (a pair's order changes
    the input; the data digest sorts columns); and the processes each trial trains on (the global batch under
    torchrun). JSON values, keys sorted: what the study's user attribute holds and gives back."""
    values = {k: v for k, v in job.args.to_dict().items()
              if k not in INERT_FIELDS and FIELD_GROUPS.get(k) != SCRIPTS_ONLY}  # not do_eval, local_rank...
    values.update(max_length=options.get("max_length"), freeze=options.get("freeze"),
                  text_columns=list(job.splits.text_columns), world_size=job.args.world_size)
    return json.loads(json.dumps({k: values[k] for k in sorted(values) if k not in searched}, default=str))


def _claim_settings(study: Any, settings: dict[str, Any], created: bool) -> None:
    """Record a new study's fixed settings; refuse to continue one with others (before any trial trains). A setting
    searched by either run is not compared: the space may change between runs, the fixed settings may not. A study
    of a finch that recorded none is continued with a note, and nothing is recorded (its trials' settings are not
    known)."""
    if created:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        print(f"note: study {study.study_name!r} was started by an older finch, which did not record its fixed "
              f"settings: they are not compared, so make sure this run's are those of its trials", flush=True)
        return
    changed = [name for name in settings if name in recorded and recorded[name] != settings[name]]
    if changed:
        listed = "; ".join(f"{name}: {_shown(recorded[name])} in the study, {_shown(settings[name])} now"
                           for name in changed)
        given = " ".join(_as_flag(name, recorded[name]) for name in changed if recorded[name] is not None)
        dropped = ", ".join("--" + name.replace("_", "-") for name in changed if recorded[name] is None)
        fix = " and ".join(part for part in (given, dropped and f"without {dropped}") if part)
        raise ConfigError(f"study {study.study_name!r} was started with other fixed settings ({listed}); trials "
                          f"trained otherwise cannot be ranked with its trials. Re-run with the study's settings "
                          f"({fix}), or start a new study with --study-name NAME or another --output-dir")


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value) if isinstance(value, (list, dict, str)) else str(value)


def _as_flag(name: str, value: Any) -> str:
    """The flag that sets `name` to `value`, as the fix in a message."""
    flag = "--" + name.replace("_", "-")
    if name == "world_size":
        return f"{value} process(es): --nproc-per-node x --nnodes"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, list):
        return f"{flag} {' '.join(str(item) for item in value)}"
    return f"{flag} '{json.dumps(value)}'" if isinstance(value, dict) else f"{flag} {value}"


def _overridden_by_space(options: dict[str, Any], searched: list[str]) -> list[str]:
    """Searched names that the user set (flag, config or key=value): the space replaces their value in every trial.
    `options` holds only the defaults and what was chosen; a chosen value equal to its default cannot be told apart."""
    from finch.cli.job import CLI_DEFAULTS, DEMO_DEFAULTS

    defaults = {**CLI_DEFAULTS, **(DEMO_DEFAULTS if options.get("train") is None else {})}
    return [name for name in searched if name in options and (name not in defaults or options[name] != defaults[name])]


def _data_digest(dataset: Any) -> str:
    """SHA-256 of a data split's rows (texts and labels), identical on every machine that reads the same file."""

    digest = hashlib.sha256()
    for batch in dataset.iter(batch_size=4096):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _best_model_keeper(job: Any, study_name: str, direction: str) -> Callable[[Any, Any, Any], None]:
    """After each completed trial: save its model as `<output_dir>/best-model` if it beats the one there (under a
    lock: workers may share the folder), then delete the trial's checkpoints, which only served to resume it."""
    output = Path(job.args.output_dir)

    def keep(trainer: Any, trial: Any, objective: float) -> None:
        best = output / BEST_MODEL
        with turn_lock(output / ".best-model.lock"):
            kept = json.loads((best / BEST_TRIAL_FILE).read_text()) if (best / BEST_TRIAL_FILE).exists() else {}
            if kept.get("study") != study_name or better(objective, kept.get("objective"), direction):
                staging = output / f".tmp-{BEST_MODEL}-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                # the model as it is on this rank (rank 0 under torchrun, where DDP keeps a whole replica): not
                # save_model, a collective that the other ranks, waiting for rank 0's next trial, would not join
                checkpoint.save_model_folder(trainer.model, staging, trainer.processing_class)
                trainer.args.save(staging / "training_args.json")
                job.card.write(staging)
                (staging / BEST_TRIAL_FILE).write_text(json.dumps(
                    {"study": study_name, "trial": trial.number, "objective": objective, "params": trial.params,
                     "run": trainer.args.output_dir}, indent=2) + "\n")
                old = output / f".old-{BEST_MODEL}-{os.getpid()}"
                if best.exists():
                    os.replace(best, old)  # two renames: best-model is whole or (for an instant) absent
                os.replace(staging, best)
                shutil.rmtree(old, ignore_errors=True)
        for folder in run_folders.run_checkpoints(trainer.args.output_dir, trainer.state.run_id):
            shutil.rmtree(folder, ignore_errors=True)

    return keep


def show_study(output_dir: str | Path, storage_url: str | None = None, study_name: str | None = None) -> str:
    """The trials table and the best parameters of a study (`finch search --show`).

    Raises:
        ConfigError: no study there (the message lists the studies the storage holds).
    """
    optuna = import_optuna()
    output = Path(output_dir)
    if storage_url is None and not (output / STORAGE_FILE).exists():
        raise ConfigError(f"no search in {output}: {output / STORAGE_FILE} does not exist. Pass the --output-dir of "
                          f"the search, or --storage URL and --study-name NAME")
    storage = open_storage(storage_url or default_storage(output), create=False)
    name = study_name or output.resolve().name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as error:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(f"no study {name!r} in that storage; it holds: {', '.join(names) or 'none'} "
                          f"(choose one with --study-name)") from error
    objective = study.user_attrs.get("finch", {}).get("objective", "objective")
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    rows = [["trial", "state", objective, *names, "run"]]
    for trial in trials:
        value = "" if trial.value is None else _number(trial.value)
        state = "surplus" if trial.user_attrs.get("finch_surplus") else trial.state.name.lower()
        rows.append([str(trial.number), state, value, *(_number(trial.params[n]) if n in trial.params else ""
                                                         for n in names), Path(trial.user_attrs.get(RUN_DIR, "")).name])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"study {name}: {len(trials)} trials ({state_counts(study)}); {objective}, {study.direction.name.lower()}"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        shown = ", ".join(f"{k}={_number(v)}" for k, v in best.params.items())
        lines.append(f"best: trial {best.number}, {objective} {_number(best.value)}: {shown}")
        if (output / BEST_MODEL).exists():
            lines.append(f"best model: {output / BEST_MODEL}  (transformers.pipeline('text-classification', "
                         f"model='{output / BEST_MODEL}'))")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


