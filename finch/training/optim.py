"""Parameter groups (no decay on biases and norms), the optimizer, and the learning-rate schedule."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from finch.args import TrainingArguments


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (and embeddings) decay; biases and LayerNorm weights (1-D tensors) do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW (fused when `optim='adamw_torch_fused'`, the default) or SGD over `parameter_groups`."""
    groups = parameter_groups(model, args.weight_decay)
    if args.optim == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate)
    fused = args.optim == "adamw_torch_fused" and _fused_supported(model)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=fused or None, foreach=None if fused else True)


def _fused_supported(model: torch.nn.Module) -> bool:
    """Fused AdamW runs on CUDA and CPU for floating-point parameters."""
    return all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in model.parameters())


def create_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments,
                     total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The HF schedule named by `lr_scheduler_type`, warmup given in steps or as a fraction of `total_steps`."""
    warmup = args.get_warmup_steps(total_steps)
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
