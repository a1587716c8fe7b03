"""FSDP2 under torchrun: HF's `fsdp` / `fsdp_config` read into an `FsdpPlan`, the model sharded with `fully_shard`
(each transformer layer, then the root) on a 1-D device mesh of every process, and the full state dicts that
finch's normal checkpoints and model folders hold, gathered from the shards to rank 0.

Each process keeps only its shard of every parameter, gradient and AdamW moment; a layer's whole parameters exist
only while that layer runs (all-gathered before, freed after with `full_shard`; kept until the backward with
`shard_grad_op`). Gradients are reduce-scattered and averaged over the ranks, as DDP averages them, so the loop's
loss scaling is the same for both.

torch is imported lazily: `read_fsdp` is called by `TrainingArguments` validation, which must stay cheap.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# HF's FSDPOption strings that finch does, and why it refuses the others
RESHARD_AFTER_FORWARD = {"full_shard": True, "shard_grad_op": False}
REFUSED = {
    "no_shard": "is DDP, finch's default with several processes: leave fsdp unset",
    "hybrid_shard": "shards within each machine and replicates across machines (a 2-D device mesh); finch shards "
                    "over every process: use 'full_shard'",
    "hybrid_shard_zero2": "shards within each machine and replicates across machines (a 2-D device mesh); finch "
                          "shards over every process: use 'shard_grad_op'",
    "offload": "(parameters and optimizer state kept in CPU memory) is not something finch does: leave it out",
}
# fsdp_config keys (HF's, with or without the `fsdp_` prefix) and the values finch accepts for each
CONFIG_VALUES: dict[str, tuple[Any, ...] | None] = {
    "version": (2, "2"), "transformer_layer_cls_to_wrap": None, "reshard_after_forward": (True, False),
    "auto_wrap_policy": ("TRANSFORMER_BASED_WRAP",), "state_dict_type": ("FULL_STATE_DICT", "SHARDED_STATE_DICT"),
    "activation_checkpointing": (False,), "offload_params": (False,), "cpu_ram_efficient_loading": (False,),
    "xla": (False,),
}


SHARDS = "shards"  # a sharded checkpoint's torch.distributed.checkpoint folder (every rank's part of the state)


@dataclass(frozen=True)
class FsdpPlan:
    """How to shard: `reshard_after_forward` (True: `full_shard`, ZeRO-3; False: `shard_grad_op`, ZeRO-2), the
    class names of the modules sharded one by one (None: the model's `_no_split_modules`, as HF's auto wrap), and
    how checkpoints hold the state (`state_dict_type`, HF's names: "FULL_STATE_DICT" gathered to rank 0,
    "SHARDED_STATE_DICT" each rank's shards; None: chosen by `checkpoints_sharded`)."""

    reshard_after_forward: bool = True
    layer_classes: tuple[str, ...] | None = None
    state_dict_type: str | None = None


def read_fsdp(fsdp: str | list[str], config: dict | str | None) -> tuple[FsdpPlan | None, list[str]]:
    """The plan HF's `fsdp` and `fsdp_config` ask for (None: no FSDP), and every problem with them as messages
    that name the fix. `fsdp` is HF's string ("full_shard auto_wrap") or list; `config` a dict or a JSON file."""
    options = fsdp.split() if isinstance(fsdp, str) else [str(option) for option in fsdp]
    problems = [f"fsdp={' '.join(options)!r}: {option!r} {REFUSED[option]}" for option in options if option in REFUSED]
    unknown = [option for option in options if option not in REFUSED and option not in RESHARD_AFTER_FORWARD
               and option != "auto_wrap"]
    if unknown:
        problems.append(f"fsdp: unknown option(s) {unknown}; finch takes 'full_shard' or 'shard_grad_op', "
                        f"optionally with 'auto_wrap'")
    modes = [option for option in options if option in RESHARD_AFTER_FORWARD]
    if len(modes) > 1:
        problems.append(f"fsdp: {' and '.join(modes)} are exclusive: choose one")
    settings, config_problems = _read_config(config)
    problems += config_problems
    if not options:
        if settings:
            problems.append("fsdp_config is set but fsdp is not: set fsdp='full_shard auto_wrap' to shard the model")
        return None, problems
    reshard = RESHARD_AFTER_FORWARD[modes[0]] if modes else True
    reshard = settings.get("reshard_after_forward", reshard)
    layers = settings.get("transformer_layer_cls_to_wrap")
    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    return FsdpPlan(reshard, tuple(layers) if layers else None, settings.get("state_dict_type")), problems


def _read_config(config: dict | str | None) -> tuple[dict[str, Any], list[str]]:
    if config is None or config == {}:
        return {}, []
    if isinstance(config, str):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError) as error:
            return {}, [f"fsdp_config={config!r}: not a readable JSON file ({error}); give a dict or a JSON file"]
        if not isinstance(config, dict):
            return {}, ["fsdp_config: the JSON file must hold an object of settings"]
    settings, problems = {}, []
    for key, value in config.items():
        name = key.removeprefix("fsdp_")
        if name not in CONFIG_VALUES:
            problems.append(f"fsdp_config: {key!r} is not a setting finch uses (it takes "
                            f"{', '.join(sorted(CONFIG_VALUES))}); remove it")
        elif name == "transformer_layer_cls_to_wrap":
            if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"fsdp_config: {key}={value!r} must be a class name or a list of them")
            settings[name] = value
        elif value not in CONFIG_VALUES[name] or isinstance(value, bool) != isinstance(CONFIG_VALUES[name][0], bool):
            hint = {"version": "finch runs FSDP2 (fully_shard)",
                    "state_dict_type": "checkpoints hold the full state (gathered to rank 0) or every rank's shards"
                    }.get(name, "finch does not do it")
            problems.append(f"fsdp_config: {key}={value!r}: {hint}; accepted: {list(CONFIG_VALUES[name])}")
        else:
            settings[name] = value
    return settings, problems


