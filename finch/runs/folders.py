"""The checkpoints in an output folder: which are whole, which run saved each, the newest, and their removal.

Each `checkpoint-<step>/` ends with `manifest.json` (written last by `finch.runs.checkpoint.save_checkpoint`): every
file with its size and SHA-256, the run's id, the torchrun launch, the number of processes and the time of the save.
This module reads it. `verify` says whether a checkpoint is whole; `latest_checkpoint` and its siblings find the newest
whole one of a run (skipping, with a warning, any that is incomplete or corrupted); `rotate_checkpoints`,
`delete_checkpoint` and `remove_leftovers` remove only the run's own checkpoints and what killed saves left, so a folder
that holds several runs' checkpoints loses none of another run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("finch")

PREFIX = "checkpoint-"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.json"
MANIFEST = "manifest.json"
# The files `load_checkpoint` reads: each must be listed in the manifest, so none is read unchecked.
LOADED_FILES = (WEIGHTS, "optimizer.pt", "scheduler.json", "scaler.json", "rng_state.json", STATE,
                "training_args.json")
# Files that only transformers.Trainer writes into its checkpoints (finch writes JSON where it pickles).
TRANSFORMERS_FILES = ("training_args.bin", "scheduler.pt", "rng_state.pth")
# Killed saves leave `.tmp-checkpoint-<step>-<run>-<host>-<pid>` (or `.stale-...`, the replaced copy of a step saved
# again); an older finch wrote `.tmp-checkpoint-<step>-<pid>`.
LEFTOVER = re.compile(rf"\.(tmp|stale)-({PREFIX}\d+)-(?:([0-9a-f]{{32}}|legacy)-(.*)-)?(\d+)")


# ---- what a checkpoint says about itself ---------------------------------------------------------------------------
def leftover_name(kind: str, final_name: str, run_id: str | None) -> str:
    """`.tmp-`/`.stale-` + the checkpoint + who writes it: the run, the host and the process (see `LEFTOVER`)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    return f".{kind}-{final_name}-{run_id or 'legacy'}-{host}-{os.getpid()}"


def describe_file(path: Path) -> dict[str, Any]:
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
    if manifest is None and written_by_transformers(folder):
        return f"written by transformers.Trainer, not finch: not damaged, but finch cannot resume it (it has no " \
               f"finch {MANIFEST}, data position or RNG state)"
    if manifest is None:
        return f"no readable {MANIFEST} (the save did not finish)"
    listed = manifest["files"]
    inside = folder.resolve()
    for name, expected in listed.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{MANIFEST} names {name!r}, which is outside the checkpoint folder (refused)"
        if not path.resolve().is_relative_to(inside):
            return _link_out(folder, name)
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


def _link_out(folder: Path, name: str) -> str:
    """The message for a listed file that a symbolic link (the file's own, or a folder's on its way) leads out of
    the checkpoint: finch reads only what is inside a checkpoint, and says which link and where it points."""
    link = folder
    for part in Path(name).parts:
        link = link / part
        if link.is_symlink():
            target = os.readlink(link)
            broken = "" if link.exists() else ", which does not exist"
            return (f"{link.relative_to(folder)} is a symbolic link to {target}{broken}, outside the checkpoint "
                    f"folder: finch reads only files inside a checkpoint (refused). If it is this checkpoint's own "
                    f"file, replace the link by a copy: cp --remove-destination \"$(readlink -f {link})\" {link}")
    return f"{MANIFEST} names {name!r}, which is outside the checkpoint folder (refused)"


def state_problem(folder: str | Path) -> str | None:
    """What is wrong with the state files checkpoint `folder` is resumed from, read and checked as resuming would use
    them (a checksum says a file is as saved, not that it can be used): `trainer_state.json` missing, not JSON or of
    the wrong types; with a training state (`save_only_model` saves none), `scheduler.json`, `scaler.json` and the
    RNG states missing or malformed. None if all can be used."""
    from finch.distributed.runtime import check_rng_state
    from finch.state import TrainerState

    folder = Path(folder)
    values, problem = _read_json(folder / STATE)
    if problem is None:
        problem = TrainerState.problem_in(values)
    if problem is not None:
        return f"{STATE}: {problem}"
    if (folder / "training_args.json").exists():
        values, problem = _read_json(folder / "training_args.json")
        if problem is not None or not isinstance(values, dict):
            return f"training_args.json: {problem or 'not a JSON object of the arguments'}"
    saved = [name for name in ("optimizer.pt", "scheduler.json", "scaler.json", "rng_state.json")
             if (folder / name).exists()]
    if not saved:
        return None  # saved with save_only_model: the weights and the trainer's state only
    for name in ("scheduler.json", "scaler.json", "rng_state.json", *sorted(p.name for p in folder.glob(
            "rng_state_*.json"))):
        values, problem = _read_json(folder / name)
        if problem is None and name.startswith("rng_state"):
            try:
                check_rng_state(values)
            except (ValueError, TypeError, RuntimeError, OverflowError) as error:
                problem = f"not the RNG states finch saves ({error})"
        elif problem is None and not isinstance(values, (dict, type(None))):
            problem = f"it holds a JSON {type(values).__name__}, not a state object"
        if problem is not None:
            return f"{name}: {problem}"
    return None


