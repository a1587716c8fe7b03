"""Callbacks with HuggingFace's event names and signature, early stopping, progress, and run loggers.

A callback is told what happened (`on_log`, `on_evaluate`, ...) and may set flags on `control`; the loop itself
decides when to log, evaluate and save. Subclasses of `transformers.TrainerCallback` work unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from finch.args import TrainingArguments
from finch.errors import ConfigError
from finch.events import Event, TrainerCallback, unknown_overrides
from finch.observers import trackers
from finch.runs.files import write_text
from finch.runs.resume import PREVIOUS_RUNS
from finch.state import TrainerControl, TrainerState

logger = logging.getLogger("finch")

class CallbackHandler:
    """Calls one event on every callback, in order; a callback returning a `TrainerControl` replaces it."""

    def __init__(self, callbacks: list) -> None:
        self.callbacks: list = []
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: Any) -> None:
        callback = callback() if isinstance(callback, type) else callback
        if not isinstance(callback, TrainerCallback) and not any(callable(getattr(callback, event.value, None))
                                                                 for event in Event):
            raise ConfigError(f"callbacks: {type(callback).__name__} {callback!r:.60} is not a callback: it has none "
                              f"of the event methods (on_log, on_evaluate, on_save, ...), so it would never be "
                              f"called. Subclass TrainerCallback (from finch import TrainerCallback) and define the "
                              f"events it acts on")
        if any(type(existing) is type(callback) for existing in self.callbacks):
            logger.warning("Adding a second %s; the trainer now has two.", type(callback).__name__)
        for line in unknown_overrides(callback):
            logger.warning("%s", line)
        self.callbacks.append(callback)

    def pop(self, callback: Any) -> Any:
        """HF's `pop_callback`: remove and return the first callback that is `callback` (an instance) or an instance
        of it (a class). One of HF's own callbacks (its ProgressCallback, TensorBoardCallback...) stands for finch's
        that does the same job. When none matches: None, and a warning naming the callbacks there are."""
        found, equivalent = self._find(callback), finch_equivalent(callback)
        if found is None and equivalent is not None:
            found = self._find(equivalent)
        if found is None:
            logger.warning("%s", self._no_match(callback))
            return None
        self.callbacks.remove(found)
        return found

    def _find(self, callback: Any) -> Any:
        if isinstance(callback, type):
            return next((existing for existing in self.callbacks if isinstance(existing, callback)), None)
        return next((existing for existing in self.callbacks if existing is callback), None)

    def _no_match(self, callback: Any) -> str:
        kind = callback if isinstance(callback, type) else type(callback)
        name = f"{kind.__module__}.{kind.__qualname__}"
        what = f"callback of class {name}" if isinstance(callback, type) else f"{name} (this very instance)"
        equivalent = finch_equivalent(kind)
        if equivalent is not None:
            what += f", nor finch's {equivalent.__name__}, which does its job"
        elif kind.__module__.startswith("transformers."):
            what += NO_FINCH_EQUIVALENT.get(kind.__name__, "")
        present = ", ".join(type(existing).__name__ for existing in self.callbacks) or "none"
        return f"pop_callback/remove_callback: no {what} in this Trainer, so nothing was removed; its callbacks " \
               f"are: {present}"

    def fire(self, event: Event, args: TrainingArguments, state: TrainerState, control: TrainerControl,
             **kwargs: Any) -> TrainerControl:
        name = Event(event).value  # a name that is no event is a ValueError here, not a silent no-op
        for callback in self.callbacks:
            handler = getattr(callback, name, None)
            result = handler(args, state, control, **kwargs) if handler is not None else None
            if isinstance(result, TrainerControl):
                control = result
        return control


# HF's built-in callbacks that finch has no counterpart for, and why.
NO_FINCH_EQUIVALENT = {
    "DefaultFlowCallback": " (finch has none: its training loop decides when to log, evaluate and save; change that "
                           "with logging_strategy, eval_strategy and save_strategy)",
}


def finch_equivalent(callback: Any) -> type | None:
    """finch's callback class that does the job of `callback` (a class or instance) when it is one of HF's built-in
    callbacks (`transformers.trainer_callback`, `transformers.integrations`); None for any other."""
    kind = callback if isinstance(callback, type) else type(callback)
    if not kind.__module__.startswith("transformers."):
        return None
    return {"ProgressCallback": ProgressCallback, "PrinterCallback": ProgressCallback,  # finch's prints lines too
            "EarlyStoppingCallback": EarlyStoppingCallback, "TensorBoardCallback": trackers.TensorBoardCallback,
            "WandbCallback": trackers.WandbCallback, "MLflowCallback": trackers.MLflowCallback}.get(kind.__name__)


class EarlyStoppingCallback(TrainerCallback):
    """Stop training when `metric_for_best_model` has not improved for `early_stopping_patience` evaluations.

    Without `metric_for_best_model` (and without `load_best_model_at_end`, which defaults it to "loss") it watches
    the evaluation loss, lower being better, and says so once in a warning at the start of training.

    Args:
        early_stopping_patience: evaluations without improvement before stopping.
        early_stopping_threshold: how much better than the best so far a value must be to count as improvement.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0) -> None:
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.best: float | None = None
        self.evaluations_without_improvement = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if args.eval_strategy == "no":
            raise ConfigError("EarlyStoppingCallback needs evaluations to compare, but eval_strategy='no': set "
                              "eval_strategy='epoch' (or 'steps' with eval_steps=N) and pass eval_dataset=... to the "
                              "Trainer, or remove the callback")
        if args.metric_for_best_model is None:
            logger.warning("EarlyStoppingCallback: no metric_for_best_model is set, so training stops when the "
                           "evaluation loss (eval_loss, lower is better) has not improved for %d evaluations; set "
                           "metric_for_best_model (e.g. 'accuracy') to watch another metric",
                           self.early_stopping_patience)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any):
        key, greater_is_better = _watched_metric(args)
        if not metrics or key not in metrics:
            logger.warning("Early stopping is off for this evaluation: metric %r missing from %s", key,
                           sorted(metrics or {}))
            return
        value = metrics[key]
        sign = 1 if greater_is_better else -1
        if self.best is None or sign * (value - self.best) > self.early_stopping_threshold:
            self.best, self.evaluations_without_improvement = value, 0
        else:
            self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement >= self.early_stopping_patience:
            logger.info("Early stopping: %s has not improved on %.4f for %d evaluations", key, self.best,
                        self.evaluations_without_improvement)
            control.should_training_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.evaluations_without_improvement = state["evaluations_without_improvement"]


