"""PEFT adapters (LoRA and any `peft.PeftModel`) in checkpoints and saved models.

A checkpoint of a PeftModel holds what its `save_pretrained` writes: the adapter's weights and the modules it trains
whole (`modules_to_save`: a new classification head), in `adapter_model.safetensors`, with `adapter_config.json`.
The frozen base is never written per checkpoint: it is the model the run was built from, and resuming rebuilds it
the same way. peft is an optional dependency (`finch[peft]`), imported only for a PeftModel.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from finch.data.models import is_peft  # noqa: F401 (re-exported: the runs and training wings ask here)
from finch.errors import ConfigError, ResumeError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# in checkpoints: every trainable tensor as it is. peft saves some methods in their inference form (P-tuning's
# prompt embeddings, not the encoder that makes them), from which training cannot continue exactly
TRAINABLE_WEIGHTS = "trainable_state.safetensors"


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What `save_pretrained` writes of a PeftModel: the adapters' weights and `modules_to_save`."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def check_trainable_parameters_saved(model: torch.nn.Module) -> None:
    """Raise `ConfigError` when a parameter is trained but would not be saved: peft writes the adapters and
    `modules_to_save` only, so a head (or any layer) made trainable by hand would be lost at every save and the
    reloaded model would score differently from the trained one (peft's known trap)."""
    saved = {_plain_name(key) for key in adapter_state(model)}
    adapters = set(getattr(model, "peft_config", {}) or {"default"})
    lost = [name for name, parameter in model.named_parameters()
            if parameter.requires_grad and _plain_name(name) not in saved and not _peft_owned(name, adapters)]
    if lost:
        raise ConfigError(f"{len(lost)} trainable parameter(s) of the PeftModel are not part of its adapter "
                          f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}): peft's save_pretrained would "
                          f"leave them out, so checkpoints and the saved model would lose what they learn. Name their "
                          f"modules in the LoraConfig's modules_to_save=[...] (a new classification head: set "
                          f"task_type, e.g. 'SEQ_CLS', and peft adds it), or freeze them")


def _peft_owned(name: str, adapters: set[str]) -> bool:
    """Whether a parameter belongs to a peft method's own modules (LoRA's, DoRA's magnitudes, a prompt encoder,
    trainable tokens...: their names carry the adapter's name), which peft saves in its own form; what is left is a
    layer of the base model made trainable by hand."""
    parts = name.split(".")
    return any(adapter in parts for adapter in adapters) or parts[0] == "prompt_encoder"


def _plain_name(name: str) -> str:
    """A parameter name as peft's state dict spells it (no adapter name, no `modules_to_save` wrapper)."""
    for part in (".default", ".modules_to_save", ".original_module"):
        name = name.replace(part, "")
    return name


def load_adapter(model: torch.nn.Module, folder: str | Path) -> None:
    """Load a checkpoint's or saved model's adapter weights into the PeftModel `model` (in place), exactly.

    Raises:
        ResumeError: `folder` holds no adapter, or one that does not fit the model's adapters.
    """
    import safetensors.torch
    from peft import set_peft_model_state_dict

    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.exists():
        raise ResumeError(f"No {ADAPTER_WEIGHTS} in {folder}: the model is a PeftModel, and this folder holds no "
                          f"adapter (was it saved from a model without peft?)")
    weights = safetensors.torch.load_file(str(path))
    expected = set(adapter_state(model))
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ResumeError(f"{path} does not fit this model's adapter: missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]} (another LoraConfig: other target_modules, r or modules_to_save?)")
    try:
        set_peft_model_state_dict(model, weights)
    except RuntimeError as error:  # shapes differ: another rank r
        raise ResumeError(f"{path} does not fit this model's adapter (another rank r?): "
                          f"{str(error).splitlines()[-1].strip()}") from error


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter of the PeftModel by name (on the CPU, contiguous): what exact resume needs."""
    return {name: parameter.detach().cpu().contiguous() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


def load_trainable_state(model: torch.nn.Module, folder: str | Path) -> None:
    """Load a checkpoint's `TRAINABLE_WEIGHTS` (when it has one) into the PeftModel's parameters, exactly.

    Raises:
        ResumeError: its tensors are not the model's trainable parameters (names or shapes differ).
    """
    import safetensors.torch

    path = Path(folder) / TRAINABLE_WEIGHTS
    if not path.exists():
        return
    saved = safetensors.torch.load_file(str(path))
    parameters = dict(model.named_parameters())
    trainable = {name for name, parameter in parameters.items() if parameter.requires_grad}
    wrong = sorted(name for name in saved if name not in parameters or parameters[name].shape != saved[name].shape)
    if wrong or saved.keys() != trainable:
        raise ResumeError(f"{path} does not fit this model's trainable parameters (first difference: "
                          f"{(wrong or sorted(saved.keys() ^ trainable))[:1]}): was the adapter configured "
                          f"differently?")
    with torch.no_grad():
        for name, tensor in saved.items():
            parameters[name].copy_(tensor)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the PeftModel's base model with the adapters merged into its weights (a plain transformers model
    that `from_pretrained` and `pipeline` load); `model` itself is left as it is (still training-ready)."""
    return copy.deepcopy(model).merge_and_unload()