def _read_json(path: Path) -> tuple[Any, str | None]:
    """The JSON in `path`, or what keeps it from being read."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, "missing (the manifest does not list it: removed, or the save did not finish)"
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"not readable JSON ({str(error).splitlines()[0] if str(error) else type(error).__name__})"


def written_by_transformers(folder: str | Path) -> bool:
    """Whether checkpoint `folder` was saved by transformers.Trainer: no finch manifest, and HF's pickled arguments,
    scheduler or RNG state (`rng_state_<rank>.pth` on several processes)."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return False
    return any((folder / name).is_file() for name in TRANSFORMERS_FILES) or any(folder.glob("rng_state_*.pth"))


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


# ---- which checkpoints there are, and whose ------------------------------------------------------------------------
def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders in `output_dir` of every run, oldest step first (whole or not: `verify`).
    A folder of that name holding neither a manifest nor a trainer state is not a checkpoint (a save is renamed into
    place with both): it is somebody's, and nothing here reads, rotates or deletes it."""
    return sorted(filter(is_checkpoint, Path(output_dir).glob(f"{PREFIX}*")), key=step_of)


def is_checkpoint(folder: Path) -> bool:
    """A `checkpoint-<step>` folder with a manifest or a trainer state (finch's, or transformers.Trainer's)."""
    return re.fullmatch(rf"{PREFIX}\d+", folder.name) is not None and folder.is_dir() and \
        ((folder / MANIFEST).is_file() or (folder / STATE).is_file())


def checkpoint_around(path: str | Path) -> Path | None:
    """The checkpoint folder that `path` is, or is inside (None: it is in none)."""
    path = Path(path).resolve()
    return next((folder for folder in (path, *path.parents) if is_checkpoint(folder)), None)


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


_SKIPPED: set[tuple[str, str]] = set()  # (folder, problem) already warned about in this process


class _WholeCheckpoints:
    """`verify` once per folder (it reads every byte), warning once about each damaged one."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.problems = quiet, {}

    def __call__(self, folder: Path) -> bool:
        if folder not in self.problems:
            self.problems[folder] = verify(folder) or state_problem(folder)
            said = (str(folder), self.problems[folder])
            if self.problems[folder] is not None and not self.quiet and said not in _SKIPPED:
                _SKIPPED.add(said)  # the CLI's checks and train() look at the same folders: said once
                logger.warning("skipping %s: %s", folder, self.problems[folder])
        return self.problems[folder] is None


def describe_runs(folders: list[Path]) -> str:
    """`run 3f2a9c01: checkpoint-20, checkpoint-30 (last saved 2025-05-01 12:00)` for each run, newest last."""
    runs: dict[str, list[Path]] = {}
    for folder in folders:
        runs.setdefault(_who_saved(folder), []).append(folder)
    parts = []
    for who, found in sorted(runs.items(), key=lambda item: max(map(saved_at, item[1]))):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(map(saved_at, found))))
        parts.append(f"{who}: {', '.join(f.name for f in found)} (last saved {when})")
    return "; ".join(parts)


def _who_saved(folder: Path) -> str:
    run_id = run_of(folder)
    if run_id is not None:
        return f"run {run_id[:8]}"
    if written_by_transformers(folder):
        return "a transformers.Trainer run"
    if _manifest(folder) is None:
        lost = lost_manifest_run(folder)
        return f"run {lost[:8]}, damaged (its {MANIFEST} is lost)" if lost else f"damaged (no readable {MANIFEST})"
    return "an older finch's run (no run id)"


def lost_manifest_run(folder: str | Path) -> str | None:
    """The run id a checkpoint without a readable manifest names in its trainer state (a damaged save of that run),
    or None."""
    folder = Path(folder)
    if _manifest(folder) is not None:
        return None
    values, problem = _read_json(folder / STATE)
    run_id = values.get("run_id") if problem is None and isinstance(values, dict) else None
    return run_id if isinstance(run_id, str) else None


def set_aside_name(folder: Path) -> str:
    """The `previous-runs/` subfolder for the checkpoints of the run that saved `folder`."""
    run_id = run_of(folder)
    if run_id is not None:
        return f"run-{run_id[:8]}"
    return "transformers-trainer-run" if written_by_transformers(folder) else "older-finch-run"


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
    doomed = folder.with_name(leftover_name("tmp", folder.name, run_id))
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