class ProgressCallback(TrainerCallback):
    """A progress bar on a terminal; otherwise (files, CI, notebooks' captured output) one line per log, and a
    line with step, epoch, elapsed time and ETA at least every `heartbeat_seconds` between logs, so a run logging
    every 500 steps is not silent for minutes.

    Args:
        use_bar: True/False forces the bar on/off; None (default): a bar when stdout is a terminal and
            `disable_tqdm` is not set.
        heartbeat_seconds: longest silence without a bar, in seconds.
    """

    def __init__(self, use_bar: bool | None = None, heartbeat_seconds: float = 30.0) -> None:
        self.use_bar = use_bar
        self.heartbeat_seconds = heartbeat_seconds
        self.bar: tqdm | None = None
        self.started: float | None = None  # None outside train(): an evaluate() alone has no elapsed time
        self.started_step = 0
        self.last_line = 0.0  # when the last line was printed (perf_counter)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.started, self.started_step = time.perf_counter(), state.global_step
        self.last_line = self.started
        if self.use_bar is None:
            self.use_bar = not args.disable_tqdm and sys.stdout.isatty()
        if self.use_bar:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            return
        now = time.perf_counter()
        if self.started is not None and now - self.last_line >= self.heartbeat_seconds:
            # no loss in this line: reading it would be a host sync; it comes with the next logging step
            print(format_log_line({}, state, now - self.started, self.started_step), flush=True)
            self.last_line = now

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if control.should_training_stop or state.global_step >= state.max_steps:
            # the loop is over: what the trainer logs next ("Loading the best model") gets its own line
            self._close_bar()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any):
        logs = logs or {}
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                                 samples_s=f"{logs.get('samples_per_second', 0):.1f}")
            return
        self.last_line = time.perf_counter()
        elapsed = None if self.started is None else self.last_line - self.started
        line = format_log_line(logs, state, elapsed, self.started_step)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._close_bar()
        self.started = None  # an evaluate() after train() is outside training: metrics only

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_log_line(logs: dict[str, Any], state: TrainerState, elapsed: float | None, started_step: int = 0) -> str:
    """`step 50/1377 | epoch 0.11 | loss 0.6931 | ... | elapsed 1m02s | eta 25m40s` for logs without a bar.

    `elapsed` is the time since this run's `train()` began at `started_step` (not 0 on resume). None means
    outside training (`evaluate()` alone, `finch eval`): the metrics only, `eval_loss 0.25 | eval_accuracy 0.9`."""
    parts = [] if elapsed is None else [f"step {state.global_step}/{state.max_steps}", f"epoch {state.epoch:.2f}"]
    for key, value in logs.items():
        if key == "epoch":
            continue
        if isinstance(value, float):
            value = f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
        parts.append(f"{key} {value}")
    if elapsed is None:
        return " | ".join(parts)
    parts.append(f"elapsed {_duration(elapsed)}")
    done = state.global_step - started_step
    if done > 0 and state.global_step < state.max_steps:
        parts.append(f"eta {_duration(elapsed * (state.max_steps - state.global_step) / done)}")
    return " | ".join(parts)


