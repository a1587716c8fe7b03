"""HuggingFace `TrainingArguments` names that finch has no field for, and what finch does with each.

Tutorials and scripts pass them (`eval_accumulation_steps=8`, `save_safetensors=True`, `log_on_each_node=False`...).
Calling them unknown would break code that finch promises to run, and silently ignoring one that changes what is
trained would be worse. So each name is either accepted, because finch already behaves as the value asks or the
value only concerns HF's machinery (the value is kept as an attribute, readable as in HF), or refused with the reason
and the fix when the value asks for something finch does not do.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from finch.errors import ConfigError

_ANY: Callable[[Any], bool] = lambda value: True
_FALSY: Callable[[Any], bool] = lambda value: not value

# name: (values finch honours, why / what to do otherwise)
# (do_train, do_eval, do_predict, resume_from_checkpoint, log_level, local_rank... are fields: HfArgumentParser
# builds its flags from the fields only)
HF_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    # what finch always does
    "eval_accumulation_steps": (_ANY, "finch moves evaluation outputs to the CPU after every batch"),
    "eval_do_concat_batches": (lambda value: value is True, "finch always concatenates evaluation batches"),
    "save_safetensors": (lambda value: value is True, "finch saves weights only as safetensors (never pickles)"),
    "average_tokens_across_devices": (_ANY, "finch normalises the loss over every example of the step, all ranks"),
    "logging_nan_inf_filter": (_ANY, "finch skips NaN/Inf steps (max_nonfinite_steps) and logs their losses"),
    "skip_memory_metrics": (_ANY, "finch reports no memory metrics"),
    "include_num_input_tokens_seen": (lambda value: not value or value == "no",  # "no": HF's default
                                      "finch logs tokens per second, not a running token count"),
    "prediction_loss_only": (_ANY, "evaluate() and predict() gather the loss alone when it is True, as in HF"),
    "use_cache": (_ANY, "the Trainer sets the model config's use_cache to this value (False by default), as HF"),
    "log_on_each_node": (_ANY, "only rank 0 logs in finch"),
    "dataloader_persistent_workers": (_ANY, "a data-loading detail with no effect on what is trained"),
    "dataloader_prefetch_factor": (_ANY, "a data-loading detail with no effect on what is trained"),
    "restore_callback_states_from_checkpoint": (_ANY, "finch restores its callbacks' state on resume"),
    "use_mps_device": (_FALSY, "finch trains on CUDA or the CPU"),
    "disable_tqdm_on_each_node": (_ANY, "only rank 0 shows progress in finch"),
    # what finch does not do: accepted only when off
    "auto_find_batch_size": (_FALSY, "set per_device_train_batch_size yourself"),
    "deepspeed": (_FALSY, "finch scales out with torchrun and DDP (see docs/distributed.md)"),
    "neftune_noise_alpha": (_FALSY, "finch does not add NEFTune noise"),
    "use_liger_kernel": (_FALSY, "finch does not use Liger kernels"),
    "eval_delay": (_FALSY, "finch evaluates from the first eval step on"),
    "full_determinism": (_FALSY, "finch's runs repeat for a given seed (dropout and data order are seeded)"),
    "batch_eval_metrics": (_FALSY, "finch calls compute_metrics once, with every prediction"),
    "torch_compile_backend": (_FALSY, "finch compiles with torch.compile's default backend (torch_compile=True)"),
    "torch_compile_mode": (_FALSY, "finch compiles with torch.compile's default mode (torch_compile=True)"),
    "optim_args": (_FALSY, "finch's optimizers take learning_rate, adam_beta1/2, adam_epsilon, weight_decay"),
    "fp16_full_eval": (_FALSY, "finch evaluates in the training precision (fp16/bf16)"),
    "bf16_full_eval": (_FALSY, "finch evaluates in the training precision (fp16/bf16)"),
}


def accept_hf_only(name: str, value: Any) -> bool:
    """Whether `name` is an HF argument finch knows of and `value` is one it honours.

    Raises:
        ConfigError: the value asks for something finch does not do (the message says what to do instead).
    """
    if name not in HF_ONLY:
        return False
    honoured, why = HF_ONLY[name]
    if not honoured(value):
        raise ConfigError(f"TrainingArguments({name}={value!r}): finch does not support this HuggingFace option "
                          f"({why}); remove it")
    return True


# HF's log level names (`log_level`, `log_level_replica`) as `logging` levels; None: "passive", leave them as they are
LOG_LEVELS: dict[str, int | None] = {"passive": None, "detail": logging.DEBUG, "debug": logging.DEBUG,
                                     "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
                                     "critical": logging.CRITICAL}


class HFArgumentsProperties:
    """What HF's `TrainingArguments` offers beyond its fields and example scripts read: the device, `n_gpu`,
    `parallel_mode`, `should_save` / `should_log`, `get_process_log_level()`, `main_process_first()`,
    `to_sanitized_dict()`. Mixed into finch's dataclass, which provides `use_cpu`, `save_on_each_node`, `log_level`,
    `log_level_replica`, `world_size`, `process_index`, `local_process_index` and `to_dict`."""

    # HF_ONLY names that HF code reads, as finch always behaves when they are not passed (a passed value is kept)
    eval_do_concat_batches = True
    prediction_loss_only = False
    use_cache = False

    @property
    def device(self) -> Any:
        """The device `Trainer` trains on: this process's GPU under torchrun, else
        `finch.distributed.runtime.choose_device`'s."""
        import torch

        from finch.distributed.runtime import choose_device

        device = choose_device(self.use_cpu)  # type: ignore[attr-defined]
        if device.type == "cuda" and self.world_size > 1:  # type: ignore[attr-defined]
            # what DistributedRuntime.start uses, and scripts read before a Trainer has started it
            return torch.device("cuda", self.local_process_index)  # type: ignore[attr-defined]
        return device

    @property
    def n_gpu(self) -> int:
        """GPUs this process uses: 1 on CUDA (finch runs one GPU per process), else 0."""
        return 1 if self.device.type == "cuda" else 0

    @property
    def parallel_mode(self) -> Any:
        """HF's `ParallelMode`: DISTRIBUTED under torchrun with several processes, else NOT_PARALLEL (finch never
        uses `DataParallel`, HF's NOT_DISTRIBUTED)."""
        from transformers.training_args import ParallelMode

        several = self.world_size > 1  # type: ignore[attr-defined]
        return ParallelMode.DISTRIBUTED if several else ParallelMode.NOT_PARALLEL

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints: rank 0, or each machine's first with `save_on_each_node`."""
        if self.save_on_each_node:  # type: ignore[attr-defined]
            return self.local_process_index == 0  # type: ignore[attr-defined]
        return self.process_index == 0  # type: ignore[attr-defined]

    @property
    def should_log(self) -> bool:
        """Whether this process logs: rank 0 only, as in finch."""
        return self.process_index == 0  # type: ignore[attr-defined]

    def get_process_log_level(self) -> int:
        """This process's log level (a `logging` int) for a script to apply: `log_level` on the process that logs,
        `log_level_replica` on the others; "passive" gives transformers' current verbosity, as in HF."""
        level = LOG_LEVELS[self.log_level if self.should_log else self.log_level_replica]  # type: ignore[attr-defined]
        if level is None:
            from transformers.utils import logging as transformers_logging

            return transformers_logging.get_verbosity()
        return level

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Run the block on rank 0 (of the machine with `local`) first, then on the others (e.g. `dataset.map`
        caching once); without an initialised `torch.distributed` process group, just run it."""
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        first = (self.local_process_index if local else self.process_index) == 0  # type: ignore[attr-defined]
        if distributed and not first:
            dist.barrier()  # wait while the first process does `desc`
        yield
        if distributed and first:
            dist.barrier()

    @property
    def place_model_on_device(self) -> bool:
        """HF's: whether the Trainer moves the model to `device` itself; finch's always does."""
        return True

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """`warmup_steps` as a step count for a run of `num_training_steps` (a fraction in (0, 1) is a share)."""
        warmup = self.warmup_steps  # type: ignore[attr-defined]
        return self.resolve_steps(warmup, num_training_steps) if warmup else 0  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        """Only for names not found: an HF argument or method finch lacks is named as such, not as a typo."""
        raise no_such_attribute(self, name, "TrainingArguments")

    def to_sanitized_dict(self) -> dict[str, Any]:
        """The arguments as values TensorBoard's hparams take (bool, int, float, str; the rest as str)."""
        return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                for key, value in self.to_dict().items()}  # type: ignore[attr-defined]


