"""Experiment trackers as callbacks: MLflow, Weights & Biases and TensorBoard, each through its own library.

Three rules hold for every tracker (DESIGN invariants 12 and 14):

- Only global rank 0 talks to a tracker (`state.is_world_process_zero`); other ranks do nothing.
- A tracker never stops training. Its library is imported only when the tracker is asked for; an exception
  inside it (a bad URI, a full disk, the network, a bug) logs one warning, the tracker goes quiet for the rest of
  the run, and training goes on. Parameters are flattened and cut to the tracker's limits before they are sent.
- A resumed run continues the tracker's run. Each tracker's `state_dict()` (its run id) is saved in every
  checkpoint (`trainer_state.json`, `stateful_callbacks`); on resume MLflow logs into the same run, W&B resumes
  the same id (`resume="allow"`), TensorBoard purges the events written after the checkpoint's step. Points that
  a killed run logged after its last checkpoint are not logged a second time: MLflow keeps the first value of
  each (metric, step) (resume is exact, so it is the same number), W&B drops steps below its current one.

Hyperparameter search groups its trials with `MLflowCallback(parent_run_id=...)` (nested runs) and
`WandbCallback(group=...)`; a trial's name (`state.trial_name`) names its run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finch.args import TrainingArguments
from finch.errors import ConfigError, mask_secrets
from finch.events import TrainerCallback
from finch.state import TrainerControl, TrainerState

logger = logging.getLogger("finch")

# report_to name -> (callback class name, module it imports, the pip extra that installs it)
TRACKERS = {"mlflow": ("MLflowCallback", "mlflow", "mlflow"),
            "wandb": ("WandbCallback", "wandb", "wandb"),
            "tensorboard": ("TensorBoardCallback", "tensorboard", "tensorboard")}


def installed_trackers() -> list[str]:
    """The `report_to` names whose library is installed (what `report_to="all"` means)."""
    return [name for name, (_, module, _) in TRACKERS.items() if importlib.util.find_spec(module) is not None]


def tracker_callbacks(names: list[str]) -> list[TrainerCallback]:
    """One callback per tracker name in `names` ("mlflow", "wandb", "tensorboard"; others are ignored)."""
    classes = {"mlflow": MLflowCallback, "wandb": WandbCallback, "tensorboard": TensorBoardCallback}
    return [classes[name]() for name in TRACKERS if name in names]


def _require(report_name: str) -> None:
    """Raise `ConfigError` with the pip command when the tracker's library is not installed (no import)."""
    _, module, extra = TRACKERS[report_name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"report_to={report_name!r} needs the {module} package, which is not installed: "
                          f"pip install 'finch[{extra}]' (or pip install {module}), or remove {report_name!r} "
                          f"from report_to")