def _watched_metric(args: TrainingArguments) -> tuple[str, bool]:
    """The evaluation metric early stopping compares, and whether greater is better: `metric_for_best_model`, or
    the evaluation loss (lower is better) when none is set."""
    name = args.metric_for_best_model
    if name is None:
        return "eval_loss", False
    return (name if name.startswith("eval_") else f"eval_{name}"), bool(args.greater_is_better)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class JsonlLoggerCallback(TrainerCallback):
    """Appends every logged dict, with its step, to `<output_dir>/log.jsonl` (rank 0 only).

    The number of lines is saved in each checkpoint (`state_dict`); a run resumed from it first drops the later
    lines of steps past the checkpoint's, so the steps a killed run logged after its checkpoint do not appear twice.
    A fresh run in a folder that holds an earlier run's log moves that log, unchanged, to
    `previous-runs/log-<its time>.jsonl` (where `Trainer.train()` also moves the earlier run's checkpoints), so the
    file holds one run and nothing is lost; lines this trainer logged since its last run (an `evaluate()` of the
    untrained model) stay with the new run.
    """

    FILE = "log.jsonl"

    def __init__(self) -> None:
        self.path: Path | None = None
        self.resumed_lines: int | None = None  # from the checkpoint being resumed
        self.pending = 0  # lines this callback appended outside train() since its last run began
        self.training = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.path = Path(args.output_dir) / self.FILE
        if state.is_world_process_zero and self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            if self.resumed_lines is None:
                own = len(lines) - min(self.pending, len(lines))  # where this trainer's own lines begin
                self._set_aside(lines[:own], lines[own:])
            else:
                # after the checkpoint's lines, those at its step stay (the end of a finished run: its summary, a
                # final evaluation); those past it go: the resumed run logs those steps again
                kept = lines[:self.resumed_lines] + [line for line in lines[self.resumed_lines:]
                                                     if _step_of(line) <= state.global_step]
                if len(kept) < len(lines):
                    logger.info("%s: dropping %d lines logged after step %d by the run before this resume",
                                self.path, len(lines) - len(kept), state.global_step)
                    write_text(self.path, "".join(kept))
        self.resumed_lines, self.pending, self.training = None, 0, True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.training = False

    def _set_aside(self, earlier: list[str], own: list[str]) -> None:
        """Move the `earlier` lines (another run's) to `previous-runs/`; keep this trainer's `own`."""

        if not earlier:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.path.stat().st_mtime))
        target, copy = self.path.parent / PREVIOUS_RUNS / f"log-{stamp}.jsonl", 1
        while target.exists():
            target, copy = target.with_name(f"log-{stamp}.{copy}.jsonl"), copy + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, "".join(earlier))
        write_text(self.path, "".join(own))
        logger.warning("%s held the log of an earlier run: moved it unchanged to %s, so this run's log holds this run "
                       "only", self.path, target)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any):
        if not state.is_world_process_zero:
            return
        self.path = Path(args.output_dir) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")
        self.pending += 0 if self.training else 1

    def state_dict(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {"lines": 0}
        with self.path.open("rb") as file:  # counted at each save: a few thousand lines, milliseconds
            return {"lines": sum(1 for _ in file)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed_lines = state.get("lines")


def _step_of(line: str) -> float:
    """The step of a log.jsonl line; infinity for a line that is not one (cut by a crash)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return math.inf
    return step if isinstance(step, int) else math.inf


def reporters(report_to: list[str]) -> list[TrainerCallback]:
    """Callbacks for `report_to` (the JSONL log is always written); "all" means every installed tracker.

    Raises:
        ConfigError: a tracker named in `report_to` is not installed (the message gives the pip command).
    """
    wanted = set(report_to)
    if "all" in wanted:
        wanted |= set(trackers.installed_trackers())
    return [JsonlLoggerCallback(), *trackers.tracker_callbacks(sorted(wanted))]
