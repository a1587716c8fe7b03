"""Checkpoints `checkpoint-<step>/`: written to a temporary folder then renamed, rotated, found again, loaded.

A checkpoint holds the model (safetensors, plus `config.json` for HF models), the optimizer (`optimizer.pt`,
loaded with `weights_only=True`), and JSON for everything else: scheduler, gradient scaler, RNG states,
`trainer_state.json` and `training_args.json`. Nothing is unpickled. A sharded checkpoint (FSDP2 with
`state_dict_type="SHARDED_STATE_DICT"`, or a model too big to gather) holds `shards/` instead of the weights and
`optimizer.pt`: every rank's part, written by torch.distributed.checkpoint (see `finch.distributed.fsdp.save_shards`).

`manifest.json`, written last, lists every file with its size and SHA-256, the run's id and the time of the save.
`finch.runs.folders` reads it back: discovery (`latest_checkpoint`) takes the newest checkpoint whose files all match
it and skips, with a warning, any that is incomplete or corrupted; rotation and cleaning live there too.

Runs. Every run has an id (`TrainerState.run_id`, made by a fresh `train()`, kept across resumes), written into
each of its checkpoints. Discovery, rotation and the cleaning of killed saves only ever touch the run's own
checkpoints, so a folder that holds several runs' checkpoints loses none of them. Checkpoints without an id (an
older finch's) count as one run. A fresh run refuses a folder that holds another run's checkpoints (resume it,
set `overwrite_output_dir=True` to delete them, or choose another folder); `resume_from_checkpoint=True` with
several runs' checkpoints resumes the run that saved last. `finch.runs.resume.plan_resume` makes these decisions, and
every check of a resume that needs no weights, before anything is loaded or written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import pickle
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers.utils import logging as hf_logging

from finch.args import TrainingArguments
from finch.distributed.fsdp import SHARDS
from finch.distributed.runtime import rng_state, set_rng_state
from finch.errors import ResumeError
from finch.runs import adapters
from finch.runs.folders import (
    MANIFEST,
    PREFIX,
    STATE,
    WEIGHTS,
    describe_file,
    latest_checkpoint_of,
    leftover_name,
    run_of,
)
from finch.runs.resume import check_whole
from finch.state import TrainerState

logger = logging.getLogger("finch")

class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, permission denied...); earlier ones are intact."""


def save_model_folder(model: torch.nn.Module, folder: str | Path, processing_class: Any = None,
                      weights: dict[str, torch.Tensor] | None = None) -> None:
    """An inference-ready folder: HF models via `save_pretrained`, other modules as `model.safetensors`.
    `weights`: the full state dict to save instead of the model's own (gathered from FSDP2's shards)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        with _quiet_transformers(), _this_process_writes(model):  # no "Writing model shards" bar at every checkpoint
            model.save_pretrained(folder, safe_serialization=True, state_dict=weights)
    elif weights is not None:
        _save_weights(weights, folder / WEIGHTS)
    else:
        safetensors.torch.save_model(model, str(folder / WEIGHTS))
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)


def _save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """`weights` as safetensors, as `safetensors.torch.save_model` saves a module's: a tensor that shares another's
    storage (tied weights) is kept once, and named in the metadata."""
    weights, metadata = dict(weights), None
    for kept, removed in safetensors.torch._remove_duplicate_names(weights).items():
        for name in removed:
            metadata = {**(metadata or {}), name: kept}
            del weights[name]
    safetensors.torch.save_file({name: tensor.contiguous() for name, tensor in weights.items()}, str(path),
                                metadata=metadata)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _this_process_writes(model: torch.nn.Module) -> Iterator[None]:
    """transformers' `save_pretrained` writes nothing (silently) outside global rank 0 once torch.distributed is
    initialized; finch chose this process to write (each machine's first with `save_on_each_node`), so it writes."""
    model.should_save_on_this_rank = lambda is_main_process: is_main_process  # shadows the method, this call only
    try:
        yield
    finally:
        del model.should_save_on_this_rank


def load_model_weights(model: torch.nn.Module, folder: str | Path, sharded: bool = False) -> None:
    """Load `model.safetensors` (or a sharded checkpoint's `shards/`) from `folder` into `model` (in place);
    `sharded`: into FSDP2's shards. A PeftModel takes the folder's adapter (`finch.runs.adapters`)."""
    if adapters.is_peft(model):
        adapters.load_adapter(model, folder)
        adapters.load_trainable_state(model, folder)  # a checkpoint's: every trainable tensor exactly
        return
    if (Path(folder) / SHARDS).is_dir():
        from finch.distributed.fsdp import load_shards

        load_shards(Path(folder) / SHARDS, model)
        return
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise ResumeError(f"No {WEIGHTS} in {folder}: not a finch checkpoint or model folder")
    if sharded:
        from finch.distributed.fsdp import load_full_weights

        load_full_weights(model, safetensors.torch.load_file(str(path)))
        return
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    except RuntimeError as error:  # shapes differ: another architecture, vocabulary or number of labels
        raise ResumeError(f"{path} does not fit this model (was it saved from a different model?): "
                         f"{str(error).splitlines()[-1].strip()}") from error
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ResumeError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                         f"(was it saved from a different model?)")