def shard(model: torch.nn.Module, plan: FsdpPlan, device: torch.device) -> None:
    """`fully_shard` each module of the plan's layer classes (innermost first), then the root, over a 1-D mesh
    of every process; in place (the parameters become DTensors holding this rank's shard).

    Raises:
        ConfigError: the model has no module of those classes (name them in `transformer_layer_cls_to_wrap`).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from finch.errors import ConfigError

    if isinstance(model, FSDPModule):
        return  # sharded by an earlier train() of this trainer
    names = set(plan.layer_classes or getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names and module is not model]
    if not layers:
        raise ConfigError(f"fsdp: {type(model).__name__} has no module of the classes {sorted(names) or '(none)'} "
                          f"to shard one by one; name its transformer layer class, e.g. "
                          f"fsdp_config={{'transformer_layer_cls_to_wrap': ['BertLayer']}}")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in reversed(layers):  # innermost first: a module's sharded children are left to them
        fully_shard(layer, mesh=mesh, reshard_after_forward=plan.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=plan.reshard_after_forward)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """The model's and the optimizer's full state dicts on rank 0 ({} elsewhere), in CPU memory; a collective
    that every rank calls. The optimizer's is keyed by parameter name (torch.distributed.checkpoint's form)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return weights, optimizer_state


def load_full_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Full (unsharded) tensors, the same on every rank, into the sharded `model`: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """What `full_state` saved for the optimizer, read by every rank, into the optimizer of the sharded `model`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def gathered(model: torch.nn.Module, plan: FsdpPlan) -> Iterator[None]:
    """Every rank holds the whole model inside (all-gathered once, kept between forwards), so ranks may run
    different numbers of forwards (evaluation shares batches out unevenly); sharded again on exit."""
    from torch.distributed.fsdp import FSDPModule

    modules = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(plan.reshard_after_forward, recurse=False)


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Around a micro-step: gradients reduce-scattered across ranks only when `sync` (else kept unsharded and
    accumulated here until the step's last micro-batch)."""
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ---- sharded checkpoints (torch.distributed.checkpoint) ------------------------------------------------------------
def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the full state a checkpoint gathers: the weights, and AdamW's two moments of each trainable one."""
    return sum(p.numel() * p.element_size() * (3 if p.requires_grad else 1) for p in model.parameters())


