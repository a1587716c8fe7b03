"""Pieces of the prediction loop: reading model outputs, moving them to the CPU batch by batch, restoring order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

PAD_INDEX = -100  # what pads token-level outputs of different lengths, as HF does


def split_outputs(outputs: Any, has_labels: bool, ignore_keys: Sequence[str] = ()) -> tuple[Any, Any]:
    """(loss or None, logits) from a model output object, dict, tuple or bare tensor.

    Logits are one tensor, or a tuple of tensors when the model returns several (loss and `ignore_keys` excluded).
    """
    if isinstance(outputs, torch.Tensor):
        return None, outputs
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        rest = [v for k, v in outputs.items() if k != "loss" and k not in ignore_keys and v is not None]
    else:
        outputs = tuple(outputs)
        loss = outputs[0] if has_labels else None
        rest = list(outputs[1:] if has_labels else outputs)
    return loss, (rest[0] if len(rest) == 1 else tuple(rest))


def to_numpy(value: Any) -> Any:
    """Tensors (possibly nested in tuples) as float32/int NumPy arrays on the CPU."""
    if isinstance(value, (tuple, list)):
        return tuple(to_numpy(v) for v in value)
    value = value.detach()
    if value.is_floating_point() and value.dtype != torch.float64:
        value = value.float()
    return value.cpu().numpy()


def concatenate(chunks: list[Any]) -> Any:
    """Join per-batch arrays along the first axis, padding other axes with -100 when their sizes differ."""
    if not chunks:
        return None
    if isinstance(chunks[0], tuple):
        return tuple(concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0])))
    if chunks[0].ndim <= 1 or all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return np.concatenate(chunks, axis=0)
    shape = [sum(c.shape[0] for c in chunks)] + [max(c.shape[d] for c in chunks) for d in range(1, chunks[0].ndim)]
    joined = np.full(shape, PAD_INDEX, dtype=chunks[0].dtype)
    row = 0
    for chunk in chunks:
        joined[(slice(row, row + chunk.shape[0]), *(slice(0, n) for n in chunk.shape[1:]))] = chunk
        row += chunk.shape[0]
    return joined


def reorder(value: Any, order: np.ndarray) -> Any:
    """Rows of `value` (arrays or tuples of arrays) put back in dataset order; `order[i]` is row i's index."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(reorder(v, order) for v in value)
    restored = np.empty_like(value)
    restored[order] = value
    return restored