class TrackerCallback(TrainerCallback):
    """What the trackers share: rank 0 only, a run started at `on_train_begin` (or at the first log, for an
    `evaluate()` without training), failures turned into one warning, the run's identity saved in checkpoints.

    Subclasses set `report_name` and `title` and implement `_start`, `_log` and `_finish`.
    """

    report_name = ""
    title = ""

    def __init__(self) -> None:
        _require(self.report_name)
        self.run: dict[str, Any] | None = None  # the tracker's run identity, saved in checkpoints
        self.reattach: dict[str, Any] | None = None  # a checkpoint's run identity, to continue at the next start
        self.failed = False

    # ---- events ----------------------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not state.is_world_process_zero:
            return
        self.failed = False  # each train() is a run: a tracker that failed in the last one gets another chance
        if self.run is not None:
            self._safely("closing the previous run", self._close)
        self.run = None
        self._begin(args, state, kwargs.get("model"))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any):
        if not state.is_world_process_zero or not logs:
            return
        if self.run is None:  # evaluate() without train(): its own run
            self._begin(args, state, kwargs.get("model"))
        numbers = {key: float(value) for key, value in logs.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        if self.run is not None and numbers:
            self._safely(f"logging step {state.global_step}", self._log, numbers, state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero and self.run is not None:
            self._safely("ending the run", self._finish)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.run or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reattach = dict(state) or None

    def close(self) -> None:
        """Close the tracker's run now (W&B keeps its run open after training for a following `evaluate()`)."""
        if self.run is not None:
            self._safely("closing the run", self._close)
        self.run = None

    # ---- for subclasses --------------------------------------------------------------------------------------------
    def _start(self, args: TrainingArguments, state: TrainerState, model: Any,
               reattach: dict[str, Any] | None) -> dict[str, Any]:
        """Start (or, with `reattach`, continue) a run; return its identity (JSON values)."""
        raise NotImplementedError

    def _log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Training ended: mark the run finished (later logs, e.g. a final evaluate(), may still come)."""

    def _close(self) -> None:
        """Release the run (a new train() starts another)."""
        self._finish()

    # ---- shared ----------------------------------------------------------------------------------------------------
    def _begin(self, args: TrainingArguments, state: TrainerState, model: Any) -> None:
        reattach, self.reattach = self.reattach, None  # a checkpoint's run is continued once, by this start
        self.run = self._safely("starting a run", self._start, args, state, model, reattach)

    def _safely(self, action: str, function: Callable[..., Any], *arguments: Any) -> Any:
        """`function(*arguments)`; an exception becomes one warning, and the tracker is off for this run."""
        if self.failed:
            return None
        try:
            return function(*arguments)
        except Exception as error:  # noqa: BLE001 (observers never stop training: DESIGN invariant 14)
            self.failed = True
            said = mask_secrets(str(error).splitlines()[0]) if str(error) else ""  # a tracking URI's password
            logger.warning("%s failed while %s (%s: %s); training goes on without %s for this run", self.title,
                           action, type(error).__name__, said, self.title)
            return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}, "c": [1, 2]}` -> `{"a.b": 1, "c": "[1, 2]"}`: one level, scalars kept, the rest as text."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)
    return flat


def run_parameters(args: TrainingArguments, state: TrainerState, model: Any) -> dict[str, Any]:
    """The run's parameters, flat: the arguments, the model's config as `model.*`, a search trial's as `trial.*`."""
    parameters = flatten(args.to_dict())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        parameters.update(flatten(config.to_dict(), "model."))
    if state.trial_params:
        parameters.update(flatten(state.trial_params, "trial."))
    return parameters


def run_name(args: TrainingArguments, state: TrainerState) -> str | None:
    """`run_name`, or a search trial's name; None lets the tracker choose."""
    return args.run_name or state.trial_name


def grouped_key(key: str) -> str:
    """`loss` -> `train/loss`, `eval_accuracy` -> `eval/accuracy`, `test_f1` -> `test/f1`: the panels W&B and
    TensorBoard show. Keys that already hold a `/` are kept."""
    if "/" in key:
        return key
    for prefix in ("eval", "test"):
        if key.startswith(f"{prefix}_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"train/{key}"


def _environment_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


REACH_SECONDS = 5  # how long the start of a tracker's run waits for its server to accept a connection


def _check_reachable(uri: str) -> None:
    """Raise `ConnectionError` when an http(s) tracking server does not accept a connection within `REACH_SECONDS`.

    MLflow's client retries a refused or silent server 7 times with a growing back-off (about 4 minutes) before it
    fails, in silence: the run would seem hung before its first step. Checked once, at the start."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=REACH_SECONDS):
            pass
    except OSError as error:
        raise ConnectionError(f"no tracking server answers at {mask_secrets(uri)} within {REACH_SECONDS} s "
                              f"({error}); check MLFLOW_TRACKING_URI and that the server runs") from None


class MLflowCallback(TrackerCallback):
    """Logs parameters and metrics to MLflow (HF's class name and environment variables).

    Environment: `MLFLOW_TRACKING_URI` (default: MLflow's), `MLFLOW_EXPERIMENT_NAME` (created if missing),
    `MLFLOW_RUN_ID` (log into that run), `MLFLOW_NESTED_RUN=true` (a child of the active MLflow run),
    `MLFLOW_TAGS` (a JSON object of tags). `HF_MLFLOW_LOG_ARTIFACTS` is not supported: the model is not uploaded.

    Args:
        parent_run_id: make each run a child of this one (hyperparameter search: one run per trial).
    """

    report_name, title = "mlflow", "MLflow"

    def __init__(self, parent_run_id: str | None = None) -> None:
        super().__init__()
        self.parent_run_id = parent_run_id
        self.client: Any = None
        self.logged_steps: dict[str, int] = {}  # metric -> last step the run had before a resume

    def _start(self, args: TrainingArguments, state: TrainerState, model: Any,
               reattach: dict[str, Any] | None) -> dict[str, Any]:
        mlflow = importlib.import_module("mlflow")
        _check_reachable(os.environ.get("MLFLOW_TRACKING_URI") or "")
        self.client = client = mlflow.MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None)
        run_id = (reattach or {}).get("run_id") or os.environ.get("MLFLOW_RUN_ID")
        if run_id:
            run = client.get_run(run_id)
            self.logged_steps = self._last_steps(run)
            if self.logged_steps:
                logger.info("MLflow: continuing run %s (points already logged up to each metric's last step are not "
                            "logged again)", run_id)
        else:
            run = client.create_run(self._experiment_id(client), run_name=run_name(args, state), tags=self._tags())
            self.logged_steps = {}
        self._log_parameters(run, run_parameters(args, state, model))
        return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}

    def _experiment_id(self, client: Any) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return "0"  # MLflow's "Default" experiment
        experiment = client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment is not None else client.create_experiment(name)

    def _tags(self) -> dict[str, str]:
        tags = {str(k): str(v) for k, v in json.loads(os.environ.get("MLFLOW_TAGS") or "{}").items()}
        parent = self.parent_run_id
        if parent is None and _environment_flag("MLFLOW_NESTED_RUN"):
            active = importlib.import_module("mlflow").active_run()
            parent = active.info.run_id if active is not None else None
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        return tags

    def _last_steps(self, run: Any) -> dict[str, int]:
        """The last step of each metric the run holds (a resumed run does not log those steps again)."""
        return {key: max((point.step for point in self.client.get_metric_history(run.info.run_id, key)), default=-1)
                for key in run.data.metrics}

    def _log_parameters(self, run: Any, parameters: dict[str, Any]) -> None:
        """Log parameters the run does not have yet (MLflow refuses to change one), cut to MLflow's limits."""
        from mlflow.entities import Param
        from mlflow.utils import validation

        key_limit = getattr(validation, "MAX_ENTITY_KEY_LENGTH", 250)
        value_limit = getattr(validation, "MAX_PARAM_VAL_LENGTH", 6000)
        batch_limit = getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100)
        present = set(run.data.params)
        params = []
        for key, value in parameters.items():
            key = re.sub(r"[^\w\-. /:]", "_", key)[:key_limit]
            text = str(value)
            if key not in present:
                params.append(Param(key, text if len(text) <= value_limit else text[:value_limit - 3] + "..."))
                present.add(key)
        for start in range(0, len(params), batch_limit):
            self.client.log_batch(run.info.run_id, params=params[start:start + batch_limit])

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(re.sub(r"[^\w\-. /:]", "_", key), value, now, step) for key, value in metrics.items()
                  if step > self.logged_steps.get(key, -1)]
        if points:
            self.client.log_batch(self.run["run_id"], metrics=points)

    def _finish(self) -> None:
        self.client.set_terminated(self.run["run_id"], "FINISHED")


class WandbCallback(TrackerCallback):
    """Logs the configuration and metrics to Weights & Biases (HF's class name and environment variables).

    Environment: `WANDB_PROJECT` (default "finch"), `WANDB_MODE` (`offline`: a run folder to `wandb sync` later;
    `disabled`: nothing), `WANDB_DIR` (default: `output_dir`). `WANDB_LOG_MODEL` is ignored (with a warning): the
    model is not uploaded. The run stays open after training, for a following `evaluate()`; `close()` ends it (so
    does the next `train()` and the end of the process).

    Args:
        group: W&B group of the run (hyperparameter search: all trials of a study).
    """

    report_name, title = "wandb", "W&B"

    def __init__(self, group: str | None = None) -> None:
        super().__init__()
        self.group = group
        self.wandb_run: Any = None

    def _start(self, args: TrainingArguments, state: TrainerState, model: Any,
               reattach: dict[str, Any] | None) -> dict[str, Any]:
        wandb = importlib.import_module("wandb")
        if os.environ.get("WANDB_LOG_MODEL", "").lower() not in ("", "false", "none"):
            logger.warning("WANDB_LOG_MODEL is set but finch does not upload models to W&B; the model is saved in "
                           "output_dir only")
        folder = Path(os.environ.get("WANDB_DIR") or args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "finch",
                                    id=(reattach or {}).get("run_id"), resume="allow", reinit="create_new",
                                    name=run_name(args, state), group=self.group, dir=str(folder),
                                    config=run_parameters(args, state, model))
        return {"run_id": self.wandb_run.id}

    def _log(self, metrics: dict[str, float], step: int) -> None:
        # step= makes W&B's own step the optimizer step; it drops steps below its current one (a resumed run's
        # repeated points)
        self.wandb_run.log({grouped_key(key): value for key, value in metrics.items()}, step=step)

    def _close(self) -> None:
        self.wandb_run.finish()
        self.wandb_run = None


class TensorBoardCallback(TrackerCallback):
    """Writes numeric logs as TensorBoard scalars under `tensorboard_dir` (default `<output_dir>/runs`).

    A resumed run purges the events after its checkpoint's step, so TensorBoard shows each step once.
    """

    report_name, title = "tensorboard", "TensorBoard"

    def __init__(self) -> None:
        super().__init__()
        self.writer: Any = None

    def _start(self, args: TrainingArguments, state: TrainerState, model: Any,
               reattach: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = args.tensorboard_dir or str(Path(args.output_dir) / "runs")
        # purge_step: TensorBoard hides this folder's events at steps >= it (those a killed run wrote after the
        # checkpoint); the resumed run writes from the checkpoint's step + 1
        purge_step = state.global_step + 1 if reattach else None
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)
        return {"log_dir": log_dir}

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(grouped_key(key), value, step)
        self.writer.flush()

    def _finish(self) -> None:
        self.writer.flush()

    def _close(self) -> None:
        self.writer.close()
        self.writer = None
