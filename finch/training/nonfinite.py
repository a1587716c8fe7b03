"""NaN/Inf guard: a step whose loss or gradient norm is not finite does not update the model.

On the CPU (and for optimizers that cannot skip on the device) the check is read each step, which costs nothing
there: the optimizer and the LR schedule are both skipped. On CUDA with fused AdamW it costs no host sync: the
flag goes to the optimizer as `found_inf`, the mechanism `GradScaler` uses, so the fused kernel leaves weights,
moments and its step count untouched, and the flags are read together at the next logging, evaluation or saving
step (or the end of training), when the host waits for the device anyway. There the LR schedule still advances on
a skipped step, as it does for steps `GradScaler` skips in fp16. The count of non-finite steps in a row is also
kept on the device: once it reaches `limit`, every later step is skipped too, so the weights stay those of the last
good step until the next read raises `NonFiniteLossError` naming the step where the limit was reached.

Skipped steps are counted and logged with their examples' indices; after `limit` in a row, training stops with
`NonFiniteLossError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from finch.errors import NonFiniteLossError

logger = logging.getLogger("finch")


# read the deferred flags at the latest after this many steps (a run that never logs, evaluates or saves)
MAX_PENDING = 1024


@dataclass
class NonFiniteGuard:
    """Counts non-finite steps; decides whether the optimizer may step.

    Args:
        limit: consecutive non-finite steps after which `NonFiniteLossError` is raised.
        on_device: skip on the device via the optimizer's `found_inf`; the flags are read at `flush`.
    """

    limit: int
    on_device: bool = False
    skipped: int = 0
    consecutive: int = 0
    # on the device: each deferred step's flag, step and example indices; the count in a row and whether it reached
    # the limit (from then on every step is skipped, until the flags are read and the error raised)
    _pending: list[tuple[torch.Tensor, int, list[int]]] = field(default_factory=list, repr=False)
    _in_a_row: torch.Tensor | None = field(default=None, repr=False)
    _tripped: torch.Tensor | None = field(default=None, repr=False)

    @staticmethod
    def supports_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
        """CUDA and an optimizer that honours `found_inf` (fused Adam/AdamW)."""
        return device.type == "cuda" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))

    @staticmethod
    def finite(loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
        """A device boolean: the step's loss and gradient norm are both finite (no host sync)."""
        ok = torch.isfinite(loss)
        return ok & torch.isfinite(grad_norm) if grad_norm is not None else ok

    def allow_step(self, finite: torch.Tensor, optimizer: torch.optim.Optimizer, step: int,
                   indices: list[int], last_checkpoint: str | None) -> bool:
        """Whether to run the optimizer and schedule for `step` (1-based) whose examples are `indices`.

        Raises:
            NonFiniteLossError: this is the `limit`-th non-finite step in a row (on the device: found at a read).
        """
        if not self.on_device:
            self._record(bool(finite), step, indices, last_checkpoint)  # a CPU tensor: no sync to speak of
            return bool(finite)
        if len(self._pending) >= MAX_PENDING:
            self.flush(last_checkpoint)
        if self._in_a_row is None:
            self._in_a_row = torch.zeros((), dtype=torch.int32, device=finite.device)
            self._tripped = torch.zeros((), dtype=torch.bool, device=finite.device)
        self._in_a_row = torch.where(finite, 0, self._in_a_row + 1)
        self._tripped = self._tripped | (self._in_a_row >= self.limit)
        optimizer.found_inf = (~finite | self._tripped).float()  # the fused kernel skips the update when this is 1
        self._pending.append((finite, step, indices))
        return True

    def flush(self, last_checkpoint: str | None) -> None:
        """Read the deferred steps' flags, in one copy (at a logging, evaluation or saving step, or the end of
        training: where the host waits for the device anyway)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.stack([finite for finite, _, _ in pending]).tolist()  # host sync: only here
        for ok, (_, step, indices) in zip(flags, pending):
            self._record(ok, step, indices, last_checkpoint)

    def _record(self, finite: bool, step: int, indices: list[int], last_checkpoint: str | None) -> None:
        if finite:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        shown = ", ".join(map(str, indices[:16])) + (" ..." if len(indices) > 16 else "")
        logger.warning("step %d: loss or gradient norm is NaN/Inf; update skipped (%d in a row, %d in all); "
                       "examples %s", step, self.consecutive, self.skipped, shown)
        if self.consecutive >= self.limit:
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
            raise NonFiniteLossError(
                f"training stopped at step {step}: {self.consecutive} steps in a row had a NaN/Inf loss or gradient "
                f"norm (max_nonfinite_steps={self.limit}); the last one's examples are {shown}; {where}. Check "
                f"those examples, lower learning_rate, or use bf16 rather than fp16, then resume.")
