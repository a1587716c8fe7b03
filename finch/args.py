"""`TrainingArguments`: HuggingFace's field names and defaults, legacy aliases, validation that lists every problem.

Differences from transformers 5, each on purpose:
- `bf16` / `fp16` default to `None` ("unset"): finch then picks bf16 where the hardware runs it fast.
- `train_sampling_strategy` defaults to "group_by_length" (same examples per epoch, less padding).
- Old names that transformers 5 rejects (`evaluation_strategy`, `group_by_length`, `warmup_ratio`, `logging_dir`,
  `no_cuda`, `include_inputs_for_metrics`) are accepted with one warning each; one that disagrees with its new name
  is an error.
- `overwrite_output_dir` (gone from transformers 5) is a field again: when set, a fresh run deletes other runs'
  checkpoints in `output_dir`; unset, `Trainer.train()` moves them unchanged to `previous-runs/` and `finch train`
  refuses the folder.
- `local_rank` is torchrun's `LOCAL_RANK` (-1 without torchrun) whatever was given; transformers keeps the value
  given. Like the other arguments HF's example scripts read and its Trainer does not (`do_train`, `do_eval`,
  `do_predict`, `resume_from_checkpoint`, `log_level`), it is a field, so `HfArgumentParser` builds its flag.
- HF names without a finch field (`eval_accumulation_steps`, `gradient_checkpointing`...) are accepted as keyword
  arguments where finch honours the value, else refused with the reason (`finch.hf.names`).
- An empty `output_dir` is refused (an unset shell variable would write into the current folder).
- Every value is checked against its field's type (strings that spell one are converted; NaN is refused).
- Arguments are saved as JSON (`training_args.json`), never pickled.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finch.distributed.fsdp import read_fsdp
from finch.distributed.runtime import Launch
from finch.errors import ConfigError, UnknownArgumentError
from finch.hf.names import HF_ONLY, LOG_LEVELS, HFArgumentsProperties, accept_hf_only

STRATEGIES = ("no", "steps", "epoch")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts",
              "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
# HF names finch does not implement, with the nearest it has (a plain "not one of" would read as a typo)
UNSUPPORTED_CHOICES = {
    "reduce_lr_on_plateau": ("finch's schedules are functions of the step, and this one follows the evaluation "
                             "metric; use 'linear' or 'cosine' (with early stopping for a plateau)"),
    "greedy": "use 'linear' or 'cosine'",
    "adamw_hf": "transformers removed it; use 'adamw_torch_fused' (the default) or 'adamw_torch'",
    "adafactor": "use 'adamw_torch_fused' (the default), 'adamw_torch' or 'sgd'",
}
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "sgd")
SAMPLING = ("group_by_length", "random", "sequential")
REPORTERS = ("none", "all", "mlflow", "wandb", "tensorboard", "jsonl")  # "all": every installed tracker
BACKENDS = ("nccl", "gloo", "mpi", "xccl")
HUB_STRATEGIES = ("every_save", "end", "checkpoint", "all_checkpoints")  # HF's names


SCRIPTS_ONLY = "HF example scripts"  # fields only scripts read: no `finch train` flag or option for them
PYTHON_ONLY = frozenset({"merge_adapters"})  # fields for models the CLI never builds (PEFT): no `finch train` flag
_GROUP_ORDER: list[str] = []  # each field's group, in definition order (see FIELD_GROUPS below the class)


def _arg(default: Any, group: str, help: str, **options: Any) -> Any:
    """A field with its `--help` text and group (read by the CLI, which prints one flag per field). The metadata
    holds only `help` (and argparse's `nargs`/`const`, see `_flag`): HF's `HfArgumentParser` passes every metadata
    key on to argparse, and example scripts build one over `TrainingArguments`."""
    _GROUP_ORDER.append(group)
    return field(default=default, metadata={"help": help, **options.pop("argparse", {})}, **options)


def _flag(group: str, help: str) -> Any:
    """A `bool | None` field, unset by default. HF's example scripts pass `--fp16` alone (HF's fp16 is a plain bool),
    but `HfArgumentParser` makes the flag of a `bool | None` field take a value: argparse's nargs="?" with
    const=True lets it stand alone, as for a bool (`--fp16 false` still works; unset stays None)."""
    return _arg(None, group, help, argparse={"nargs": "?", "const": True})


def _with_legacy_names(cls: type) -> type:
    """Class decorator over the dataclass: its `__init__` also takes the names transformers removed (one
    `FutureWarning` each, see `translate_legacy`) and HF's names finch keeps only as attributes (`HF_ONLY`)."""
    dataclass_init = cls.__init__

    @functools.wraps(dataclass_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        dataclass_init(self, *args, **translate_legacy(kwargs, type(self)))
        for name in HF_ONLY.keys() & kwargs.keys():  # readable as in HF scripts; not saved
            object.__setattr__(self, name, kwargs[name])

    cls.__init__ = __init__
    return cls


@_with_legacy_names
@dataclass
class TrainingArguments(HFArgumentsProperties):
    """Everything that configures a run, with HuggingFace's names and defaults.

    Raises:
        TypeError: an unknown argument name (the message suggests the closest valid ones).
        ValueError: invalid values or combinations, all listed in one message.
    """

    output_dir: str | None = _arg(None, "output", "folder for checkpoints, logs and the model")
    overwrite_output_dir: bool = _arg(False, "output", "start over in an output_dir that holds another run's "
                                      "checkpoints (they are deleted); otherwise finch refuses")
    # batches and duration
    per_device_train_batch_size: int = _arg(8, "batches and duration", "training examples per batch (per device)")
    per_device_eval_batch_size: int = _arg(8, "batches and duration", "evaluation examples per batch (per device)")
    gradient_accumulation_steps: int = _arg(1, "batches and duration", "batches per optimizer step")
    num_train_epochs: float = _arg(3.0, "batches and duration", "passes over the training data (may be fractional)")
    max_steps: int = _arg(-1, "batches and duration", "optimizer steps to run; overrides num_train_epochs when > 0")
    # optimizer and schedule
    learning_rate: float = _arg(5e-5, "optimizer and schedule", "peak learning rate of AdamW")
    weight_decay: float = _arg(0.0, "optimizer and schedule", "AdamW weight decay (never on biases and LayerNorm)")
    adam_beta1: float = _arg(0.9, "optimizer and schedule", "AdamW beta1")
    adam_beta2: float = _arg(0.999, "optimizer and schedule", "AdamW beta2")
    adam_epsilon: float = _arg(1e-8, "optimizer and schedule", "AdamW epsilon")
    max_grad_norm: float = _arg(1.0, "optimizer and schedule", "clip the gradient norm to this (0: no clipping)")
    optim: str = _arg("adamw_torch_fused", "optimizer and schedule", "optimizer: " + ", ".join(OPTIMIZERS))
    lr_scheduler_type: str = _arg("linear", "optimizer and schedule", "schedule: " + ", ".join(SCHEDULERS))
    lr_scheduler_kwargs: dict | None = _arg(None, "optimizer and schedule",  # noqa: RUF009 (None, immutable)
                                            "extra schedule arguments as a JSON object, e.g. {\"num_cycles\": 2}")
    warmup_steps: float = _arg(0, "optimizer and schedule",
                               "warm-up: a step count, or a fraction of all steps when below 1")
    label_smoothing_factor: float = _arg(0.0, "optimizer and schedule", "label smoothing in [0, 1)")
    class_weights: str | None | list[float] = _arg(None, "optimizer and schedule",  # noqa: RUF009 (None, immutable)
                                                   "weighted cross-entropy: 'balanced' or one weight per class")
    # evaluation, saving, logging
    eval_strategy: str = _arg("no", "evaluation, saving, logging", "when to evaluate: no, steps, epoch")
    eval_steps: float | None = _arg(None, "evaluation, saving, logging",
                                    "evaluate every N steps (a fraction: of all steps); default logging_steps")
    eval_on_start: bool = _arg(False, "evaluation, saving, logging", "evaluate once before training")
    save_strategy: str = _arg("steps", "evaluation, saving, logging",
                              "when to save a checkpoint: no, steps, epoch, best (a new best metric)")
    save_steps: float = _arg(500, "evaluation, saving, logging", "save every N steps (a fraction: of all steps)")
    save_total_limit: int | None = _arg(None, "evaluation, saving, logging",
                                        "checkpoints kept (the best is always kept too); unset: all")
    save_only_model: bool = _arg(False, "evaluation, saving, logging",
                                 "checkpoints without optimizer/scheduler/RNG state (cannot be resumed exactly)")
    merge_adapters: bool = _arg(False, "evaluation, saving, logging",
                                "PEFT (LoRA) models: save_model writes the base model with the adapters merged in "
                                "(for from_pretrained and pipeline) instead of the adapter folder")
    logging_strategy: str = _arg("steps", "evaluation, saving, logging", "when to log: no, steps, epoch")
    logging_steps: float = _arg(500, "evaluation, saving, logging", "log every N steps (a fraction: of all steps)")
    logging_first_step: bool = _arg(False, "evaluation, saving, logging", "log the first step too")
    load_best_model_at_end: bool = _arg(False, "evaluation, saving, logging",
                                        "end with the weights of the best evaluation (needs save = eval strategy)")
    metric_for_best_model: str | None = _arg(None, "evaluation, saving, logging",
                                             "metric that picks the best model (default with load_best: loss)")
    greater_is_better: bool | None = _flag("evaluation, saving, logging",
                                          "whether a larger metric is better (default: unless it ends in 'loss')")
    report_to: str | None | list[str] = _arg("none", "evaluation, saving, logging",  # noqa: RUF009 (None, immutable)
                                      "trackers, one or several: " + ", ".join(REPORTERS) +
                                      " (log.jsonl is always written)")
    tensorboard_dir: str | None = _arg(None, "evaluation, saving, logging", "TensorBoard folder; default OUTPUT/runs")
    run_name: str | None = _arg(None, "evaluation, saving, logging", "a name for the run in trackers")
    disable_tqdm: bool | None = _flag("evaluation, saving, logging", "log lines instead of a progress bar")
    # reproducibility, precision, hardware
    seed: int = _arg(42, "reproducibility, precision, hardware", "seed of the weights' initialisation and dropout")
    data_seed: int | None = _arg(None, "reproducibility, precision, hardware", "seed of the data order; default seed")
    bf16: bool | None = _flag("reproducibility, precision, hardware",
                             "bf16 autocast; unset: on where it measures faster than fp32")
    fp16: bool | None = _flag("reproducibility, precision, hardware",
                             "fp16 autocast with loss scaling (CUDA; elsewhere bf16 or fp32, with a warning)")
    tf32: bool | None = _flag("reproducibility, precision, hardware",
                             "TF32 matmuls on Ampere+ GPUs (fp32 weights, tensor cores); unset: torch's setting")
    use_cpu: bool = _arg(False, "reproducibility, precision, hardware", "train on the CPU even when CUDA is there")
    torch_compile: bool = _arg(False, "reproducibility, precision, hardware",
                               "torch.compile the model (batches padded to a few bucketed lengths)")
    pad_to_multiple_of: int | None = _arg(None, "reproducibility, precision, hardware",
                                          "round batch lengths up; unset: 8 on CUDA and under CPU bf16; 1: exact")
    shape_buckets: bool | None = _flag("reproducibility, precision, hardware",
                                      "pad batches to a few lengths chosen from the data's lengths (compiled steps "
                                      "see a few shapes, not one per length); unset: on with torch_compile")
    background_save: bool | None = _flag("reproducibility, precision, hardware",
                                        "checkpoints copied to host memory, then written in a background thread while "
                                        "training goes on (False: training waits for the disk); unset: on for one "
                                        "process, off under torchrun (a rank that dies takes the others, and a write "
                                        "in flight, with it)")
    cuda_graphs: bool | None = _flag("reproducibility, precision, hardware",
                                    "replay the compiled step as CUDA graphs, one per shape bucket; unset: on where "
                                    "every check passes (CUDA, torch_compile, buckets; the run header says why not)")
    fast_dropout: bool | None = _flag("reproducibility, precision, hardware",
                                     "finch's cheaper CPU dropout; unset: on when training on the CPU")
    max_nonfinite_steps: int = _arg(5, "reproducibility, precision, hardware",
                                    "NaN/Inf steps in a row (each skipped) before training stops")
    activation_checkpointing: bool = _arg(False, "reproducibility, precision, hardware", "recompute activations in "
                                          "the backward pass (gradient checkpointing): less memory, more time")
    activation_checkpointing_kwargs: dict | None = _arg(  # noqa: RUF009 (None, immutable)
        None, "reproducibility, precision, hardware", "activation_checkpointing_enable's arguments as a JSON object "
        "(every_n_layers, offload, use_reentrant...)")
    # data
    train_sampling_strategy: str = _arg("group_by_length", "data", "batch order: " + ", ".join(SAMPLING))
    remove_unused_columns: bool = _arg(True, "data", "drop dataset columns the model's forward does not take")
    label_names: list[str] | None = _arg(None, "data", "batch keys holding labels; default labels")  # noqa: RUF009
    include_for_metrics: list[str] | None = _arg(  # noqa: RUF009 (None, immutable)
        None, "evaluation, saving, logging", "what compute_metrics' EvalPrediction also gets: inputs (input ids, "
        "padded with -100), loss (each example's batch mean loss)")
    dataloader_num_workers: int = _arg(0, "data", "background processes that collate batches")
    dataloader_pin_memory: bool = _arg(True, "data", "pinned host memory for batches (CUDA only)")
    dataloader_drop_last: bool = _arg(False, "data", "drop each epoch's last global batch when it is incomplete")
    # distributed (torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; see docs/distributed.md)
    ddp_backend: str | None = _arg(None, "distributed", "torch.distributed backend: " + ", ".join(BACKENDS)
                                   + "; unset: nccl on CUDA, gloo on the CPU")
    ddp_timeout: int = _arg(1800, "distributed", "seconds a collective may wait for the other ranks before failing")
    ddp_find_unused_parameters: bool | None = _flag("distributed",
                                                   "DDP's find_unused_parameters; unset: on when parameters are frozen")
    ddp_bucket_cap_mb: int | None = _arg(None, "distributed", "DDP gradient bucket size in MB; unset: torch's 25")
    fsdp: str | list[str] = _arg("", "distributed", "FSDP2: 'full_shard' or 'shard_grad_op', optionally with "  # noqa: RUF009
                                 "'auto_wrap' (HF's strings); each transformer layer sharded, then the model")
    fsdp_config: dict | str | None = _arg(None, "distributed", "FSDP settings (a JSON object or file): "  # noqa: RUF009
                                          "transformer_layer_cls_to_wrap, reshard_after_forward, version (2)")
    save_on_each_node: bool = _arg(False, "distributed", "several machines without a shared file system: each "
                                   "machine's first process writes checkpoints and the model to its own disk")
    allow_world_size_change: bool = _arg(False, "distributed",
                                         "resume a checkpoint saved by another number of processes (not exact)")
    # hub
    push_to_hub: bool = _arg(False, "hub", "upload the model to the HuggingFace Hub (needs network and a token); "
                             "see hub_strategy")
    hub_model_id: str | None = _arg(None, "hub", "repository name on the hub (namespace/name); default: output_dir's "
                                    "name")
    hub_strategy: str = _arg("every_save", "hub", "when to upload: " + ", ".join(HUB_STRATEGIES) + " (the checkpoint "
                             "strategies also upload checkpoints, optimizer state included)")
    hub_token: str | None = _arg(None, "hub", "hub token (default: HF_TOKEN or `hf auth login`'s); never written to "
                                 "any file", repr=False)
    hub_private_repo: bool | None = _flag("hub", "create the repository private; unset: the hub's default")
    hub_revision: str | None = _arg(None, "hub", "branch to upload to (created if missing); unset: main")
    # HF's, read by example scripts (run_glue.py...), never by the Trainer; last, so positions stay as they were
    do_train: bool = _arg(False, SCRIPTS_ONLY, "whether the script trains (the Trainer does not read it)")
    do_eval: bool = _arg(False, SCRIPTS_ONLY, "whether the script evaluates; set when eval_strategy is not "
                         "'no' (the Trainer does not read it)")
    do_predict: bool = _arg(False, SCRIPTS_ONLY, "whether the script predicts on its test set (the Trainer "
                            "does not read it)")
    resume_from_checkpoint: str | None = _arg(None, SCRIPTS_ONLY, "checkpoint a script passes to "
                                              "trainer.train(resume_from_checkpoint=...); finch train: --resume")
    log_level: str = _arg("passive", SCRIPTS_ONLY, "log level a script applies with get_process_log_level(): "
                          + ", ".join(LOG_LEVELS) + " (passive: transformers' current one)")
    log_level_replica: str = _arg("warning", SCRIPTS_ONLY, "the same, on the processes that do not log")
    local_rank: int = _arg(-1, SCRIPTS_ONLY, "torchrun's LOCAL_RANK, -1 without torchrun (a value given is "
                           "ignored; torch.distributed.launch passes --local-rank)")

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        if isinstance(self.output_dir, Path):
            self.output_dir = str(self.output_dir)
        if self.fsdp is None:  # HfArgumentParser gives None for an unset list-typed field
            self.fsdp = ""
        # where the launcher placed this process, read once (a started Runtime has it from its process group)
        self._launch = Launch.from_environment()
        self.local_rank = self._launch.local_rank if "LOCAL_RANK" in os.environ else -1  # read-only, as HF's
        type_problems = _convert_types(self)
        if type_problems:  # the checks below compare values, which needs the right types first
            raise ConfigError(_listing(type_problems))
        if self.eval_strategy != "no":  # HF's meaning: scripts then load the evaluation set
            self.do_eval = True
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = list(self.report_to or ["none"])
        if self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if (self.load_best_model_at_end or self.save_strategy == "best") and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        self.validate()

    def validate(self) -> None:
        """Check every field; raise one ValueError that lists all the problems found."""
        problems = _problems(self)
        if problems:
            raise ConfigError(_listing(problems))

    # ---- derived values -------------------------------------------------------------------------------------------
    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    def place(self, launch: Launch) -> None:
        """Where the launcher placed this process (`Launch.from_environment()`, read once when the arguments are
        made): `finch.distributed.connect.runtime_for` gives it again when a run starts."""
        self._launch = launch

    @property
    def world_size(self) -> int:
        """Processes in the run: torchrun's `WORLD_SIZE` (1 without torchrun)."""
        return self._launch.world_size

    @property
    def process_index(self) -> int:
        """This process's rank among all: torchrun's `RANK` (0 without torchrun)."""
        return self._launch.rank

    @property
    def local_process_index(self) -> int:
        """This process's rank on its machine: torchrun's `LOCAL_RANK` (0 without torchrun)."""
        return self._launch.local_rank

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


def _listing(problems: list[str]) -> str:
    return f"{len(problems)} problem(s) in TrainingArguments:\n" + "\n".join(f"  - {p}" for p in problems)


def _convert_types(args: TrainingArguments) -> list[str]:
    """Give every field its declared type, in place; return a message for each value that has none of them.

    Strings that spell a value of the field's type are converted (`num_train_epochs="3"`, `bf16="true"`), as
    the CLI and config files do; NaN and infinity are refused for every number (a NaN learning rate trains
    nothing, silently).
    """
    problems = []
    hints = typing.get_type_hints(TrainingArguments)
    for item in dataclasses.fields(TrainingArguments):
        value = getattr(args, item.name)
        try:
            setattr(args, item.name, convert_value(value, hints[item.name]))
        except (TypeError, ValueError) as error:
            problems.append(f"{item.name}={value!r}: {error}")
    return problems


def convert_value(value: Any, hint: Any) -> Any:
    """`value` as one of the types of `hint` (`float | None`, `list[str]`, `str | list[float]`...).

    Raises:
        TypeError: the value is of none of those types and cannot be read as one (the message says which).
        ValueError: a number that is NaN or infinite.
    """
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise TypeError(f"must be {_type_names(options)}, not None")
    for option in options:
        converted = _as_type(value, option)
        if converted is not _NO:
            if isinstance(converted, float) and not math.isfinite(converted):
                raise ValueError("must be a finite number")
            return converted
    raise TypeError(f"must be {_type_names(options)}")


_NO = object()  # "not convertible to this type"


def _as_type(value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind) or kind
    if origin is type(None):
        return _NO
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        return _NO
    if isinstance(value, bool):  # True is an int to Python, never a number to a user
        return _NO
    if origin in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return _NO
        if not isinstance(number, (int, float)):
            return _NO
        if origin is int:
            return int(number) if math.isfinite(number) and float(number).is_integer() else _NO
        return float(number) if isinstance(value, str) else number
    if origin is str:
        return value if isinstance(value, str) else _NO
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return _NO
        return value if isinstance(value, dict) else _NO
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _NO
        (item_kind,) = typing.get_args(kind) or (Any,)
        items = [value_ if item_kind is Any else _as_type(value_, item_kind) for value_ in value]
        return _NO if any(item is _NO for item in items) else items
    return value


def _type_names(options: tuple) -> str:
    names = {type(None): "None", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping (JSON object)"}
    described = []
    # None said last, whatever the declared order (report_to is `str | None | list[str]`: HfArgumentParser needs None
    # second in a union with a parameterized generic)
    for option in sorted(options, key=lambda option: option is type(None)):
        origin = typing.get_origin(option) or option
        if origin is list:
            (item,) = typing.get_args(option) or (str,)
            described.append(f"a list of {names.get(item, 'values').removeprefix('a ').removeprefix('an ')}s")
        else:
            described.append(names.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(described)


_CHECKPOINT_NAME = "checkpoint-"  # finch's checkpoint folders: checkpoint-<step>, with a manifest.json


def _folder_problems(name: str, folder: str) -> list[str]:
    """What is wrong with `folder` as a folder finch writes into, before anything is trained: an existing file of
    that name (the tracker would fail after the weights load and the run go on without it), or a place inside a
    checkpoint, whose files are never changed after its save (resume checks each against its manifest.json)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return [f"{name}={folder!r} is a file, not a folder; name a folder (it is created if missing)"]
    for part in (path, *path.parents):
        if part.name.startswith(_CHECKPOINT_NAME) and part.name[len(_CHECKPOINT_NAME):].isdigit() \
                and (part / "manifest.json").is_file():
            return [(f"{name}={folder!r} is inside the checkpoint {part}, which is never written to after its "
                     f"save; name a folder outside it, e.g. {part.parent / 'runs'}")]
    return []


def _problems(args: TrainingArguments) -> list[str]:
    """Every invalid value or combination, as messages that name the fix."""
    problems: list[str] = []

    def choice(name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(args, name)
        if value in allowed:
            return
        if value in UNSUPPORTED_CHOICES:
            problems.append(f"{name}={value!r} is HuggingFace's but finch does not implement it: "
                            f"{UNSUPPORTED_CHOICES[value]}")
            return
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}{hint}")

    if args.output_dir is not None and not str(args.output_dir).strip():  # `--output-dir "$OUT"` with OUT unset
        problems.append(f"output_dir={args.output_dir!r} is empty, which would write into the current folder; name "
                        f"a folder (or '.' for the current one)")
    for name in ("eval_strategy", "logging_strategy"):
        choice(name, STRATEGIES)
    choice("save_strategy", (*STRATEGIES, "best"))  # "best": whenever an evaluation sets a new best metric
    if args.save_strategy == "best" and args.eval_strategy == "no":
        problems.append("save_strategy='best' saves when an evaluation sets a new best: set eval_strategy='epoch' or "
                        "'steps'")
    choice("lr_scheduler_type", SCHEDULERS)
    choice("optim", OPTIMIZERS)
    choice("train_sampling_strategy", SAMPLING)
    choice("hub_strategy", HUB_STRATEGIES)
    choice("log_level", tuple(LOG_LEVELS))
    choice("log_level_replica", tuple(LOG_LEVELS))
    for item in args.include_for_metrics or []:
        if item not in ("inputs", "loss"):
            problems.append(f"include_for_metrics={args.include_for_metrics!r}: {item!r} is not one of 'inputs', "
                            f"'loss'")
    for reporter in args.report_to:
        if reporter not in REPORTERS:
            close = difflib.get_close_matches(str(reporter).lower(), REPORTERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"report_to={reporter!r} is not one of {', '.join(map(repr, REPORTERS))}{hint}")
    if args.tensorboard_dir and {"tensorboard", "all"} & set(args.report_to):
        problems += _folder_problems("tensorboard_dir", args.tensorboard_dir)
    if "none" in args.report_to and len(set(args.report_to)) > 1:
        problems.append(f"report_to={args.report_to!r} names 'none' with trackers; remove 'none' or the others")
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
    for name in ("seed", "data_seed"):
        seed = getattr(args, name)
        if seed is not None and not 0 <= seed < 2**32:
            problems.append(f"{name}={seed} must be between 0 and 2**32 - 1")
    problems.extend(_scheduler_kwargs_problems(args.lr_scheduler_type, args.lr_scheduler_kwargs or {}))
    if args.max_nonfinite_steps < 1:
        problems.append(f"max_nonfinite_steps={args.max_nonfinite_steps} must be >= 1")
    if not 0 <= args.label_smoothing_factor < 1:
        problems.append(f"label_smoothing_factor={args.label_smoothing_factor} must be in [0, 1)")
    for name, strategy in (("eval_steps", "eval_strategy"), ("save_steps", "save_strategy"),
                           ("logging_steps", "logging_strategy")):
        if getattr(args, strategy) == "steps" and not (getattr(args, name) or 0) > 0:
            problems.append(f"{strategy}='steps' needs {name} > 0; set {name} or use {strategy}='epoch'")
        every = getattr(args, name)
        if isinstance(every, float) and every >= 1 and not every.is_integer():  # HF: a ratio below 1, else steps
            problems.append(f"{name}={every} must be a step count (an integer) or a fraction of the run below 1")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        problems.append(f"save_total_limit={args.save_total_limit} must be >= 1 (or None to keep every checkpoint)")
    if args.ddp_backend is not None and args.ddp_backend not in BACKENDS:
        problems.append(f"ddp_backend={args.ddp_backend!r} is not one of {', '.join(map(repr, BACKENDS))} (unset: "
                        f"nccl on CUDA, gloo on the CPU)")
    if args.ddp_timeout < 1:
        problems.append(f"ddp_timeout={args.ddp_timeout} must be >= 1 (seconds)")
    if args.ddp_bucket_cap_mb is not None and args.ddp_bucket_cap_mb < 1:
        problems.append(f"ddp_bucket_cap_mb={args.ddp_bucket_cap_mb} must be >= 1 (or unset for torch's 25)")
    plan, fsdp_problems = read_fsdp(args.fsdp, args.fsdp_config)
    problems += fsdp_problems
    if plan is not None:
        for name, why in (("fp16", "fp16's loss scaling is not sharded in finch: use bf16"),
                          ("torch_compile", "finch has not tested compiling a sharded model"),
                          ("save_on_each_node", "the full state dict is gathered to rank 0 only: use a shared disk")):
            if getattr(args, name):
                problems.append(f"fsdp with {name}=True: {why}")
    if args.dataloader_num_workers < 0:
        problems.append(f"dataloader_num_workers={args.dataloader_num_workers} must be >= 0")
    if args.fp16 and args.bf16:
        problems.append("fp16=True and bf16=True together: choose one precision")
    if args.load_best_model_at_end:
        if args.eval_strategy == "no":
            problems.append("load_best_model_at_end=True needs evaluation: set eval_strategy='epoch' or 'steps'")
        elif args.save_strategy not in (args.eval_strategy, "best"):
            problems.append(
                f"load_best_model_at_end=True needs save_strategy == eval_strategy, got save_strategy="
                f"{args.save_strategy!r} and eval_strategy={args.eval_strategy!r}; set both to the same value")
        elif args.save_strategy == "steps" and args.eval_steps and args.save_steps % args.eval_steps != 0:
            problems.append(
                f"load_best_model_at_end=True needs save_steps ({args.save_steps}) to be a multiple of eval_steps "
                f"({args.eval_steps}), so every checkpoint has an evaluation; change one of them")
    return problems


def _scheduler_kwargs_problems(scheduler: str, kwargs: dict) -> list[str]:
    """Keys of `lr_scheduler_kwargs` that the schedule's function does not take (else it fails after model load)."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    if scheduler not in SCHEDULERS:
        return []
    taken = set(inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(scheduler)]).parameters)
    taken -= {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}  # finch passes those
    unknown = sorted(set(kwargs) - taken)
    if unknown:
        return [(f"lr_scheduler_kwargs {unknown} are not arguments of the {scheduler!r} schedule; it takes "
                 f"{sorted(taken) or 'none'}")]
    import torch
    from transformers import get_scheduler

    try:  # on a throw-away optimizer: a missing or wrong value (min_lr, num_decay_steps...) is said before training
        get_scheduler(scheduler, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), num_warmup_steps=1,
                      num_training_steps=10, scheduler_specific_kwargs=dict(kwargs))
    except (TypeError, ValueError) as error:
        return [(f"lr_scheduler_type={scheduler!r} with lr_scheduler_kwargs={kwargs}: {error}; set its arguments "
                f"in lr_scheduler_kwargs (it takes {sorted(taken) or 'none'})")]
    return []


