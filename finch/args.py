"""`TrainingArguments`: HuggingFace's field names and defaults, legacy aliases, validation that lists every problem.

Differences from transformers 5, each on purpose:
- `bf16` / `fp16` default to `None` ("unset"): finch then picks bf16 where the hardware runs it fast.
- `train_sampling_strategy` defaults to "group_by_length" (same examples per epoch, less padding).
- Old names that transformers 5 rejects (`evaluation_strategy`, `group_by_length`, `warmup_ratio`, `logging_dir`,
  `overwrite_output_dir`) are accepted with one warning each.
- Arguments are saved as JSON (`training_args.json`), never pickled.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES = ("no", "steps", "epoch")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts")
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "sgd")
SAMPLING = ("group_by_length", "random", "sequential")
REPORTERS = ("none", "all", "tensorboard", "jsonl")


@dataclass
class TrainingArguments:
    """Everything that configures a run, with HuggingFace's names and defaults.

    Raises:
        TypeError: an unknown argument name (the message suggests the closest valid ones).
        ValueError: invalid values or combinations, all listed in one message.
    """

    output_dir: str | None = None
    # batches and duration
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1
    # optimizer and schedule
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict | None = None
    warmup_steps: float = 0  # an int counts steps; a float in (0, 1) is a fraction of all steps
    label_smoothing_factor: float = 0.0
    class_weights: str | list[float] | None = None  # "balanced" (from label counts) or one weight per class
    # evaluation, saving, logging
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    save_only_model: bool = False
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    report_to: str | list[str] = "none"
    tensorboard_dir: str | None = None  # default: <output_dir>/runs
    run_name: str | None = None
    disable_tqdm: bool | None = None
    # reproducibility, precision, hardware
    seed: int = 42
    data_seed: int | None = None
    bf16: bool | None = None  # None: bf16 autocast where the hardware has fast bf16
    fp16: bool | None = None
    use_cpu: bool = False
    torch_compile: bool = False  # torch.compile the model; batches are padded to a few bucketed lengths
    pad_to_multiple_of: int | None = None  # None: 8 on CUDA and under bf16 on the CPU, 64 compiled; 1: exact
    fast_dropout: bool | None = None  # None: on when training on the CPU (torch's CPU dropout is slow); False: off
    max_nonfinite_steps: int = 5  # consecutive steps with a NaN/Inf loss or gradient norm before training stops
    # data
    train_sampling_strategy: str = "group_by_length"
    remove_unused_columns: bool = True
    label_names: list[str] | None = None
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = True
    # hub
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.output_dir = str(self.output_dir)
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = list(self.report_to or ["none"])
        if self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        self.validate()

    def validate(self) -> None:
        """Check every field; raise one ValueError that lists all the problems found."""
        problems = _problems(self)
        if problems:
            listing = "\n".join(f"  - {p}" for p in problems)
            raise ValueError(f"{len(problems)} problem(s) in TrainingArguments:\n{listing}")

    # ---- derived values -------------------------------------------------------------------------------------------
    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    @property
    def sampler_seed(self) -> int:
        """Seed of the data order: `data_seed` if set, else `seed`."""
        return self.seed if self.data_seed is None else self.data_seed

    def resolve_steps(self, value: float, total_steps: int) -> int:
        """An `*_steps` value as a step count: floats in (0, 1) are fractions of `total_steps`."""
        if 0 < value < 1:
            return max(1, math.ceil(value * total_steps))
        return int(value)

    # ---- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["hub_token"] = "<redacted>" if self.hub_token else None
        return values

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json_string() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainingArguments:
        values = json.loads(Path(path).read_text())
        values["hub_token"] = None
        return cls(**values)


def _problems(args: TrainingArguments) -> list[str]:
    """Every invalid value or combination, as messages that name the fix."""
    problems: list[str] = []

    def choice(name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(args, name)
        if value not in allowed:
            problems.append(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")

    for name in ("eval_strategy", "save_strategy", "logging_strategy"):
        choice(name, STRATEGIES)
    choice("lr_scheduler_type", SCHEDULERS)
    choice("optim", OPTIMIZERS)
    choice("train_sampling_strategy", SAMPLING)
    for reporter in args.report_to:
        if reporter not in REPORTERS:
            problems.append(f"report_to={reporter!r} is not one of {', '.join(map(repr, REPORTERS))}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if not isinstance(getattr(args, name), int) or getattr(args, name) < 1:
            problems.append(f"{name}={getattr(args, name)!r} must be an integer >= 1")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        problems.append(f"num_train_epochs={args.num_train_epochs} must be > 0 (or set max_steps > 0)")
    for name in ("learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm", "warmup_steps"):
        if getattr(args, name) < 0:
            problems.append(f"{name}={getattr(args, name)} must be >= 0")
    if isinstance(args.warmup_steps, float) and args.warmup_steps >= 1 and not args.warmup_steps.is_integer():
        problems.append(f"warmup_steps={args.warmup_steps} must be a step count or a fraction in [0, 1)")
    if args.pad_to_multiple_of is not None and args.pad_to_multiple_of < 1:
        problems.append(f"pad_to_multiple_of={args.pad_to_multiple_of} must be >= 1 (or None for the default)")
    weights = args.class_weights
    if isinstance(weights, str) and weights != "balanced":
        problems.append(f"class_weights={weights!r} must be 'balanced' or a list of positive numbers, one per class")
    elif isinstance(weights, (list, tuple)) and not all(isinstance(w, (int, float)) and w > 0 for w in weights):
        problems.append(f"class_weights={weights!r}: every weight must be a positive number")
    if args.max_nonfinite_steps < 1:
        problems.append(f"max_nonfinite_steps={args.max_nonfinite_steps} must be >= 1")
    if not 0 <= args.label_smoothing_factor < 1:
        problems.append(f"label_smoothing_factor={args.label_smoothing_factor} must be in [0, 1)")
    for name, strategy in (("eval_steps", "eval_strategy"), ("save_steps", "save_strategy"),
                           ("logging_steps", "logging_strategy")):
        if getattr(args, strategy) == "steps" and not (getattr(args, name) or 0) > 0:
            problems.append(f"{strategy}='steps' needs {name} > 0; set {name} or use {strategy}='epoch'")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        problems.append(f"save_total_limit={args.save_total_limit} must be >= 1 (or None to keep every checkpoint)")
    if args.dataloader_num_workers < 0:
        problems.append(f"dataloader_num_workers={args.dataloader_num_workers} must be >= 0")
    if args.fp16 and args.bf16:
        problems.append("fp16=True and bf16=True together: choose one precision")
    if args.load_best_model_at_end:
        if args.eval_strategy == "no":
            problems.append("load_best_model_at_end=True needs evaluation: set eval_strategy='epoch' or 'steps'")
        elif args.save_strategy != args.eval_strategy:
            problems.append(
                f"load_best_model_at_end=True needs save_strategy == eval_strategy, got save_strategy="
                f"{args.save_strategy!r} and eval_strategy={args.eval_strategy!r}; set both to the same value")
        elif args.eval_strategy == "steps" and args.eval_steps and args.save_steps % args.eval_steps != 0:
            problems.append(
                f"load_best_model_at_end=True needs save_steps ({args.save_steps}) to be a multiple of eval_steps "
                f"({args.eval_steps}), so every checkpoint has an evaluation; change one of them")
    return problems


# ---- legacy names and unknown names -------------------------------------------------------------------------------
def _legacy_group_by_length(value: bool) -> dict[str, Any]:
    return {"train_sampling_strategy": "group_by_length" if value else "random"}


LEGACY: dict[str, tuple[str, Any]] = {
    # old name: (what to say, how to translate the value into current fields)
    "evaluation_strategy": ("use eval_strategy", lambda v: {"eval_strategy": v}),
    "group_by_length": ("use train_sampling_strategy='group_by_length' (finch's default)", _legacy_group_by_length),
    "warmup_ratio": ("use warmup_steps=<fraction>, which takes a ratio when below 1", lambda v: {"warmup_steps": v}),
    "logging_dir": ("use tensorboard_dir", lambda v: {"tensorboard_dir": v}),
    "overwrite_output_dir": ("it has no effect: finch never deletes an output folder", lambda v: {}),
    "no_cuda": ("use use_cpu", lambda v: {"use_cpu": v}),
}


def translate_legacy(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map removed HF argument names onto current fields, one FutureWarning each; reject unknown names."""
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    translated: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in known:
            translated[name] = value
        elif name in LEGACY:
            advice, convert = LEGACY[name]
            warnings.warn(f"TrainingArguments: '{name}' was removed from transformers; {advice}.",
                          FutureWarning, stacklevel=3)
            for new_name, new_value in convert(value).items():
                translated.setdefault(new_name, new_value)
        else:
            close = difflib.get_close_matches(name, sorted(known | set(LEGACY)), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise TypeError(f"TrainingArguments got an unknown argument {name!r}{hint}")
    return translated


_dataclass_init = TrainingArguments.__init__


@functools.wraps(_dataclass_init)
def _init_with_aliases(self: TrainingArguments, *args: Any, **kwargs: Any) -> None:
    _dataclass_init(self, *args, **translate_legacy(kwargs))


TrainingArguments.__init__ = _init_with_aliases  # type: ignore[method-assign]