def available_memory() -> int | None:
    """Bytes of memory this machine has available (Linux's MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def checkpoints_sharded(state_dict_type: str | None, full_bytes: int, available: int | None) -> bool:
    """Whether checkpoints hold every rank's shards (else the full state, gathered to rank 0): as `state_dict_type`
    says, and when it is unset, when the full state would take more than half of the memory rank 0's machine has
    available (gathering it could then run that machine out of memory)."""
    if state_dict_type is not None:
        return state_dict_type == "SHARDED_STATE_DICT"
    return available is not None and full_bytes > available // 2


def save_shards(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, folder: Path) -> None:
    """Every rank writes its shards of the model (and optimizer) into `folder` with torch.distributed.checkpoint;
    a collective (rank 0 writes the `.metadata` index last). `folder` must be on a disk every rank shares."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        weights, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": weights, "optimizer": optimizer_state}
    dcp.save(state, checkpoint_id=folder)


def load_shards(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """What `save_shards` wrote, into `model` (and `optimizer`): a collective when `model` is sharded (each rank
    reads what its shards need, also with another number of ranks); in one process, the whole tensors, into a
    model that is not sharded. The index is read without running anything it holds (`_index_reader`).

    Raises:
        ResumeError: the index holds something other than checkpoint records (refused), or a rank could not load.
    """
    import pickle

    from torch.distributed.checkpoint.api import CheckpointException

    from finch.errors import ResumeError

    reader = _index_reader(folder)
    try:
        _load(reader, model, optimizer)
    except pickle.UnpicklingError as error:
        raise ResumeError(f"{folder / '.metadata'}: {error} (nothing in it was run); resume from a checkpoint that "
                          f"finch wrote") from None
    except CheckpointException as error:  # a BaseException: made an error that says which rank failed and why
        failures = "; ".join(f"rank {rank}: {type(failure).__name__}: {failure}"
                             for rank, failure in sorted(error.failures.items()))
        raise ResumeError(f"the shards in {folder} could not be loaded ({failures})") from None


def _load(reader: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    reader.read_metadata()  # the index first: a forged one is refused here, before torch reads it
    if not is_sharded(model):
        if optimizer is not None:
            raise ValueError("the optimizer of a sharded checkpoint loads only into a model sharded with FSDP2")
        weights = model.state_dict()  # views of the parameters: loaded in place
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": weights}, storage_reader=reader, no_dist=True)
        return
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, storage_reader=reader)
        set_model_state_dict(model, state["model"])
        return
    weights, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": optimizer_state}
    dcp.load(state, storage_reader=reader)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def missing_shards(folder: Path) -> list[str]:
    """The files `folder`'s index names that are not in it: on several machines without a shared disk, the other
    machines' shards are on their own disks."""
    metadata = _index_reader(folder).read_metadata()
    names = {info.relative_path for info in (metadata.storage_data or {}).values()}
    return sorted(name for name in names if not (folder / name).is_file())


@functools.cache
def _index_reader_class() -> type:
    import pickle

    import torch
    from torch.distributed.checkpoint import FileSystemReader

    class IndexUnpickler(pickle.Unpickler):
        """torch.distributed.checkpoint's `.metadata` is a pickle: only its own record types, torch's sizes and
        dtypes and plain containers are built from it; anything else is refused (never imported or called)."""

        def find_class(self, module: str, name: str) -> Any:
            if module.startswith("torch.distributed.checkpoint.") or (module, name) in _PLAIN \
                    or module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                                          (torch.dtype, torch.layout,
                                                                           torch.memory_format))):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index: refused")

    class IndexReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            with open(Path(self.path) / ".metadata", "rb") as file:
                metadata = IndexUnpickler(file).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return IndexReader


_PLAIN = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
          ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # where it was saved (storage_meta)
          ("torch.serialization", "_get_layout")}  # a torch.layout by its name


def _index_reader(folder: Path) -> Any:
    """torch's `FileSystemReader` for `folder`, reading the index with `IndexUnpickler` (the classes are made once,
    on first use: torch is imported lazily here)."""
    return _index_reader_class()(folder)