# ---- legacy names and unknown names -------------------------------------------------------------------------------
def _legacy_group_by_length(value: bool) -> dict[str, Any]:
    return {"train_sampling_strategy": "group_by_length" if value else "random"}


LEGACY: dict[str, tuple[str, Any]] = {
    # old name: (what to say, how to translate the value into current fields)
    "evaluation_strategy": ("use eval_strategy", lambda v: {"eval_strategy": v}),
    "group_by_length": ("use train_sampling_strategy='group_by_length' (finch's default)", _legacy_group_by_length),
    "warmup_ratio": ("use warmup_steps=<fraction>, which takes a ratio when below 1", lambda v: {"warmup_steps": v}),
    "logging_dir": ("use tensorboard_dir", lambda v: {"tensorboard_dir": v}),
    "no_cuda": ("use use_cpu", lambda v: {"use_cpu": v}),
    "gradient_checkpointing": ("use activation_checkpointing (transformers 5's name)",
                               lambda v: {"activation_checkpointing": v}),
    "gradient_checkpointing_kwargs": ("use activation_checkpointing_kwargs (transformers 5's name)",
                                      lambda v: {"activation_checkpointing_kwargs": v}),
    "include_inputs_for_metrics": ("use include_for_metrics=['inputs']",
                                   lambda v: {"include_for_metrics": ["inputs"] if v else []}),
}


