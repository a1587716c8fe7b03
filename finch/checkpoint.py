"""Checkpoints `checkpoint-<step>/`: written to a temporary folder then renamed, rotated, found again, loaded.

A checkpoint holds the model (safetensors, plus `config.json` for HF models), the optimizer (`optimizer.pt`,
loaded with `weights_only=True`), and JSON for everything else: scheduler, gradient scaler, RNG states,
`trainer_state.json` and `training_args.json`. Nothing is unpickled. A sharded checkpoint (FSDP2 with
`state_dict_type="SHARDED_STATE_DICT"`, or a model too big to gather) holds `shards/` instead of the weights and
`optimizer.pt`: every rank's part, written by torch.distributed.checkpoint (see `finch.fsdp.save_shards`).

`manifest.json`, written last, lists every file with its size and SHA-256, the run's id and the time of the save.
Discovery (`latest_checkpoint`) takes the newest checkpoint whose files all match it and skips, with a warning, any
that is incomplete or corrupted.

Runs. Every run has an id (`TrainerState.run_id`, made by a fresh `train()`, kept across resumes), written into
each of its checkpoints. Discovery, rotation and the cleaning of killed saves only ever touch the run's own
checkpoints, so a folder that holds several runs' checkpoints loses none of them. Checkpoints without an id (an
older finch's) count as one run. A fresh run refuses a folder that holds another run's checkpoints (resume it,
set `overwrite_output_dir=True` to delete them, or choose another folder); `resume_from_checkpoint=True` with
several runs' checkpoints resumes the run that saved last. `finch.resume.plan_resume` makes these decisions, and
every check of a resume that needs no weights, before anything is loaded or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers.utils import logging as hf_logging

from finch.args import TrainingArguments
from finch.errors import ResumeError
from finch.fsdp import SHARDS
from finch.runtime import rng_state, set_rng_state
from finch.state import TrainerState

logger = logging.getLogger("finch")

PREFIX = "checkpoint-"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.json"
MANIFEST = "manifest.json"
# The files `load_checkpoint` reads: each must be listed in the manifest, so none is read unchecked.
LOADED_FILES = (WEIGHTS, "optimizer.pt", "scheduler.json", "scaler.json", "rng_state.json", STATE,
                "training_args.json")
# Killed saves leave `.tmp-checkpoint-<step>-<run>-<host>-<pid>` (or `.stale-...`, the replaced copy of a step saved
# again); an older finch wrote `.tmp-checkpoint-<step>-<pid>`.
LEFTOVER = re.compile(rf"\.(tmp|stale)-({PREFIX}\d+)-(?:([0-9a-f]{{32}}|legacy)-(.*)-)?(\d+)")


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
        safetensors.torch.save_file(weights, str(folder / WEIGHTS))
    else:
        safetensors.torch.save_model(model, str(folder / WEIGHTS))
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)


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
    `sharded`: into FSDP2's shards."""
    if (Path(folder) / SHARDS).is_dir():
        from finch.fsdp import load_shards

        load_shards(Path(folder) / SHARDS, model)
        return
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise ResumeError(f"No {WEIGHTS} in {folder}: not a finch checkpoint or model folder")
    if sharded:
        from finch.fsdp import load_full_weights

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