def no_such_attribute(owner: Any, name: str, hf_class: str) -> AttributeError:
    """The error for `name`, not found on finch's `owner`: when `transformers.<hf_class>` has it, the message says
    it is an HF attribute finch does not have (not a typo). Private names are never looked up in transformers."""
    message = f"'{type(owner).__name__}' object has no attribute {name!r}"
    if not name.startswith("_"):
        import transformers

        if hasattr(getattr(transformers, hf_class), name):
            message += (f": transformers.{hf_class}.{name} is not part of finch's {hf_class} "
                        f"(docs/from_hf_tutorial.md lists what finch does instead)")
    return AttributeError(message)


# HF `Trainer` methods that subclasses override to customise training, which finch's loop does not call: an override
# would be ignored without a word, so it is refused with what finch offers instead.
HF_OVERRIDES = {
    "training_step": "override compute_loss (finch's loop calls it for every micro-batch), or pass compute_loss_func",
    "prediction_step": "override compute_loss, or pass preprocess_logits_for_metrics",
    "create_optimizer": "pass optimizers=(optimizer, None), or optim=/learning_rate=/weight_decay= arguments",
    "create_scheduler": "pass optimizers=(optimizer, scheduler), or lr_scheduler_type= and lr_scheduler_kwargs=",
    "create_optimizer_and_scheduler": "pass optimizers=(optimizer, scheduler)",
    "get_train_dataloader": "pass data_collator=, and train_sampling_strategy= for the order",
    "get_eval_dataloader": "pass data_collator=",
    "get_test_dataloader": "pass data_collator=",
    "_inner_training_loop": "use callbacks (TrainerCallback) to act at each step",
}