def translate_legacy(kwargs: dict[str, Any], arguments_class: type | None = None) -> dict[str, Any]:
    """Map removed HF argument names onto current fields of `arguments_class` (default `TrainingArguments`), one
    FutureWarning each; reject unknown names."""
    known = {f.name for f in dataclasses.fields(arguments_class or TrainingArguments)}
    translated = {name: value for name, value in kwargs.items() if name in known}
    unknown = [name for name in kwargs if name not in known and name not in LEGACY and name not in HF_ONLY]
    if unknown:  # every one at once: a fix per run is a slow way to learn the names
        said = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known | set(LEGACY) | set(HF_ONLY)), n=3, cutoff=0.6)
            said.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        what = "an unknown argument" if len(unknown) == 1 else f"{len(unknown)} unknown arguments"
        raise UnknownArgumentError(f"TrainingArguments got {what} {', '.join(said)}")
    for name, value in kwargs.items():
        if name in known or accept_hf_only(name, value):
            continue
        advice, convert = LEGACY[name]
        warnings.warn(f"TrainingArguments: '{name}' is an old transformers name; {advice}.",
                      FutureWarning, stacklevel=3)
        for new_name, new_value in convert(value).items():
            if new_name in translated and translated[new_name] != new_value:
                raise ConfigError(f"TrainingArguments got {name}={value!r} and {new_name}={translated[new_name]!r}, "
                                  f"which disagree ({name} is the old name of {new_name}); pass only {new_name}")
            translated[new_name] = new_value
    return translated


