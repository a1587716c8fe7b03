"""Shape buckets: every batch padded to one of a few lengths chosen from the data's length histogram.

A compiled step (`torch.compile`, CUDA graphs) is specialised to its input shapes: batches padded to the longest row
give one shape per length, so a new graph (or a recompilation) for most batches. Padding to a handful of bucket
lengths bounds the shapes while keeping the padding small: length-grouped batches hold rows of similar lengths, and
the buckets are chosen where the data's lengths are. Padding sits under the attention mask (and -100 labels), so the
model learns exactly what it learns from exact-length batches, up to float rounding.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

MAX_BUCKETS = 8
PADDING_TARGET = 0.10  # the share of padding tokens the buckets may add over exact lengths
PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}


def choose_buckets(lengths: Sequence[int], multiple: int = 8, max_buckets: int = MAX_BUCKETS,
                   padding_target: float = PADDING_TARGET) -> list[int]:
    """A few bucket lengths (multiples of `multiple`, the last covering the longest example), added greedily where
    they cut padding most, until padding to them adds at most `padding_target` of the tokens or there are
    `max_buckets`. Each example is counted padded to the smallest bucket that holds it."""
    values = np.asarray(lengths, dtype=np.int64)
    if values.size == 0:
        return []
    rounded = (np.maximum(values, 1) + multiple - 1) // multiple * multiple
    candidates, counts = np.unique(rounded, return_counts=True)
    buckets = [int(candidates[-1])]
    total = int(values.sum()) or 1

    def added(chosen: list[int]) -> int:
        edges = np.asarray(sorted(chosen))
        return int((edges[np.searchsorted(edges, candidates)] * counts).sum()) - total

    while len(buckets) < max_buckets and added(buckets) / total > padding_target:
        best = min((c for c in candidates.tolist() if c not in buckets), key=lambda c: added(buckets + [c]),
                   default=None)
        if best is None:
            break
        buckets.append(int(best))
    return sorted(buckets)


def padding_share(lengths: Sequence[int], buckets: Sequence[int]) -> float:
    """The share of tokens that padding each example to its bucket adds (over exact lengths)."""
    values = np.asarray(lengths, dtype=np.int64)
    edges = np.asarray(sorted(buckets))
    padded = edges[np.minimum(np.searchsorted(edges, values), len(edges) - 1)]
    padded = np.maximum(padded, values)
    return float((padded - values).sum() / max(values.sum(), 1))


class BucketPadding:
    """A collator that pads what `collator` returns, along the sequence axis, to the smallest bucket that holds it
    (batches longer than the last bucket are left as they are). Every tensor whose last axis has the batch's length
    is padded: with `pad_token_id` for the input ids, 0 for masks and token types, -100 for labels; on the side the
    tokenizer pads."""

    def __init__(self, collator: Callable[[list[dict]], dict], buckets: Sequence[int], pad_token_id: int = 0,
                 padding_side: str = "right", main_input: str = "input_ids") -> None:
        self.collator, self.buckets = collator, sorted(buckets)
        self.pad_token_id, self.padding_side, self.main_input = pad_token_id, padding_side, main_input

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        ids = batch.get(self.main_input)
        if not isinstance(ids, torch.Tensor) or ids.ndim < 2:
            return batch
        length = ids.shape[-1]
        index = bisect.bisect_left(self.buckets, length)
        if index == len(self.buckets) or self.buckets[index] == length:
            return batch
        extra = self.buckets[index] - length
        padded = dict(batch)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[-1] == length:
                fill = self.pad_token_id if key == self.main_input else PAD_VALUES.get(key, 0)
                padded[key] = pad_last_axis(value, extra, fill, left=self.padding_side == "left")
        return padded

    def describe(self) -> str:
        return "buckets " + ", ".join(map(str, self.buckets))


def pad_last_axis(tensor: torch.Tensor, extra: int, value: float, left: bool = False) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (extra, 0) if left else (0, extra), value=value)


def tokenizer_padding(collator: Any, processing_class: Any) -> tuple[int, str]:
    """The pad token id and side of the collator's tokenizer (else the processing class's; else 0, right)."""
    tokenizer = getattr(collator, "tokenizer", None) or processing_class
    pad = getattr(tokenizer, "pad_token_id", None)
    return (pad if pad is not None else 0), getattr(tokenizer, "padding_side", "right") or "right"
