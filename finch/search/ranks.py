"""Hyperparameter search under torchrun: rank 0 owns the Optuna study, every rank trains each trial.

Rank 0 alone talks to Optuna and its database. For each trial it turns Optuna's trial into a `TrialPlan` (the
parameters, the trial's folder, whether it resumes) and tells the other ranks, which train that trial with it as one
DDP run. Each decision Optuna takes during a trial (prune or not, at each evaluation; parameters `model_init(trial)`
suggests) is taken on rank 0 and given to every rank at a point all of them reach (`Runtime.on_main`), so all ranks
stop a pruned trial at the same step and leave each trial together. When the study ends (`n_trials`, `timeout`,
`study.stop()`, an error) rank 0 says so, with the best run or the error: no rank waits for a trial that will never
come. (HuggingFace's other ranks loop `n_trials` times and wait for ever when rank 0's study stops earlier.)

Failures. An exception that every rank raises at the same point of a trial (finch's NaN stop, and the types given in
`catch`, which must be raised on every rank too) ends that trial everywhere, and all ranks go on with rank 0's next
word. Rank 0 failing before a trial starts (its space, its database) tells the others, which then hear the next
trial or the end. Any other exception during training ends the process, on whichever rank raised it: rank 0 then
says nothing to ranks that may be inside one of the training loop's collectives; its exit closes the process group,
which ends theirs, and torchrun stops the remaining ranks when one fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("finch")


@dataclass(frozen=True)
class TrialPlan:
    """One trial, as rank 0 gives it to every rank.

    Attributes:
        number: Optuna's trial number.
        params: what the space returned (`TrainingArguments` fields, and names `model_init(trial)` reads).
        folder: the trial's output folder.
        resume: the trial retries a stopped one and resumes from its last checkpoint.
        trial: Optuna's trial as it stood then (a `FrozenTrial`, for `model_init(trial)` on the other ranks).
    """

    number: int
    params: dict[str, Any]
    folder: str
    resume: bool
    trial: Any = None


@dataclass(frozen=True)
class TrialNotRun:
    """Rank 0 could not start a trial (its space or its database failed); its next word follows."""

    reason: str


@dataclass(frozen=True)
class SearchEnd:
    """The study is over: `result` (the best run, as rank 0 returns it), or the `error` that ended it on rank 0."""

    result: Any = None
    error: str | None = None


class SearchAborted(RuntimeError):
    """Raised on the other ranks when rank 0's search ended with an error (rank 0 raises the error itself)."""


class RankChannel:
    """How rank 0 tells the other ranks what to do; in one process (`runtime` None or of one rank) it tells no one.

    Args:
        runtime: the trainer's `Runtime`, or None (one process).
    """

    def __init__(self, runtime: Any = None) -> None:
        self.runtime = runtime
        self.listening = True  # on rank 0: whether the others are waiting for its word (not while a trial trains)

    @property
    def distributed(self) -> bool:
        return self.runtime is not None and self.runtime.world_size > 1

    @property
    def leader(self) -> bool:
        return not self.distributed or self.runtime.is_main_process

    def decide(self, decision: Callable[[], Any]) -> Any:
        """`decision()` run on rank 0 and its value (or its error) given to every rank."""
        return self.runtime.on_main(decision) if self.distributed else decision()

    def on_leader(self, work: Callable[[], Any]) -> Any:
        """`work()` on rank 0, its error raised on every rank; returns its value on rank 0, None on the others."""
        result: list[Any] = []
        self.decide(lambda: result.append(work()))
        return result[0] if result else None

    def tell(self, message: Any) -> None:
        """Rank 0: give `message` to the other ranks (they are in `hear`)."""
        if self.distributed:
            self.runtime.on_main(lambda: message)

    def hear(self) -> Any:
        """The other ranks: rank 0's next message."""
        return self.runtime.on_main(_decided_on_rank_zero)

    @contextlib.contextmanager
    def training(self, survivable: tuple[type[BaseException], ...]) -> Iterator[None]:
        """Around a trial's training on rank 0: the others are not listening, unless it ends or raises an
        exception that every rank raises at the same point (`survivable`)."""
        self.listening = False
        try:
            yield
        except survivable:
            self.listening = True
            raise
        self.listening = True

    def model_builder(self, model_init: Callable[[Any], Any], trial: Any) -> Callable[[], Any]:
        """A no-argument `model_init` for the trial's `Trainer`: `model_init(trial)` on rank 0, where it may suggest
        parameters of its own; the other ranks then build theirs from the trial as rank 0 left it."""

        def build() -> Any:
            built: list[Any] = []

            def on_rank_zero() -> Any:
                built.append(model_init(trial))
                return snapshot(trial) if self.distributed else None

            seen = self.decide(on_rank_zero)
            return built[0] if built else model_init(seen)

        return build


def _decided_on_rank_zero() -> None:  # what the other ranks pass to `on_main`: only rank 0's function runs
    raise AssertionError("only rank 0 decides")


def snapshot(trial: Any) -> Any:
    """An Optuna trial's parameters as a `FrozenTrial` (picklable; `suggest_*` returns the values it holds)."""
    import optuna

    return optuna.trial.FrozenTrial(number=trial.number, state=optuna.trial.TrialState.RUNNING, value=None,
                                    datetime_start=None, datetime_complete=None, params=dict(trial.params),
                                    distributions=dict(trial.distributions), user_attrs={}, system_attrs={},
                                    intermediate_values={}, trial_id=-1)


def lead(channel: RankChannel, optimize: Callable[[], None], best: Callable[[], Any]) -> Any:
    """Rank 0 (or the only process): run the study (`optimize`), then tell the other ranks it is over, with the best
    run or the error. Returns `best()`."""
    try:
        optimize()
        result = best()
    except BaseException as error:
        if channel.listening:  # never while the others may be inside a training collective: exiting frees them
            with contextlib.suppress(Exception):  # telling must not hide the error itself
                channel.tell(SearchEnd(error=f"{type(error).__name__}: {error}"))
        raise
    channel.tell(SearchEnd(result=result))
    return result


def follow(channel: RankChannel, run_trial: Callable[[TrialPlan], Any],
           survivable: tuple[type[BaseException], ...]) -> Any:
    """A rank other than 0: train each trial rank 0 plans, until it says the study is over. Returns rank 0's result.

    Raises:
        SearchAborted: rank 0's search ended with an error.
    """
    while True:
        message = channel.hear()
        if isinstance(message, SearchEnd):
            if message.error is not None:
                raise SearchAborted(f"rank 0's hyperparameter search failed: {message.error}")
            return message.result
        if isinstance(message, TrialNotRun):
            logger.debug("rank 0 did not start a trial: %s", message.reason)
            continue
        try:
            run_trial(message)
        except survivable as error:  # raised on every rank at this point: rank 0 records it and goes on
            logger.warning("trial %d failed on every rank (%s); waiting for rank 0's next trial", message.number,
                           error)