FIELD_GROUPS: dict[str, str] = dict(zip((f.name for f in dataclasses.fields(TrainingArguments)), _GROUP_ORDER,
                                        strict=True))
def total_training_steps(args: TrainingArguments, steps_per_epoch: int) -> int:
    """Optimizer steps in the whole run: `max_steps` if set, else (possibly fractional) epochs."""
    if args.max_steps > 0:
        return args.max_steps
    return max(1, math.ceil(args.num_train_epochs * steps_per_epoch))


def unused_hub_options(args: TrainingArguments) -> str | None:
    """The warning for hub options set without push_to_hub, which then do nothing (HF's Trainer ignores them
    silently: a user who meant to upload finds nothing on the hub); None when there are none."""
    if args.push_to_hub:
        return None
    given = [name for name, unset in (("hub_model_id", None), ("hub_strategy", "every_save"),
                                      ("hub_private_repo", None), ("hub_revision", None))
             if getattr(args, name) != unset]
    if not given:
        return None
    flags = " ".join(f"--{name.replace('_', '-')}" for name in given)
    return (f"{', '.join(given)} ({flags}) set without push_to_hub (--push-to-hub): no effect, nothing is uploaded; "
            f"add --push-to-hub to upload, or drop {'it' if len(given) == 1 else 'them'}")


