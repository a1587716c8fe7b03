"""Writing what the user asked for without destroying what they have.

Output paths are checked before any work starts (a folder that is a file, a parent that is a file, a folder that
cannot be written), and files are written under a temporary name beside their final one and renamed into place
only once complete: a failure, a typo in an input or a Ctrl-C leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from finch.errors import OutputError


def check_output_dir(folder: str | Path) -> None:
    """Raise `OutputError` unless `folder` is, or can be created as, a writable folder. Creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder}: a file of that name exists; choose another --output-dir")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output folder {folder}: {existing} is a file, so the folder cannot be made there; "
                          f"choose another --output-dir")
    _check_writable(existing, f"output folder {folder}")


# What `finch train` writes at the top of its output folder (checkpoints aside: `finch.runs.resume` guards those).
RUN_OUTPUTS = ("model", "metrics.json", "log.jsonl", "report.html", "eval_examples.jsonl", "finch_config.yaml",
               "training_args.json")


def check_no_earlier_outputs(folder: str | Path) -> None:
    """Raise `OutputError` when `folder` holds files a new `finch train` would replace (an earlier run's outputs, or
    the user's own files of those names), so that nothing is overwritten unasked. Reads only. A folder with
    checkpoints is left to `finch.runs.resume.plan_resume`, which refuses it naming the runs and how to resume them."""
    from finch.runs.folders import checkpoints

    if checkpoints(folder):
        return
    found = [name for name in RUN_OUTPUTS if (Path(folder) / name).exists()]
    if found:
        listed = ", ".join(f"{name}/" if (Path(folder) / name).is_dir() else name for name in found)
        raise OutputError(f"output folder {folder} already holds {listed} (an earlier run's outputs?); a new run "
                          f"would replace them. Choose another --output-dir, continue that run with --resume auto "
                          f"(if it saved checkpoints), or pass --overwrite-output-dir to replace them")


