"""Evaluation outputs copied to the host without making the host wait for the device at every batch.

Why: reading a CUDA tensor on the host (`.item()`, `.cpu()`, `.numpy()`) waits until the GPU has run everything
queued before it. Done at every evaluation batch, the host stops queueing the next batch's kernels until the GPU is
idle, so at small batches the GPU waits on Python as much as Python waits on it. Here each batch's outputs (its
loss, predictions, labels, inputs) are copied into pinned host memory asynchronously, behind a CUDA event, and read
`LAG` batches later, when the GPU has long finished them: the host waits on an event that has (nearly always)
already passed, and the GPU always has the next batch queued. Pinned memory is held for `LAG` batches at most, so
a causal LM's vocabulary-sized logits never pile up in it.

On the CPU there is nothing to wait for: each batch is read at once (`deferred=False`), exactly as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

LAG = 2  # batches between a batch's copy being queued and its read: the GPU has finished it by then


def to_numpy(value: Any) -> Any:
    """Tensors (possibly nested in tuples, lists and dicts) as float32/int NumPy arrays on the CPU, the nesting kept
    (lists become tuples); None stays None."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(to_numpy(v) for v in value)
    if isinstance(value, Mapping):
        return {key: to_numpy(v) for key, v in value.items()}
    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    value = value.detach()
    if value.is_floating_point() and value.dtype != torch.float64:
        value = value.float()
    return value.cpu().numpy()


def own(value: Any) -> Any:
    """NumPy arrays (nested in tuples and dicts) copied into memory of their own (not views of torch tensors)."""
    if isinstance(value, tuple):
        return tuple(own(v) for v in value)
    if isinstance(value, dict):
        return {key: own(v) for key, v in value.items()}
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


def _pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """An asynchronous copy of a device tensor into pinned host memory (float32 for floats, as `to_numpy` gives)."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()  # converted on the device, before the copy: half the bytes for bf16 never matter
    host = torch.empty_like(tensor, device="cpu", pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def _cuda_fence() -> Any:
    """A CUDA event recorded after the copies just queued: `.synchronize()` waits for them alone."""
    event = torch.cuda.Event()
    event.record()
    return event


class Readback:
    """Collects each evaluation batch's outputs as NumPy arrays of their own, in the order they were put.

    `stage(value)` starts the copy of one batch's nested tensors (call it before the model's outputs are freed);
    `put(staged)` hands it over once they are. `results()` waits for the last copies and returns every batch's.

    Args:
        deferred: copy asynchronously and read `lag` batches later (CUDA); False: read each batch at once (CPU).
        copy: how a tensor is copied to the host when deferred (pinned, non-blocking on CUDA).
        fence: a marker recorded after a batch's copies; its `.synchronize()` waits for them.
        lag: how many batches a read trails the copy.
    """

    def __init__(self, deferred: bool, copy: Callable[[torch.Tensor], torch.Tensor] = _pinned_copy,
                 fence: Callable[[], Any] = _cuda_fence, lag: int = LAG) -> None:
        self.deferred, self.copy, self.fence, self.lag = deferred, copy, fence, lag
        self.pending: deque[tuple[Any, Any]] = deque()
        self.done: list[Any] = []

    @classmethod
    def for_device(cls, device: torch.device) -> Readback:
        return cls(deferred=device.type == "cuda")

    def stage(self, value: Any) -> Any:
        """One batch's outputs on their way to the host: NumPy views at once (not deferred), or queued copies."""
        if not self.deferred:
            return to_numpy(value)
        return _map_tensors(value, self.copy)

    def put(self, staged: Any) -> None:
        """The batch staged last, handed over; batches more than `lag` behind it are read now."""
        if not self.deferred:
            self.done.append(own(staged))
            return
        self.pending.append((staged, self.fence()))
        while len(self.pending) > self.lag:
            self._read_oldest()

    def _read_oldest(self) -> None:
        staged, fence = self.pending.popleft()
        fence.synchronize()  # this batch's copies only: later batches keep running on the device
        self.done.append(own(to_numpy(staged)))

    def results(self) -> list[Any]:
        """Every batch's outputs, in the order they were put; waits for the copies still in flight."""
        while self.pending:
            self._read_oldest()
        return self.done


def _map_tensors(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with `function` applied to every tensor in it (tuples, lists and dicts kept as tuples and dicts)."""
    if isinstance(value, (tuple, list)):
        return tuple(_map_tensors(v, function) for v in value)
    if isinstance(value, Mapping):
        return {key: _map_tensors(v, function) for key, v in value.items()}
    return function(value) if isinstance(value, torch.Tensor) else value