def check_keys(values: dict[str, Any], known: set[str], where: str) -> None:
    """Raise for keys that are not options, suggesting the closest ones."""
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = [f"{k!r} (did you mean {', '.join(map(repr, difflib.get_close_matches(k, known, n=2)))}?)"
                 if difflib.get_close_matches(k, known, n=1) else repr(k) for k in unknown]
        raise ConfigError(f"{where}: unknown option(s) {', '.join(hints)}")


@_with_legacy_names
@dataclass
class Seq2SeqTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus HF's generation settings for `Seq2SeqTrainer`: with `predict_with_generate`,
    evaluation and prediction generate sequences (`generation_max_length`, `generation_num_beams`, or a whole
    `generation_config`: a `GenerationConfig`, or a folder or hub name holding one) and `compute_metrics` gets the
    generated token ids."""

    sortish_sampler: bool = _arg(False, "generation", "accepted for HF's scripts; finch groups batches by length "
                                 "(train_sampling_strategy) instead")
    predict_with_generate: bool = _arg(False, "generation", "evaluate and predict by generating sequences")
    generation_max_length: int | None = _arg(None, "generation", "max_length of generation in evaluation")
    generation_num_beams: int | None = _arg(None, "generation", "num_beams of generation in evaluation")
    generation_config: Any = _arg(None, "generation",  # noqa: RUF009 (None, immutable)
                                  "a GenerationConfig, or a folder or hub name holding one")

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        config = values.get("generation_config")
        if config is not None and hasattr(config, "to_dict"):
            values["generation_config"] = config.to_dict()
        return values
