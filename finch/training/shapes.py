"""What the Trainer needs to know about a model's shape, read as HF's Trainer reads it: the module under the wrappers
(DDP, `torch.compile`, a PEFT adapter), whether its loss shifts labels (causal LMs), whether its forward takes loss
keyword arguments (`num_items_in_batch`), and which of its outputs are state rather than predictions (caches).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from finch.data.models import is_peft


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module that DDP, `torch.compile` and a PEFT adapter wrap (the transformers model)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif is_peft(model):
            model = model.get_base_model()
        else:
            return model


def loss_shifts_labels(model: torch.nn.Module) -> bool:
    """Whether the model's loss predicts label t+1 at position t (a causal LM: its first label is never a target),
    as HF's Trainer decides it: the loss function `ForCausalLMLoss`, or a class registered as a causal LM, and not an
    encoder-decoder (whose labels are aligned with the decoder's outputs)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers moved them
        return False
    if LOSS_MAPPING.get(getattr(inner, "loss_type", None)) is ForCausalLMLoss:
        return True
    return type(inner).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def accepts_loss_kwargs(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes `num_items_in_batch` (HF's rule: its `accepts_loss_kwargs`, else a
    `**kwargs` in its signature)."""
    inner = unwrap(model)
    if hasattr(inner, "accepts_loss_kwargs"):
        return bool(inner.accepts_loss_kwargs)
    if not hasattr(inner, "config"):  # a plain torch module: its **kwargs are its own business
        return False
    parameters = inspect.signature(inner.forward).parameters.values()
    return any(parameter.kind == inspect.Parameter.VAR_KEYWORD for parameter in parameters)


def takes_use_cache(model: torch.nn.Module) -> bool:
    """Whether the model's config has `use_cache` (a generation cache its forward builds unless told not to)."""
    return hasattr(getattr(unwrap(model), "config", None), "use_cache")


def ignore_keys(model: torch.nn.Module, given: Sequence[str] | None) -> tuple[str, ...]:
    """The output keys that are not predictions: `given` (`evaluate`'s `ignore_keys`), else the model config's
    `keys_to_ignore_at_inference` (HF's default), plus the cache names every model uses."""
    if given is None:
        given = getattr(getattr(unwrap(model), "config", None), "keys_to_ignore_at_inference", None) or ()
    return (*given, "past_key_values", "cache", "mems")


def is_cache(value: Any) -> bool:
    """A transformers generation cache (`DynamicCache`, `EncoderDecoderCache`, ...)."""
    return type(value).__name__.endswith("Cache") and not isinstance(value, (torch.Tensor, tuple, list, dict))
