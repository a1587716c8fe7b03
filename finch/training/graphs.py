"""Whether the training step is replayed as CUDA graphs, and if not, why (said once, in the run header).

The capture is torch.compile's `mode="reduce-overhead"` on the compiled model: its forward and backward are
recorded as CUDA graphs, one per input shape, and replayed, so a step costs a few launches instead of hundreds of
Python-issued kernels. Staleness is torch.compile's to guard: a new shape (a shape bucket not seen yet), the
model's train/eval mode or a changed attribute fails a guard and records a new graph, never replays an old one.
The optimizer step (fused AdamW), the schedule, clipping and the NaN/Inf guard run eagerly after it, each a
handful of kernels with no host sync (see `finch.training.trainer`), so the learning rate is never baked into a
graph.

It is off, with the reason, where it cannot work or has not been shown to pay: not CUDA; no `torch_compile`;
shape buckets off (one graph per batch length: memory, and a capture at nearly every step); a user's
`compute_loss` or `training_step` (what it does with the outputs, which the next replay overwrites, is unknown);
FSDP; an optimizer that is neither fused nor capturable; a callback of the user's that acts at every step (it may
edit the model between replays). `cuda_graphs=True` turns it on where every check passes; unset, it stays off
until the lease measures it ("not yet measured"). A capture that raises, in the forward or at the first
backward of a shape, falls back to the eager model, logged once, and that micro-batch runs again eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finch.errors import UserError
from finch.events import LIBRARIES

logger = logging.getLogger("finch")

# events a callback may act on between two replays of the step
STEP_EVENTS = ("on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end")
# the Trainer methods whose override takes the step out of finch's hands
STEP_OVERRIDES = ("compute_loss", "training_step")


@dataclass(frozen=True)
class GraphPlan:
    """The decision: `on`, and the run header's words for it."""

    on: bool
    reason: str

    def describe(self) -> str:
        return f"graphs {'on' if self.on else 'off'}: {self.reason}" if not self.on else f"graphs on ({self.reason})"


def decide(wanted: bool | None, device: torch.device, torch_compile: bool, buckets: Sequence[int] | None,
           overridden: Sequence[str], sharded: bool, optimizer: torch.optim.Optimizer | None,
           callbacks: Sequence[Any]) -> GraphPlan:
    """Whether to capture the step, from the facts of the run (all passed in, so a test can fake a GPU).

    Args:
        wanted: `cuda_graphs` (None: on once measured; today off, "not yet measured").
        device: the training device. torch_compile: the argument. buckets: the shape buckets' lengths (None: off).
        overridden: the names among `STEP_OVERRIDES` that the trainer's class overrides.
        sharded: FSDP. optimizer: the optimizer. callbacks: the trainer's callbacks.
    """
    if wanted is False:
        return GraphPlan(False, "cuda_graphs=False")
    if device.type != "cuda":
        return GraphPlan(False, f"the device is {device.type} (CUDA graphs need CUDA)")
    if not torch_compile:
        return GraphPlan(False, "torch_compile is off (the graphs are torch.compile's reduce-overhead mode)")
    if not buckets:
        return GraphPlan(False, "shape buckets are off (one graph per batch length); set shape_buckets=True")
    if overridden:
        return GraphPlan(False, f"Trainer.{overridden[0]} is overridden (its use of the outputs, which the next "
                                f"replay overwrites, cannot be checked)")
    if sharded:
        return GraphPlan(False, "FSDP (its collectives are not captured)")
    defaults = getattr(optimizer, "defaults", {})
    if not (defaults.get("fused") or defaults.get("capturable")):
        return GraphPlan(False, f"the optimizer ({type(optimizer).__name__}) is neither fused nor capturable; use "
                                f"optim='adamw_torch_fused'")
    acting = step_callbacks(callbacks)
    if acting:
        return GraphPlan(False, f"callback {acting[0]} acts at every step (it may change the model between "
                                f"replays)")
    if wanted is None:
        return GraphPlan(False, "not yet measured on this GPU (cuda_graphs=True turns them on)")
    return GraphPlan(True, f"{len(buckets)} buckets")


def overridden_methods(trainer_class: type, base: type) -> list[str]:
    """The `STEP_OVERRIDES` that `trainer_class` defines differently from `base` (finch's Trainer)."""
    return [name for name in STEP_OVERRIDES if getattr(trainer_class, name, None) is not getattr(base, name, None)]


def step_callbacks(callbacks: Sequence[Any]) -> list[str]:
    """'Class.event' for each callback of the user's (not finch's or transformers') that handles a step event."""
    found = []
    for callback in callbacks:
        klass = type(callback)
        if klass.__module__.split(".")[0] in LIBRARIES:
            continue
        found += [f"{klass.__name__}.{name}" for name in STEP_EVENTS if getattr(klass, name, None) is not None
                  and getattr(klass, name) is not _transformers_no_op(name)]
    return found


def _transformers_no_op(name: str) -> Any:
    import transformers

    return getattr(getattr(transformers, "TrainerCallback", None), name, None)


def compile_model(model: torch.nn.Module, plan: GraphPlan) -> torch.nn.Module:
    """`torch.compile(model)`, with CUDA graphs when `plan` says so."""
    return torch.compile(model, mode="reduce-overhead") if plan.on else torch.compile(model)


class EagerFallback:
    """Runs the captured model; the first time it raises, says so once and runs the eager model from then on."""

    def __init__(self, captured: torch.nn.Module, eager: torch.nn.Module) -> None:
        self.captured, self.eager, self.failed = captured, eager, False

    def attempt(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        """`(True, call())`, or `(False, None)` when it raised a capture's error (anything but a user's mistake or
        running out of memory), which turns the graphs off for good, said once."""
        try:
            return True, call()
        except (UserError, torch.OutOfMemoryError):
            raise
        except Exception as error:  # noqa: BLE001 (inductor's and cudagraph trees' errors have no common base)
            self.fail(error)
            return False, None

    def fail(self, error: BaseException) -> None:
        self.failed = True
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        logger.warning("graphs off: capturing the step failed (%s: %s); training goes on eagerly",
                       type(error).__name__, first[:200])
