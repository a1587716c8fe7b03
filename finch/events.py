"""The events a training run tells its callbacks about, and the callback base class.

`Event`'s values are HuggingFace's method names (`on_step_end`, ...), so a `transformers.TrainerCallback` subclass
works unchanged. The loop fires only `Event` members: a misspelt event is an error where it is written, and a
callback method named like an event that does not exist (`on_step_ends`) is a warning naming the closest one
(`unknown_overrides`), instead of a method that is silently never called.

This module sits below the wings: observers (trackers, hub uploads) and search subclass `TrainerCallback` without
importing the training loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import enum
from collections.abc import Iterator
from typing import Any


class Event(str, enum.Enum):
    """One thing that happens in a run; the value is the callback method HF names for it."""

    ON_INIT_END = "on_init_end"
    ON_TRAIN_BEGIN = "on_train_begin"
    ON_TRAIN_END = "on_train_end"
    ON_EPOCH_BEGIN = "on_epoch_begin"
    ON_EPOCH_END = "on_epoch_end"
    ON_STEP_BEGIN = "on_step_begin"
    ON_PRE_OPTIMIZER_STEP = "on_pre_optimizer_step"
    ON_OPTIMIZER_STEP = "on_optimizer_step"
    ON_SUBSTEP_END = "on_substep_end"
    ON_STEP_END = "on_step_end"
    ON_EVALUATE = "on_evaluate"
    ON_PREDICT = "on_predict"
    ON_SAVE = "on_save"
    ON_LOG = "on_log"
    ON_PREDICTION_STEP = "on_prediction_step"
    ON_PUSH_BEGIN = "on_push_begin"


EVENT_NAMES = frozenset(event.value for event in Event)
LIBRARIES = ("transformers", "finch", "builtins")  # whose callback classes `unknown_overrides` trusts


class TrainerCallback:
    """Base class: every event is a no-op. Override the ones you need.

    Each event receives `(args, state, control, **kwargs)`; kwargs include `model`, `processing_class`,
    `optimizer`, `lr_scheduler`, and `metrics` (on_evaluate) or `logs` (on_log).
    """

    def __getattr__(self, name: str) -> Any:
        if name in EVENT_NAMES:
            return lambda args, state, control, **kwargs: None
        raise AttributeError(name)


def unknown_overrides(callback: Any) -> list[str]:
    """One line for each `on_*` method of `callback` (an instance) that names no event: it would never be called.

    The line names the method, the closest event, and the events there are. Only the user's own classes are read:
    the callbacks of transformers and finch name their events themselves (an event a later transformers adds is not
    a mistake of the user's)."""
    own = [vars(klass) for klass in type(callback).__mro__ if klass.__module__.split(".")[0] not in LIBRARIES]
    lines = []
    for name in sorted({name for methods in own for name in methods}):
        if not name.startswith("on_") or name in EVENT_NAMES or not callable(getattr(type(callback), name, None)):
            continue
        close = difflib.get_close_matches(name, sorted(EVENT_NAMES), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"the events are {', '.join(sorted(EVENT_NAMES))}"
        lines.append(f"{type(callback).__name__}.{name} matches no callback event, so it is never called ({hint})")
    return lines


_TRYING_METRICS = contextvars.ContextVar("finch_trying_metrics", default=False)


@contextlib.contextmanager
def metrics_trial() -> Iterator[None]:
    """Marks finch's try of `compute_metrics` on a few rows before training: not an evaluation of the run, so a
    `compute_metrics` that keeps state (the CLI's collapse watch, its last predictions) can leave it out."""
    token = _TRYING_METRICS.set(True)
    try:
        yield
    finally:
        _TRYING_METRICS.reset(token)


def in_metrics_trial() -> bool:
    """True inside `metrics_trial()`."""
    return _TRYING_METRICS.get()