@dataclass
class RunState:
    """Everything a checkpoint holds, as one object: `save_checkpoint` writes it whole and `load_checkpoint` reads it
    back whole (composer's `State` plays this part).

    Attributes:
        model: the model, unwrapped (its weights and config); `processing_class` is saved beside it.
        state: the `TrainerState`: progress, best metric, run id, data and model fingerprints, and the callbacks'
            own state (`stateful_callbacks`).
        args: the run's `TrainingArguments`.
        optimizer, scheduler, scaler: the training state (None: nothing to save or load of it).
        rng_states: every rank's RNG state, rank 0's first (default: this process's only).
        launch_id: the torchrun launch that saves it (`latest_checkpoint_of_launch`: what a restarted worker
            resumes).
        weights, optimizer_state: full state dicts gathered from FSDP2's shards, saved instead of the model's and
            optimizer's own (the optimizer's then keyed by parameter name); or their copies in host memory
            (`host_copy`).
        trainable: a PeftModel's trainable tensors, copied (`host_copy`; None: read from the model when saved).
        ready: a CUDA event after which the copies in host memory are complete (None: they are).
    """

    model: torch.nn.Module
    state: TrainerState
    args: TrainingArguments
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    scaler: Any = None
    processing_class: Any = None
    rng_states: list[dict] | None = None
    launch_id: str | None = None
    weights: dict[str, torch.Tensor] | None = None
    optimizer_state: dict | None = None
    trainable: dict[str, torch.Tensor] | None = None
    ready: Any = None


