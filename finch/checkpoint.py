"""Checkpoints `checkpoint-<step>/`: written to a temporary folder then renamed, rotated, found again, loaded.

A checkpoint holds the model (safetensors, plus `config.json` for HF models), the optimizer (`optimizer.pt`,
loaded with `weights_only=True`), and JSON for everything else: scheduler, gradient scaler, RNG states,
`trainer_state.json` and `training_args.json`. Nothing is unpickled.

`manifest.json`, written last, lists every file with its size and SHA-256. Discovery (`latest_checkpoint`) takes
the newest checkpoint whose files all match it and skips, with a warning, any that is incomplete or corrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers.utils import logging as hf_logging

from finch.args import TrainingArguments
from finch.runtime import rng_state, set_rng_state
from finch.state import TrainerState

logger = logging.getLogger("finch")

PREFIX = "checkpoint-"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.json"
MANIFEST = "manifest.json"
# Arguments that decide the data order or the step count: resuming with others changes the run, not just its end.
RESUME_FIXED = ("seed", "data_seed", "per_device_train_batch_size", "gradient_accumulation_steps",
                "train_sampling_strategy")


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, permission denied...); earlier ones are intact."""


def save_model_folder(model: torch.nn.Module, folder: str | Path, processing_class: Any = None) -> None:
    """An inference-ready folder: HF models via `save_pretrained`, other modules as `model.safetensors`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        with _quiet_transformers():  # no "Writing model shards" bar at every checkpoint
            model.save_pretrained(folder, safe_serialization=True)
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


def load_model_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load `model.safetensors` from `folder` into `model` (in place)."""
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"No {WEIGHTS} in {folder}: not a finch checkpoint or model folder")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    except RuntimeError as error:  # shapes differ: another architecture, vocabulary or number of labels
        raise ValueError(f"{path} does not fit this model (was it saved from a different model?): "
                         f"{str(error).splitlines()[-1].strip()}") from error
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                         f"(was it saved from a different model?)")


def save_checkpoint(output_dir: str | Path, model: torch.nn.Module, state: TrainerState, args: TrainingArguments,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
                    processing_class: Any = None) -> Path:
    """Write `checkpoint-<global_step>` completely into a temporary folder, then rename it into place.

    Raises:
        CheckpointError: the disk is full, read-only or not writable; the temporary folder is removed and every
            earlier checkpoint is left as it was.
    """
    final = Path(output_dir) / f"{PREFIX}{state.global_step}"
    temporary = Path(output_dir) / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save_model_folder(model, temporary, processing_class)
        if optimizer is not None and not args.save_only_model:
            torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
            _write_json(temporary / "scheduler.json", scheduler.state_dict() if scheduler is not None else None)
            _write_json(temporary / "scaler.json", scaler.state_dict() if scaler is not None else None)
            _write_json(temporary / "rng_state.json", rng_state())
        state.save_to_json(temporary / STATE)
        args.save(temporary / "training_args.json")
        _write_json(temporary / MANIFEST, {"files": {path.relative_to(temporary).as_posix(): _describe(path)
                                                     for path in sorted(temporary.rglob("*")) if path.is_file()}})
        _fsync_tree(temporary)
        if final.exists():  # the same step saved again (after a resume): move the old one aside, then drop it
            stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
            os.replace(final, stale)
            os.replace(temporary, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync_dir(final.parent)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        newest = latest_checkpoint(output_dir, quiet=True)
        raise CheckpointError(
            f"could not write {final}: {error.strerror or error}. Earlier checkpoints are intact"
            f"{f' (newest: {newest})' if newest else ''}; free disk space, fix the folder's permissions or choose "
            f"another output_dir, then resume.") from error
    return final


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: str | Path) -> str | None:
    """What is wrong with checkpoint `folder` (a missing, truncated or altered file), or None if it is whole."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"no readable {MANIFEST} (the save did not finish)"
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def load_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None) -> TrainerState:
    """Restore model, optimizer, scheduler, scaler and RNG states from `folder`; return its `TrainerState`."""
    folder = Path(folder)
    if not (folder / STATE).exists():
        raise FileNotFoundError(f"{folder} is not a finch checkpoint: no {STATE}")
    problem = verify(folder)
    if problem is not None:
        raise ValueError(f"checkpoint {folder} is damaged: {problem}; resume from an earlier one "
                         f"(resume_from_checkpoint=True picks the newest whole one)")
    load_model_weights(model, folder)
    if optimizer is not None and (folder / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        for name, target in (("scheduler.json", scheduler), ("scaler.json", scaler)):
            saved = json.loads((folder / name).read_text())
            if target is not None and saved is not None:
                target.load_state_dict(saved)
        set_rng_state(json.loads((folder / "rng_state.json").read_text()))
    return TrainerState.load_from_json(folder / STATE)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders in `output_dir`, oldest step first (whole or not: see `verify`)."""
    found = [p for p in Path(output_dir).glob(f"{PREFIX}*") if re.fullmatch(rf"{PREFIX}\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def remove_leftovers(output_dir: str | Path) -> None:
    """Delete temporary folders that a killed save left behind (they were never renamed into place)."""
    for folder in [*Path(output_dir).glob(f".tmp-{PREFIX}*"), *Path(output_dir).glob(f".stale-{PREFIX}*")]:
        shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(output_dir: str | Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint in `output_dir` whose files match its manifest; damaged ones are skipped (warned)."""
    for folder in reversed(checkpoints(output_dir)):
        problem = verify(folder)
        if problem is None:
            return folder
        if not quiet:
            logger.warning("skipping %s: %s", folder, problem)
    return None


def check_compatible(folder: str | Path, args: TrainingArguments) -> None:
    """Raise if `folder` was saved with arguments that set a different data order than `args` do."""
    saved = json.loads((Path(folder) / "training_args.json").read_text())
    changed = [f"{name}: {saved.get(name)!r} then, {getattr(args, name)!r} now" for name in RESUME_FIXED
               if name in saved and saved[name] != getattr(args, name)]
    if changed:
        raise ValueError(f"cannot resume from {folder} exactly: {'; '.join(changed)}. Use the arguments it was "
                         f"saved with, or start a new run in another output_dir")


def rotate_checkpoints(output_dir: str | Path, limit: int | None, best: str | None) -> list[Path]:
    """Delete all but the newest `limit` checkpoints, never the best one; return the deleted folders."""
    if limit is None:
        return []
    found = checkpoints(output_dir)
    keep = set(found[-limit:])
    if best is not None:
        keep.add(Path(best))
    deleted = [p for p in found if p not in keep and p.resolve() not in {k.resolve() for k in keep}]
    for folder in deleted:
        shutil.rmtree(folder, ignore_errors=True)
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
