"""One `train()` call's bookkeeping: `TrainingRun` (the plan, the wrapped model, the guards, the loss totals) and
`LogWindow` (what the loop saw since the last log). Built by `Trainer._start_run` and passed to the loop's helpers
explicitly."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from finch.training import graphs
from finch.training.dropout import DropoutSwap
from finch.training.nonfinite import NonFiniteGuard


@dataclass
class LogWindow:
    """What the loop saw since the last log: summed loss (left on the device; read only at logging steps), items
    (of every rank), and this rank's samples and tokens."""

    loss: torch.Tensor
    start: float
    items: int = 0
    samples: int = 0
    tokens: int = 0
    steps: int = 0

    @classmethod
    def open(cls, device: torch.device, start: float | None = None) -> LogWindow:
        return cls(torch.zeros((), device=device), time.perf_counter() if start is None else start)


@dataclass
class TrainingRun:
    """The bookkeeping of one `train()` call, built by `_start_run` and passed to the loop's helpers explicitly
    (never kept on the trainer, so nothing outlives the call by accident). What a checkpoint holds is the trainer's
    `state`, `optimizer`, `lr_scheduler` and this run's `scaler`, gathered into one `checkpoint.RunState` to save.

    Attributes:
        model: the module the training forward runs on: the trainer's model, wrapped in DDP when there are several
            processes and compiled with `torch_compile`; its parameters are the trainer's model's.
        dataset, lengths: the training set with unused columns dropped, and its examples' lengths (for length
            grouping; None otherwise).
        steps_per_epoch, max_steps: the plan, in optimizer steps.
        scaler: fp16's gradient scaler, else None.
        nonfinite: counts NaN/Inf steps and decides whether the optimizer may step.
        dropout: finch's CPU dropout, swapped in around each micro-batch.
        last_checkpoint: the newest checkpoint this run saved or resumed from (named in error messages).
        learning_rate: the rate the last optimizer step used, which is what is logged (as HF logs it).
        window: what was seen since the last log; total_loss, total_items: everything logged so far.
        grad_norm: the last step's gradient norm (a device tensor), or None.
        started, start_step: when and at which step this call began training (for its throughput).
        graphs: whether the step is replayed as CUDA graphs, and why not (`finch.training.graphs`).
        fallback: the eager model to fall back to if capturing raises (None: not captured).
    """

    model: torch.nn.Module
    dataset: Any
    lengths: list[int] | None
    steps_per_epoch: int
    max_steps: int
    scaler: torch.amp.GradScaler | None
    nonfinite: NonFiniteGuard
    dropout: DropoutSwap
    last_checkpoint: str | None = None
    learning_rate: float | None = None
    window: LogWindow | None = None
    total_loss: torch.Tensor | None = None
    total_items: int = 0
    grad_norm: torch.Tensor | None = None
    started: float = 0.0
    start_step: int = 0
    graphs: graphs.GraphPlan | None = None
    fallback: graphs.EagerFallback | None = None

    def epochs(self, global_step: int) -> range:
        """The epochs still to train from `global_step` (none when a finished run is resumed)."""
        if global_step >= self.max_steps:
            return range(0)
        return range(global_step // self.steps_per_epoch, math.ceil(self.max_steps / self.steps_per_epoch))

    def add_window(self) -> LogWindow:
        """Add the window (its loss already summed over ranks) to the run's totals; return it."""
        self.total_loss, self.total_items = self.total_loss + self.window.loss, self.total_items + self.window.items
        return self.window