class _Saved:
    """A scheduler's or scaler's state as it was when copied: what `save_checkpoint` asks of it is `state_dict()`."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state


def host_copy(run: RunState) -> RunState:
    """`run` with everything a checkpoint writes copied to host memory (pinned, copied asynchronously, on CUDA:
    `ready` says when the copies are complete), so that training may go on changing the model, optimizer, schedule
    and state while `save_checkpoint` writes the copy from another thread. Tensors that share storage (tied weights)
    are copied once and still share it, so the files are byte for byte those `save_checkpoint(run)` writes."""
    copies: dict[tuple, torch.Tensor] = {}
    pinned = False

    def copy_tensor(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal pinned
        tensor = tensor.detach()
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tensor.stride(), tensor.dtype)
        if key not in copies:
            if tensor.device.type == "cuda":
                copies[key] = torch.empty_like(tensor, device="cpu", pin_memory=True)
                copies[key].copy_(tensor, non_blocking=True)
                pinned = True
            else:
                copies[key] = tensor.clone()
        return copies[key]

    def copy_tree(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return copy_tensor(value)
        if isinstance(value, dict):
            return {key: copy_tree(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy_tree(item) for item in value)
        return copy.deepcopy(value)

    model, optimizer = run.model, run.optimizer
    weights = copy_tree(run.weights if run.weights is not None else model.state_dict())
    optimizer_state = None
    if optimizer is not None and not run.args.save_only_model:
        optimizer_state = copy_tree(run.optimizer_state if run.optimizer_state is not None else optimizer.state_dict())
    trainable = None
    if adapters.is_peft(model):
        trainable = {name: copy_tensor(parameter).contiguous() for name, parameter in model.named_parameters()
                     if parameter.requires_grad}
    ready = None
    if pinned:
        ready = torch.cuda.Event()
        ready.record()
    saved = {name: _Saved(copy.deepcopy(part.state_dict())) if part is not None else None
             for name, part in (("scheduler", run.scheduler), ("scaler", run.scaler))}
    return dataclasses.replace(run, state=copy.deepcopy(run.state), rng_states=copy.deepcopy(run.rng_states),
                               weights=weights, optimizer_state=optimizer_state, trainable=trainable, ready=ready,
                               **saved)


class BackgroundWriter:
    """Writes one checkpoint at a time in a thread of its own, so the training steps that follow a save overlap
    the serialization and the disk. `start` waits for the write before it; `wait` returns once the write is done
    and raises the error it met (the `CheckpointError` that `save_checkpoint` raises: disk full, permissions), on
    the thread that waits, so no error is lost. The thread is not a daemon: a process that ends while a write is
    in flight finishes it first (a kill leaves the temporary folder, which is never taken for a checkpoint)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, write: Callable[[], None], ready: Any = None) -> None:
        """Run `write()` in the background once the previous write is done (and `ready`, a CUDA event, has
        happened: the copies it writes are complete)."""
        self.wait()

        def run() -> None:
            try:
                if ready is not None:
                    ready.synchronize()
                write()
            except BaseException as error:  # noqa: BLE001 (raised on the training thread, by wait)
                self._error = error

        self._thread = threading.Thread(target=run, name="finch-checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        """Return once no write is in flight; raise the error of the last one, if it failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


def save_checkpoint(output_dir: str | Path, run: RunState, shards_in: Path | None = None) -> Path:
    """Write `run` as `checkpoint-<global_step>`, completely into a temporary folder, then rename it into place.

    A checkpoint of the same step from this run (saved before a resume) is replaced; one of another run never is.
    Rank r's RNG state is saved as `rng_state_<r>.json` (rank 0's as `rng_state.json`), and the manifest records how
    many ranks there were and the launch. `shards_in`: the temporary folder (`temporary_folder`) where every rank has
    written its shards of the model and optimizer (sharded checkpoints); the rest is added to it, and it is renamed
    into place.

    Raises:
        CheckpointError: the disk is full, read-only or not writable; the temporary folder is removed and every
            earlier checkpoint is left as it was.
    """
    state, args, optimizer, rng_states = run.state, run.args, run.optimizer, run.rng_states
    final = Path(output_dir) / f"{PREFIX}{state.global_step}"
    if final.exists() and run_of(final) != state.run_id:  # plan_resume refuses runs that get here
        if shards_in is not None:
            shutil.rmtree(shards_in, ignore_errors=True)
        raise CheckpointError(f"could not write {final}: a folder of that name is there and is not a checkpoint of "
                              f"this run, so it is not replaced. Move it away, then resume (earlier checkpoints are "
                              f"intact)")
    temporary = shards_in
    try:
        temporary = temporary or temporary_folder(output_dir, state.global_step, state.run_id)
        if shards_in is None:
            save_model_folder(run.model, temporary, run.processing_class, run.weights)
            if adapters.is_peft(run.model):  # peft's own files, plus every trainable tensor as training has it
                trainable = run.trainable if run.trainable is not None else adapters.trainable_state(run.model)
                safetensors.torch.save_file(trainable, str(temporary / adapters.TRAINABLE_WEIGHTS))
        else:
            _check_shards(temporary / SHARDS)
            _save_config(run.model, temporary, run.processing_class)
        if optimizer is not None and not args.save_only_model:
            if shards_in is None:
                torch.save(run.optimizer_state if run.optimizer_state is not None else optimizer.state_dict(),
                           temporary / "optimizer.pt")
            for name, part in (("scheduler.json", run.scheduler), ("scaler.json", run.scaler)):
                _write_json(temporary / name, part.state_dict() if part is not None else None)
            for rank, states in enumerate(rng_states or [rng_state()]):
                _write_json(temporary / rng_file(rank), states)
        state.save_to_json(temporary / STATE)
        args.save(temporary / "training_args.json")
        files = {path.relative_to(temporary).as_posix(): describe_file(path)
                 for path in sorted(temporary.rglob("*")) if path.is_file()}
        _write_json(temporary / MANIFEST, {"run_id": state.run_id, "saved_at": time.time(),
                                           "world_size": len(rng_states or [None]), "launch_id": run.launch_id,
                                           "files": files})
        _fsync_tree(temporary)
        if final.exists():  # the same step saved again (after a resume): move the old one aside, then drop it
            stale = final.with_name(leftover_name("stale", final.name, state.run_id))
            os.replace(final, stale)
            os.replace(temporary, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync_dir(final.parent)
    except OSError as error:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        newest = latest_checkpoint_of(output_dir, state.run_id, quiet=True)
        raise CheckpointError(
            f"could not write {final}: {error.strerror or error}. Earlier checkpoints are intact"
            f"{f' (newest: {newest})' if newest else ''}; free disk space, fix the folder's permissions or choose "
            f"another output_dir, then resume.") from error
    return final


def save_shards(output_dir: str | Path, state: TrainerState, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer | None, on_main: Any, is_main: bool) -> Path:
    """Every rank calls: rank 0 makes the temporary folder of checkpoint-<step> (`on_main`: runs it there, gives
    every rank its result), and every rank writes its shards of the model and `optimizer` into it (FSDP2's sharded
    checkpoints: no process ever holds the whole state). Returns the folder, for `save_checkpoint(shards_in=...)`.

    Raises:
        CheckpointError: on every rank, when a rank could not write (the folder is removed).
    """
    from torch.distributed.checkpoint.api import CheckpointException

    from finch.distributed.fsdp import save_shards as write_shards

    final = Path(output_dir) / f"{PREFIX}{state.global_step}"
    folder = None
    try:
        folder = on_main(lambda: temporary_folder(output_dir, state.global_step, state.run_id))
        write_shards(model, optimizer, folder / SHARDS)
    except (OSError, CheckpointException) as error:  # torch's CheckpointException reaches every rank
        if is_main and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointError(f"could not write the shards of {final}: {_first_line(error)}. Earlier checkpoints "
                              f"are intact; free disk space or fix the folder's permissions, then resume.") from error
    return folder


def _first_line(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def temporary_folder(output_dir: str | Path, step: int, run_id: str | None) -> Path:
    """The empty folder in which checkpoint-<step> of run `run_id` is written by this process (its name says who
    writes it: see `LEFTOVER`); the checkpoint's name once it is whole."""
    temporary = Path(output_dir) / leftover_name("tmp", f"{PREFIX}{step}", run_id)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    return temporary


def _check_shards(folder: Path) -> None:
    from finch.distributed.fsdp import missing_shards

    missing = missing_shards(folder)
    if missing:
        raise OSError(f"{len(missing)} shard file(s) written by other ranks ({', '.join(missing[:3])}) are not in "
                      f"{folder}: sharded checkpoints need an output_dir that every machine shares (a network "
                      f"filesystem)")


def _save_config(model: torch.nn.Module, folder: Path, processing_class: Any) -> None:
    """Beside a sharded checkpoint's shards: what rebuilds the model (config.json) and the tokenizer."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(folder)
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)


def rng_file(rank: int) -> str:
    """The file holding rank `rank`'s RNG state in a checkpoint."""
    return "rng_state.json" if rank == 0 else f"rng_state_{rank}.json"


def new_run_id() -> str:
    return uuid.uuid4().hex


def load_checkpoint(folder: str | Path, run: RunState, rank: int = 0, sharded: bool = False) -> TrainerState:
    """Restore `run`'s model, optimizer, scheduler, scaler and rank `rank`'s RNG states from `folder` (RNGs are left
    alone when it holds none for that rank: saved by fewer processes); return its `TrainerState` (`run.state` is
    left for the caller to merge with its own plan). `sharded`: the model is sharded by FSDP2 (each rank takes its
    shard of the full tensors).

    Raises:
        ResumeError: `folder` is not a checkpoint, is damaged, does not fit `model`, or holds an `optimizer.pt`
            that is not plain tensors (refused: nothing in it is executed).
    """
    folder = Path(folder)
    if not (folder / STATE).exists() and not (folder / MANIFEST).exists():  # with a manifest: a damaged one
        raise ResumeError(f"{folder} is not a finch checkpoint: no {STATE}; pass a {PREFIX}<step> folder")
    check_whole(folder)  # finch's, and every file as its manifest lists it
    model, optimizer = run.model, run.optimizer
    training_state = optimizer is not None and (folder / "scheduler.json").exists()  # else save_only_model
    try:
        if (folder / SHARDS).is_dir() and training_state:
            from finch.distributed.fsdp import load_shards

            if not sharded:
                raise ValueError("it holds the shards of a model trained with FSDP2; set the same fsdp to resume")
            load_shards(folder / SHARDS, model, optimizer)
        else:
            load_model_weights(model, folder, sharded)
    except ValueError as error:
        raise ResumeError(f"cannot resume from {folder}: {error}; use the model it was trained with") from error
    if training_state:
        if (folder / "optimizer.pt").exists():
            optimizer_state = _load_tensors(folder / "optimizer.pt")
            if sharded:
                from finch.distributed.fsdp import load_full_optimizer_state

                load_full_optimizer_state(model, optimizer, optimizer_state)
            else:
                optimizer.load_state_dict(optimizer_state)
        for name, target in (("scheduler.json", run.scheduler), ("scaler.json", run.scaler)):
            saved = json.loads((folder / name).read_text())
            if target is not None and saved is not None:
                target.load_state_dict(saved)
        if (folder / rng_file(rank)).exists():
            set_rng_state(json.loads((folder / rng_file(rank)).read_text()))
    return TrainerState.load_from_json(folder / STATE)


def _load_tensors(path: Path) -> Any:
    """`torch.load` restricted to tensors and plain containers; anything else is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        # torch's own message suggests weights_only=False, which would run whatever the file holds: not repeated
        raise ResumeError(f"{path} is not a plain tensor file (it holds other objects, or is not a torch file): "
                          f"refused, nothing in it was run. Resume from a checkpoint that finch wrote") from None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value) + "\n")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