_HELD: dict[str, list] = {}  # folder (real path) -> [its locked descriptor or None, how many holders in this process]


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder` for one run: while this process is inside, another finch run into the same folder (another
    process on this machine) is refused instead of mixing its files with this one's.

    An exclusive `flock` on the folder itself: nothing is written into it, and the kernel drops the lock when the
    process ends, however it ends (no stale lock after a crash or SIGKILL). Re-entrant within a process (`finch
    train` holds it, then its `Trainer.train()`). The folder is made if missing, and removed again on the way out if
    this made it and it is still empty. A filesystem without locks (some network ones) holds nothing."""
    path = Path(folder)
    check_output_dir(path)  # a file of that name, a folder that cannot be written: said here, as everywhere
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    if key not in _HELD:
        _HELD[key] = [_lock(path), 0]
    _HELD[key][1] += 1
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if not _HELD[key][1]:
            descriptor = _HELD.pop(key)[0]
            if descriptor is not None:
                os.close(descriptor)  # releases the lock
            if made:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty


@contextlib.contextmanager
def turn_lock(path: str | Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive `flock` on the lock file `path` (made if missing): for processes that take
    turns at one thing, such as search workers keeping a study's best model. Not re-entrant; released on exit and,
    by the kernel, when the process ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # NFS's flock is an fcntl lock: it needs write
    try:
        _flock(descriptor, wait=True)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _flock(descriptor: int, wait: bool) -> bool:
    """An exclusive `flock` on `descriptor`: False on a system without `fcntl`; `BlockingIOError` when another
    process holds it and `wait` is False."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return False
    fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    return True


def _lock(path: Path) -> int | None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if not _flock(descriptor, wait=False):
            os.close(descriptor)
            return None
    except BlockingIOError:
        os.close(descriptor)
        raise OutputError(f"{path} is in use: another finch run is training into it now. Wait for it to end, or "
                          f"choose another output folder (--output-dir)") from None
    except OSError:  # no locks on this filesystem
        os.close(descriptor)
        return None
    return descriptor


# Files that make the folder holding them a run's, a model's, a checkpoint's or a search's: no `--out` replaces
# a file in such a folder, except that command's own earlier output (the eval_*.json `finch eval` writes beside
# the model, say). The names themselves are never replaced, wherever they are.
FOLDER_MARKERS = ("finch.json", "config.json", "manifest.json", "trainer_state.json", "training_args.json",
                  "training_args.bin", "log.jsonl", "finch_config.yaml", "model.safetensors",
                  "model.safetensors.index.json", "pytorch_model.bin", "adapter_config.json",
                  "adapter_model.safetensors", "search.db", "trial.json", "search_trial.json",
                  "scheduler.json", "optimizer.pt")
KEPT_NAMES = (*FOLDER_MARKERS, "metrics.json", "eval_examples.jsonl", "all_results.json", "eval_results.json",
              "train_results.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def check_output_file(path: str | Path, *, inputs: tuple[str | Path, ...] = (), suffixes: tuple[str, ...] = (),
                      model_dir: str | Path | None = None, command: str | None = None,
                      overwrite: bool = False) -> None:
    """Raise `OutputError` unless `path` can be written as a file without touching any of `inputs`, ends with one
    of `suffixes` (when given), and replaces nothing that finch did not write as `finch <command>`'s output:

    - a file of a run, model, checkpoint or search folder (one beside `FOLDER_MARKERS`, or inside `model_dir` or the
      run folder around it) is never replaced, unless it is this command's own earlier output under a name of its
      own (a config, weights or log overwritten by metrics would be lost, and the model would no longer load);
    - any other existing file is replaced only when it is this command's own earlier output, or with `overwrite`.
    """
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"--out {path}: the file must end with {' or '.join(suffixes)} (a typo here could replace "
                          f"a file of another kind); choose another --out")
    for given in inputs:
        if Path(given).exists() and path.exists() and os.path.samefile(given, path):
            raise OutputError(f"--out {path} is the input file {given}: writing it would destroy the input; "
                              f"choose another --out")
    if not path.is_file():
        return _check_can_write(path)
    ours = command is not None and is_own_output(path, command)
    owner = _owning_folder(path, model_dir)
    if owner is not None and (not ours or path.name in KEPT_NAMES):
        kind = "model" if (owner / "config.json").is_file() else "run"
        raise OutputError(f"--out {path} would replace {path.name}, a file of the {kind} folder {owner}, and lose it; "
                          f"choose an --out outside it (or a new file name)")
    if not ours and not overwrite:
        said = f"`finch {command}`" if command else "finch"
        raise OutputError(f"--out {path} already exists and is not an earlier output of {said}; pass --overwrite to "
                          f"replace it, or choose another --out")
    _check_can_write(path)


def check_not_another_runs_report(out: str | Path, output_dir: str | Path) -> None:
    """Raise `OutputError` when a report's `--out` lands in another run's (or search's) folder: a reader there
    would take it for that run's report (and its own report, at that name, would be replaced)."""
    folder = Path(out).resolve().parent
    if folder == Path(output_dir).resolve() or not any((folder / name).exists() for name in FOLDER_MARKERS):
        return
    raise OutputError(f"--out {out} is in the folder of another run or model ({folder}), not of {output_dir}: a "
                      f"reader there would take it for that folder's report; choose an --out outside it (the "
                      f"default is {Path(output_dir) / 'report.html'})")


def _run_around(folder: Path) -> Path:
    """`folder`, or the run folder around it when it is finch train's DIR/model (the run has its log.jsonl)."""
    return folder.parent if (folder.parent / "log.jsonl").is_file() else folder


def _owning_folder(path: Path, model_dir: str | Path | None) -> Path | None:
    """The run, model, checkpoint or search folder `path` is a file of, or None."""
    path = path.resolve()
    if model_dir is not None and Path(model_dir).is_dir():
        model = Path(model_dir).resolve()
        for folder in (model, _run_around(model)):
            if path.is_relative_to(folder):
                return folder
    if path.name in FOLDER_MARKERS or any((path.parent / name).exists() for name in FOLDER_MARKERS):
        return path.parent
    return None


def is_own_output(path: str | Path, command: str) -> bool:
    """Whether `path` reads as what `finch <command>` writes: `eval` a JSON object of eval_* metrics, `predict` a
    CSV or JSON Lines file whose first row has its predicted_* columns, `report` finch's HTML page. Reads only the
    file's start (and, for a report, its end), so a large file costs nothing."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
            if command == "report":
                file.seek(max(0, os.fstat(file.fileno()).st_size - 4096))
                tail = file.read()
    except OSError:
        return False
    text = head.decode("utf-8", errors="replace")
    if command == "report":
        return b'<meta name="generator" content="finch">' in head or b"generated by finch on" in tail
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if command == "eval":
        try:
            metrics = json.loads(head)
        except ValueError:
            return False
        return isinstance(metrics, dict) and bool(metrics) and all(key.startswith("eval_") for key in metrics)
    if command == "predict" and path.suffix.lower() == ".jsonl":
        try:
            row = json.loads(first)
        except ValueError:
            return False
        return isinstance(row, dict) and bool(PREDICTED & set(row))
    if command == "predict":
        return bool(PREDICTED & set(next(csv.reader([first]), [])))
    return False


PREDICTED = {"predicted_label", "predicted_labels", "predicted_value"}  # what finch predict adds to each row


def _check_can_write(path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"--out {path}: {folder} is a file, so {path} cannot be written; choose another --out")
    _check_writable(folder, f"--out {path}")


def _check_writable(folder: Path, what: str) -> None:
    try:  # os.access is not enough: root passes it on read-only mounts
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(f"{what}: cannot write in {folder} ({error.strerror or error}); choose a writable "
                          f"place") from error


@contextlib.contextmanager
def replaced_on_success(path: str | Path, mode: str = "w", **open_options: object) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on any exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private (0600); the result is an ordinary file
    try:
        with os.fdopen(descriptor, mode, **open_options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` completely or not at all."""
    with replaced_on_success(path, encoding="utf-8") as file:
        file.write(text)
