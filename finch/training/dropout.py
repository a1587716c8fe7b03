"""Dropout that is cheap on the CPU.

Why: PyTorch's CPU dropout draws one Bernoulli sample per element (`bernoulli_`), about 9 ns an element on this
machine. Fine-tuning MiniLM at batch 32 calls it 20 times a step and it took 18% of the step (profiled in
`benchmarks/profile_step.py`). Here the mask comes from 64-bit draws of the same generator cut into four 16-bit
uniforms (one draw per four elements), compared with `p` rounded to 1/65536: the same distribution (keep rate off
by < 1e-5), the same seeded torch generator (so runs and resumes stay exact), about 2.5x faster.

Two places drop out in a transformers model: `nn.Dropout` modules, and the attention probabilities, which the
model hands to its attention function (`config._attn_implementation`, usually "sdpa"; torch's SDPA on the CPU
falls back to its math path and `bernoulli_` when dropout is on). `fast_dropout(model)` swaps both and puts
them back after; the trainer swaps them around each micro-batch's forward and backward only (`DropoutSwap`), so
evaluation, checkpoints and callbacks see the model as built, and GPUs never reach the new code. Attention other
than SDPA (DeBERTa's disentangled attention, "eager") keeps torch's dropout; the run header says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

ATTENTION_NAME = "finch_sdpa"


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - `p` (to 1/65536), from torch's generator."""
    count = shape.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)  # full 64 bits
    uniforms = draws.view(torch.int16)[:count].view(shape)  # four uniform 16-bit integers per draw
    return uniforms >= round(p * 65536) - 32768


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of `x`: zero with probability `p`, scale the rest by 1 / (1 - p)."""
    if p >= 1.0:
        return x * 0.0
    scale = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * scale  # autograd keeps `scale` for backward, as torch's dropout keeps its noise tensor


class FastDropout(nn.Dropout):
    """`nn.Dropout` with `dropout` above on the CPU; torch's own elsewhere (CUDA's is fused and fast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return dropout(x, self.p)


def math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   scaling: float, p: float) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) with dropout `p`, times v, in fp32 as torch's SDPA math path computes it.

    `mask` is bool (True: attend) or additive float, broadcastable to (batch, heads, queries, keys).
    Returns (batch, heads, queries, head_dim) in the query's dtype."""
    with torch.autocast(query.device.type, enabled=False):
        scores = torch.matmul(query.float() * scaling, key.float().transpose(-2, -1))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(dim=-1)
        if p > 0.0:
            probs = dropout(probs, p)
        return torch.matmul(probs, value.float()).to(query.dtype)


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: our math path when it drops out on the CPU, else SDPA's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal  # SDPA's own default is causal
    special = any(kwargs.get(name) is not None for name in ("position_bias", "cache", "softcap"))
    plain = (query.device.type == "cpu" and dropout > 0.0 and causal is False and not special
             and key.shape[1] == query.shape[1])  # an encoder's attention: no causal mask, bias, cache, grouped KV
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    output = math_attention(query, key, value, attention_mask, scaling, dropout)
    return output.transpose(1, 2).contiguous(), None


def _register_attention(model: nn.Module) -> bool:
    """Register finch's attention function (with SDPA's mask builder) when `model` picks its attention from
    transformers' registry and uses SDPA, with no sub-models whose own choice a change would overwrite."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "sub_configs", None):
        return False
    try:  # both registries are recent (transformers 4.5x): with an older one the attention keeps torch's SDPA
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(ATTENTION_NAME, _attention)
    # the mask is built per attention function, and a name without one gets no mask at all: give ours SDPA's
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return True


class DropoutSwap:
    """The swap `fast_dropout` makes, planned once per model and applied around each forward/backward.

    Entering swaps `model`'s `nn.Dropout` modules (and its SDPA attention, when transformers' registry lets us) for
    finch's CPU dropout; leaving puts the original classes and attention implementation back, also on an exception.
    The trainer enters it for one micro-batch's forward and backward only, so everything else (evaluation,
    checkpoint saving, callbacks, logging) sees the model exactly as it was built. Swapping is a class assignment
    per module: microseconds, against a forward of milliseconds.

    Args:
        model: the model to train.
        enabled: False plans nothing: entering and leaving change nothing.
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.modules = [m for m in model.modules() if type(m) is nn.Dropout] if enabled else []
        config = getattr(model, "config", None)
        self.original_attention: str | None = getattr(config, "_attn_implementation", None)
        self.swaps_attention = enabled and _register_attention(model)
        self.enabled = enabled

    def describe(self) -> str:
        """What is swapped, for the run header: says when the attention keeps torch's dropout, and why."""
        if not self.enabled:
            return "torch"
        modules = f"{len(self.modules)} nn.Dropout modules"
        if self.swaps_attention:
            return f"fast (CPU): {modules} and the SDPA attention"
        if self.original_attention is None:
            return f"fast (CPU): {modules}"
        return (f"fast (CPU): {modules}; the attention ({self.original_attention!r}) keeps torch's dropout, "
                f"as only SDPA attention is swapped")

    def __enter__(self) -> int:
        if self.swaps_attention:
            self.model.config._attn_implementation = ATTENTION_NAME
        for module in self.modules:
            module.__class__ = FastDropout
        return len(self.modules)

    def __exit__(self, *exc_info: object) -> None:
        for module in self.modules:
            module.__class__ = nn.Dropout
        if self.swaps_attention:
            self.model.config._attn_implementation = self.original_attention


@contextlib.contextmanager
def fast_dropout(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """While inside, `model`'s `nn.Dropout` modules and SDPA attention drop out with `dropout` above.

    Yields how many dropout modules were swapped; everything is restored on exit, also on an exception.
    `enabled=False` changes nothing (yields 0)."""
    with DropoutSwap(model, enabled) as swapped:
        yield swapped