def check_overrides(trainer_class: type, base: type) -> None:
    """Raise `ConfigError` if `trainer_class` (a subclass of finch's `base` Trainer) defines an HF override point
    that finch never calls."""
    ignored = sorted(name for name in HF_OVERRIDES
                     if any(name in vars(klass) for klass in trainer_class.__mro__ if issubclass(klass, base)))
    if ignored:
        raise ConfigError(f"{trainer_class.__name__} overrides {', '.join(ignored)}, which HuggingFace's Trainer "
                          f"calls but finch's does not, so the override would be ignored. Instead: "
                          f"{'; '.join(f'{name}: {HF_OVERRIDES[name]}' for name in ignored)}")


# HF fields that HF's own __post_init__ fills in or that only drive HF's machinery: never carried over
_HF_MACHINERY = {"accelerator_config", "debug", "logging_dir", "do_eval"}


def _blank(value: Any) -> bool:
    """HF's 'not set' spellings, before and after its __post_init__ (False/None, [] / '' / 'none' / 'no')."""
    return value is None or value is False or value in ("", "none", "no") or (
        isinstance(value, (list, tuple, dict)) and not value)


def settings_of_hf_arguments(hf_args: Any) -> dict[str, Any]:
    """The fields of a `transformers.TrainingArguments` that differ from HF's defaults, as plain values (enums to
    their strings): what the user set, to build finch's `TrainingArguments` from. HF's unset booleans (`bf16=False`)
    stay unset, so finch's defaults (its precision choice) apply as they would to finch's own arguments."""
    import dataclasses
    import enum

    settings = {}
    for item in dataclasses.fields(hf_args):
        if not item.init or item.name in _HF_MACHINERY:
            continue
        value = getattr(hf_args, item.name)
        value = value.value if isinstance(value, enum.Enum) else value
        if isinstance(value, list):
            value = [v.value if isinstance(v, enum.Enum) else v for v in value]
        default = item.default if item.default is not dataclasses.MISSING else (
            item.default_factory() if item.default_factory is not dataclasses.MISSING else None)
        if value != default and not (_blank(value) and _blank(default)):
            settings[item.name] = value
    return settings


def as_finch_arguments(args: Any, finch_class: type) -> Any:
    """`args` as finch's `TrainingArguments` (`finch_class`): HF's (the course builds them in another cell than the
    `Trainer`) are converted from the settings that differ from HF's defaults, with a warning; None gives the
    defaults; anything else is refused."""
    if args is None:
        return finch_class()
    if any(cls.__module__ == "finch.args" for cls in type(args).__mro__):  # finch's own (a subclass's too)
        return args
    import transformers

    if not isinstance(args, transformers.TrainingArguments):
        raise ConfigError(f"Trainer(args=...) takes finch's TrainingArguments, not {type(args).__name__}: "
                          f"`from finch import TrainingArguments`")
    settings = settings_of_hf_arguments(args)
    try:
        converted = finch_class(**settings)
    except (ConfigError, TypeError) as error:
        raise type(error)(f"Trainer was given transformers.TrainingArguments, which finch converts to its own; "
                          f"{error}. Build them with `from finch import TrainingArguments`") from None
    warnings.warn(f"Trainer was given transformers.TrainingArguments: converted to finch's TrainingArguments from "
                  f"the settings that differ from HF's defaults ({', '.join(sorted(settings)) or 'none'}); "
                  f"`from finch import TrainingArguments` to skip this", UserWarning, stacklevel=3)
    return converted