def save_checkpoint(output_dir: str | Path, model: torch.nn.Module, state: TrainerState, args: TrainingArguments,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
                    processing_class: Any = None, rng_states: list[dict] | None = None,
                    launch_id: str | None = None, weights: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict | None = None, shards_in: Path | None = None) -> Path:
    """Write `checkpoint-<global_step>` completely into a temporary folder, then rename it into place.

    A checkpoint of the same step from this run (saved before a resume) is replaced; one of another run never is.
    `rng_states` holds every rank's RNG state, rank 0's first (default: this process's only); rank r's is saved as
    `rng_state_<r>.json` (rank 0's as `rng_state.json`), and the manifest records how many ranks there were and
`launch_id`, the torchrun launch that saved it (`latest_checkpoint_of_launch`: what a restarted worker resumes).
`weights` and `optimizer_state`, when given, are saved instead of the model's and optimizer's own state dicts (the
full ones gathered from FSDP2's shards; the optimizer's then keyed by parameter name). `shards_in`: the temporary
folder (`temporary_folder`) where every rank has written its shards of the model and optimizer (sharded
checkpoints); the rest is added to it, and it is renamed into place.

    Raises:
        CheckpointError: the disk is full, read-only or not writable; the temporary folder is removed and every
            earlier checkpoint is left as it was.
    """
    final = Path(output_dir) / f"{PREFIX}{state.global_step}"
    temporary = shards_in
    try:
        temporary = temporary or temporary_folder(output_dir, state.global_step, state.run_id)
        if final.exists() and run_of(final) != state.run_id:  # plan_resume refuses runs that get here
            raise OSError(f"{final} belongs to another run and is not replaced")
        if shards_in is None:
            save_model_folder(model, temporary, processing_class, weights)
        else:
            _check_shards(temporary / SHARDS)
            _save_config(model, temporary, processing_class)
        if optimizer is not None and not args.save_only_model:
            if shards_in is None:
                torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                           temporary / "optimizer.pt")
            _write_json(temporary / "scheduler.json", scheduler.state_dict() if scheduler is not None else None)
            _write_json(temporary / "scaler.json", scaler.state_dict() if scaler is not None else None)
            for rank, states in enumerate(rng_states or [rng_state()]):
                _write_json(temporary / rng_file(rank), states)
        state.save_to_json(temporary / STATE)
        args.save(temporary / "training_args.json")
        files = {path.relative_to(temporary).as_posix(): _describe(path)
                 for path in sorted(temporary.rglob("*")) if path.is_file()}
        _write_json(temporary / MANIFEST, {"run_id": state.run_id, "saved_at": time.time(),
                                           "world_size": len(rng_states or [None]), "launch_id": launch_id,
                                           "files": files})
        _fsync_tree(temporary)
        if final.exists():  # the same step saved again (after a resume): move the old one aside, then drop it
            stale = final.with_name(_leftover_name("stale", final.name, state.run_id))
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

    from finch.fsdp import save_shards as write_shards

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
    temporary = Path(output_dir) / _leftover_name("tmp", f"{PREFIX}{step}", run_id)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    return temporary


def _check_shards(folder: Path) -> None:
    from finch.fsdp import missing_shards

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


def _leftover_name(kind: str, final_name: str, run_id: str | None) -> str:
    """`.tmp-`/`.stale-` + the checkpoint + who writes it: the run, the host and the process (see `LEFTOVER`)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    return f".{kind}-{final_name}-{run_id or 'legacy'}-{host}-{os.getpid()}"


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def verify(folder: str | Path) -> str | None:
    """What is wrong with checkpoint `folder` (a missing, truncated or altered file, a file the manifest does not
    list, a name that leads out of the folder), or None if it is whole."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if manifest is None:
        return f"no readable {MANIFEST} (the save did not finish)"
    listed = manifest["files"]
    inside = folder.resolve()
    for name, expected in listed.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(inside):
            return f"{MANIFEST} names {name!r}, which is outside the checkpoint folder (refused)"
        if not isinstance(expected, dict) or not {"size", "sha256"} <= expected.keys():
            return f"{MANIFEST} has no size and checksum for {name!r}"
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    unlisted = [name for name in LOADED_FILES if (folder / name).exists() and name not in listed]
    if unlisted:
        return f"{unlisted[0]} is not listed in {MANIFEST} (added after the save?)"
    return None


def rng_file(rank: int) -> str:
    """The file holding rank `rank`'s RNG state in a checkpoint."""
    return "rng_state.json" if rank == 0 else f"rng_state_{rank}.json"


def world_size_of(folder: str | Path) -> int:
    """How many processes saved checkpoint `folder` (1 for checkpoints saved before finch recorded it)."""
    manifest = _manifest(Path(folder))
    size = manifest.get("world_size") if manifest is not None else None
    return size if isinstance(size, int) and size >= 1 else 1


def run_of(folder: str | Path) -> str | None:
    """The id of the run that saved checkpoint `folder`; None for an older finch's (or an unreadable manifest)."""
    manifest = _manifest(Path(folder))
    run_id = manifest.get("run_id") if manifest is not None else None
    return run_id if isinstance(run_id, str) else None


def launch_of(folder: str | Path) -> str | None:
    """The torchrun launch id that saved checkpoint `folder` (None: saved outside torchrun, or by an older finch)."""
    manifest = _manifest(Path(folder))
    launch_id = manifest.get("launch_id") if manifest is not None else None
    return launch_id if isinstance(launch_id, str) else None


