"""Freezing parts of a pretrained model (`finch train --freeze ...`), a tutorials' favourite for small data."""

from __future__ import annotations

import torch

from finch.errors import ConfigError

CHOICES = "base | embeddings | N (embeddings and the first N layers)"


def freeze(model: torch.nn.Module, spec: str) -> int:
    """Stop gradients for part of `model`; return how many parameters remain trainable.

    Args:
        spec: "base" (the whole pretrained encoder: only the task head trains), "embeddings", or an integer N
            (the embeddings and the first N transformer layers).
    Raises:
        ConfigError: an unknown spec, or a model whose encoder or layers cannot be found.
    """
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ConfigError(f"--freeze {spec}: cannot tell this model's pretrained encoder from its head")
    if spec == "base":
        frozen = list(base.parameters())
    elif spec == "embeddings" or spec.isdigit():
        embeddings = getattr(base, "embeddings", None)
        if embeddings is None:
            raise ConfigError(f"--freeze {spec}: the model has no `embeddings` module")
        frozen = list(embeddings.parameters())
        if spec.isdigit():
            layers = _layers(base)
            if int(spec) > len(layers):
                raise ConfigError(f"--freeze {spec}: the model has only {len(layers)} layers")
            frozen += [p for layer in layers[:int(spec)] for p in layer.parameters()]
    else:
        raise ConfigError(f"--freeze {spec!r} is not one of: {CHOICES}")
    for parameter in frozen:
        parameter.requires_grad = False
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _layers(base: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks: `encoder.layer` (BERT family), `transformer.layer` (DistilBERT), `layers`..."""
    for path in ("encoder.layer", "transformer.layer", "layers", "h"):
        module = base
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ConfigError("--freeze N: cannot find this model's list of layers; use 'base' or 'embeddings'")