def saved_at(folder: str | Path) -> float:
    """When checkpoint `folder` was saved: the time in its manifest, else the manifest's (or folder's) mtime."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if manifest is not None and isinstance(manifest.get("saved_at"), (int, float)):
        return float(manifest["saved_at"])
    stamped = folder / MANIFEST if (folder / MANIFEST).exists() else folder
    return stamped.stat().st_mtime


def new_run_id() -> str:
    return uuid.uuid4().hex


def load_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None, rank: int = 0, sharded: bool = False) -> TrainerState:
    """Restore model, optimizer, scheduler, scaler and rank `rank`'s RNG states from `folder` (RNGs are left alone
    when it holds none for that rank: saved by fewer processes); return its `TrainerState`. `sharded`: the model is
    sharded by FSDP2 (each rank takes its shard of the full tensors).

    Raises:
        ResumeError: `folder` is not a checkpoint, is damaged, does not fit `model`, or holds an `optimizer.pt`
            that is not plain tensors (refused: nothing in it is executed).
    """
    folder = Path(folder)
    if not (folder / STATE).exists():
        raise ResumeError(f"{folder} is not a finch checkpoint: no {STATE}; pass a {PREFIX}<step> folder")
    problem = verify(folder)
    if problem is not None:
        raise ResumeError(f"checkpoint {folder} is damaged: {problem}; resume from an earlier one "
                          f"(resume_from_checkpoint=True picks the newest whole one)")
    training_state = optimizer is not None and (folder / "scheduler.json").exists()  # else save_only_model
    try:
        if (folder / SHARDS).is_dir() and training_state:
            from finch.fsdp import load_shards

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
                from finch.fsdp import load_full_optimizer_state

                load_full_optimizer_state(model, optimizer, optimizer_state)
            else:
                optimizer.load_state_dict(optimizer_state)
        for name, target in (("scheduler.json", scheduler), ("scaler.json", scaler)):
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


# ---- which checkpoints there are, and whose ------------------------------------------------------------------------
def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders in `output_dir` of every run, oldest step first (whole or not: `verify`)."""
    found = [p for p in Path(output_dir).glob(f"{PREFIX}*") if re.fullmatch(rf"{PREFIX}\d+", p.name) and p.is_dir()]
    return sorted(found, key=step_of)


def run_checkpoints(output_dir: str | Path, run_id: str | None) -> list[Path]:
    """The checkpoints of run `run_id` in `output_dir` (None: an older finch's, without an id), oldest step first."""
    return [folder for folder in checkpoints(output_dir) if run_of(folder) == run_id]


def step_of(folder: Path) -> int:
    """The step in a `checkpoint-<step>` folder's name."""
    return int(folder.name[len(PREFIX):])


def latest_checkpoint(output_dir: str | Path, quiet: bool = False) -> Path | None:
    """The newest whole checkpoint of the run that saved last in `output_dir`; damaged ones are skipped (warned).

    With one run's checkpoints (the usual case) that is its highest step. With several runs' (an older finch's
    count as one), the run is the one whose whole checkpoint was saved most recently, then its highest whole step.
    """
    whole = _WholeCheckpoints(quiet)
    newest = next((folder for folder in sorted(checkpoints(output_dir), key=saved_at, reverse=True)
                   if whole(folder)), None)
    if newest is None:
        return None
    return next(folder for folder in reversed(run_checkpoints(output_dir, run_of(newest))) if whole(folder))


def latest_checkpoint_of(output_dir: str | Path, run_id: str | None, quiet: bool = False) -> Path | None:
    """The highest-step whole checkpoint of run `run_id` in `output_dir`, or None."""
    whole = _WholeCheckpoints(quiet)
    return next((folder for folder in reversed(run_checkpoints(output_dir, run_id)) if whole(folder)), None)


def latest_checkpoint_of_launch(output_dir: str | Path, launch_id: str) -> Path | None:
    """The newest whole checkpoint that torchrun launch `launch_id` saved in `output_dir`, or None."""
    whole = _WholeCheckpoints(quiet=False)
    saved = [folder for folder in checkpoints(output_dir) if launch_of(folder) == launch_id]
    return next((folder for folder in sorted(saved, key=saved_at, reverse=True) if whole(folder)), None)


class _WholeCheckpoints:
    """`verify` once per folder (it reads every byte), warning once about each damaged one."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.problems = quiet, {}

    def __call__(self, folder: Path) -> bool:
        if folder not in self.problems:
            self.problems[folder] = verify(folder)
            if self.problems[folder] is not None and not self.quiet:
                logger.warning("skipping %s: %s", folder, self.problems[folder])
        return self.problems[folder] is None


def describe_runs(folders: list[Path]) -> str:
    """`run 3f2a9c01: checkpoint-20, checkpoint-30 (last saved 2025-05-01 12:00)` for each run, newest last."""
    runs: dict[str | None, list[Path]] = {}
    for folder in folders:
        runs.setdefault(run_of(folder), []).append(folder)
    parts = []
    for run_id, found in sorted(runs.items(), key=lambda item: max(map(saved_at, item[1]))):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(map(saved_at, found))))
        who = f"run {run_id[:8]}" if run_id else "an older finch's run (no run id)"
        parts.append(f"{who}: {', '.join(f.name for f in found)} (last saved {when})")
    return "; ".join(parts)


# ---- writing into output_dir, once the checks have passed ---------------------------------------------------------
def prepare_output_dir(output_dir: str | Path, run_id: str | None, overwrite: bool = False) -> None:
    """Create `output_dir`; with `overwrite`, delete other runs' checkpoints (warned); clean killed saves."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    others = [folder for folder in checkpoints(output_dir) if run_of(folder) != run_id] if overwrite else []
    if others:
        logger.warning("overwrite_output_dir=True: deleting the checkpoints of other runs in %s: %s", output_dir,
                       describe_runs(others))
        for folder in others:
            delete_checkpoint(folder, run_id)
    remove_leftovers(output_dir, run_id)


def delete_checkpoint(folder: Path, run_id: str | None) -> None:
    """Delete a checkpoint so that a kill can never leave part of it under its own name (a damaged checkpoint that
    nothing would clean): renamed aside in one atomic step, then removed; a kill in between leaves a `.tmp-` folder
    of this run, which the next start deletes (`remove_leftovers`)."""
    doomed = folder.with_name(_leftover_name("tmp", folder.name, run_id))
    try:
        os.replace(folder, doomed)
    except FileNotFoundError:  # already gone: what was asked
        return
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(output_dir: str | Path, run_id: str | None) -> None:
    """Clean what killed saves left: this run's, and those of processes of this host that no longer exist.

    A `.tmp-` folder was never renamed into place: deleted. A `.stale-` folder is the old copy of a step saved
    again: deleted, or renamed back if the save was killed before the new copy took its place (this run's only).
    Leftovers of a live process, of another machine, or with names finch did not write are left alone.
    """
    here = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    for folder in sorted(Path(output_dir).glob(".*-" + PREFIX + "*"), key=lambda p: not p.name.startswith(".tmp")):
        match = LEFTOVER.fullmatch(folder.name)
        if match is None or not folder.is_dir():
            continue
        kind, final_name, owner, host, pid = match.groups()
        mine = owner == (run_id or "legacy")
        abandoned = (host is None or host == here) and not _alive(int(pid))
        if not (mine or abandoned):
            continue
        final = folder.with_name(final_name)
        if kind == "stale" and not final.exists():
            if mine and verify(folder) is None:
                os.replace(folder, final)
                logger.warning("restored %s (its save was killed while replacing it)", final)
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def rotate_checkpoints(output_dir: str | Path, limit: int | None, best: str | None, run_id: str | None,
                       keep: str | Path | None = None) -> list[Path]:
    """Keep `limit` checkpoints of run `run_id`, the best one among them, as HF counts: the newest `limit`, or the
    best and the newest `limit - 1` (at least one: `limit=1` may keep two, the best and the last); `keep` (the one
    just written) is never deleted, nor are other runs' checkpoints. Returns the deleted folders."""
    if limit is None:
        return []
    found = run_checkpoints(output_dir, run_id)
    best_is_older = best is not None and Path(best).resolve() not in {f.resolve() for f in found[-limit:]}
    newest = found[-max(limit - 1, 1):] if best_is_older else found[-limit:]
    kept = {folder.resolve() for folder in newest}
    kept |= {Path(path).resolve() for path in (best, keep) if path is not None}
    deleted = [folder for folder in found if folder.resolve() not in kept]
    for folder in deleted:
        delete_checkpoint(folder, run_id)
    return deleted


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
