"""Deciding what a `train()` call resumes, and refusing a resume that would not continue the same run.

`plan_resume` makes the decision with every check that needs no weights (whose checkpoints are in the folder,
whether the folder is a whole checkpoint, the arguments that fix the data order, the data and model fingerprints,
other runs' checkpoints in the way), reading files only. So the CLI calls it before loading the model, and
`Trainer.train` calls the same function before writing anything: both refuse the same resumes with the same
message. `continue_state` then merges the checkpoint's progress with this run's plan.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path

from finch.args import TrainingArguments, total_training_steps
from finch.distributed.runtime import Launch
from finch.errors import OutputError, ResumeError
from finch.runs.fingerprint import Fingerprint
from finch.runs.folders import (
    MANIFEST,
    PREFIX,
    STATE,
    checkpoints,
    describe_runs,
    is_checkpoint,
    latest_checkpoint,
    latest_checkpoint_of_launch,
    lost_manifest_run,
    run_of,
    set_aside_name,
    state_problem,
    step_of,
    verify,
    world_size_of,
    written_by_transformers,
)
from finch.state import TrainerState

logger = logging.getLogger("finch")
# Arguments that decide the data order or the step count: resuming with others changes the run, not just its end.
NOT_RESTARTED = Launch()  # outside torchrun, or its first attempt
RESUME_FIXED = ("seed", "data_seed", "per_device_train_batch_size", "gradient_accumulation_steps",
                "train_sampling_strategy", "dataloader_drop_last")


PREVIOUS_RUNS = "previous-runs"  # where a fresh Trainer.train() moves other runs' checkpoints


def plan_resume(output_dir: str | Path, resume: str | Path | bool | None, args: TrainingArguments,
                fingerprint: Fingerprint | None = None, launch: Launch = NOT_RESTARTED,
                set_aside: bool = False) -> Path | None:
    """The checkpoint `train(resume_from_checkpoint=resume)` continues from (None: a fresh run), after every check
    that needs no weights. Reads files only; writes and loads nothing, so the CLI calls it before loading the model.

    Args:
        output_dir: the run's output folder (`args.output_dir`).
        resume: None or False for a fresh run; True for the newest whole checkpoint in `output_dir` (of the run that
            saved last, when it holds several runs'); or a checkpoint folder.
        args: the run's arguments: those that fix the data order must equal the checkpoint's, and
            `overwrite_output_dir=True` lets a fresh run replace other runs' checkpoints.
        fingerprint: the run's data and model fingerprints; None (or a None field) skips that check.
        launch: the torchrun launch of this process: once torchrun has restarted it (`--max-restarts`), the newest
            whole checkpoint this launch saved replaces `resume` (see `_after_restart`).
        set_aside: a fresh run in a folder with other runs' checkpoints moves them, whole and unchanged, into
            `previous-runs/<run id>/` (with a warning) instead of refusing: `Trainer.train()` does, because HF's
            course trains twice into one `output_dir`; `finch train` refuses and lets the user choose.

    Returns:
        The checkpoint folder to resume, or None.

    Raises:
        ResumeError: a fresh run in a folder with another run's checkpoints; nothing to resume; no such folder; not
            a checkpoint; a damaged checkpoint; other seed, batch size, accumulation or sampling; other training
            data or another model; another run's checkpoints at the steps this run would save.
    """
    output_dir = Path(output_dir)
    overwrite = args.overwrite_output_dir
    _check_no_foreign_checkpoint_names(output_dir, args)
    if launch.restarted:
        resume = _after_restart(output_dir, resume, launch)
    if resume is None or resume is False:
        found = checkpoints(output_dir)
        if found and not overwrite and set_aside:
            set_aside_checkpoints(output_dir, found)
        elif found and not overwrite:
            raise ResumeError(
                f"output_dir {output_dir} already holds checkpoints of another run ({describe_runs(found)}); a new "
                f"run there would mix with them. {_choices_for(found)}")
        return None
    folder = _folder_to_resume(output_dir, resume)
    check_whole(folder)
    check_compatible(folder, args)
    saved = TrainerState.load_from_json(folder / STATE)
    check_named_for_its_step(folder, saved)
    check_fingerprint(folder, saved, fingerprint)
    if not overwrite:
        _check_no_collision(output_dir, folder, saved, args)
    return folder


def _choices_for(found: list[Path]) -> str:
    """What a fresh run can do about other runs' checkpoints in its output_dir."""
    rest = "delete them with overwrite_output_dir=True (CLI: --overwrite-output-dir), or choose another output_dir"
    if all(map(written_by_transformers, found)):
        return f"finch cannot resume transformers.Trainer's checkpoints (to train on from their weights, pass " \
               f"{found[-1]} as the model); {rest}"
    return f"Resume it with resume_from_checkpoint=True (CLI: --resume auto), {rest}"


def set_aside_checkpoints(output_dir: Path, found: list[Path]) -> None:
    """Move other runs' checkpoint folders into `output_dir/previous-runs/<run id>/` (renames in one file system:
    nothing is copied, changed or deleted), so a fresh run neither mixes with them nor replaces them."""
    described = describe_runs(found)
    moved_to = set()
    for folder in found:
        place = output_dir / PREVIOUS_RUNS / set_aside_name(folder)
        place.mkdir(parents=True, exist_ok=True)
        target, copy = place / folder.name, 1
        while target.exists():  # the same run id and step set aside before: keep both
            target, copy = place / f"{folder.name}.{copy}", copy + 1
        folder.rename(target)
        moved_to.add(str(place))
    logger.warning("output_dir %s held checkpoints of another run (%s): moved them unchanged to %s so this run "
                   "starts fresh without mixing with them or replacing them (resume_from_checkpoint=True continues "
                   "the newest run instead; overwrite_output_dir=True deletes them)", output_dir, described,
                   ", ".join(sorted(moved_to)))


def _after_restart(output_dir: Path, resume: str | Path | bool | None, launch: Launch) -> str | Path | bool | None:
    """What a worker that torchrun restarted resumes: the newest whole checkpoint its launch saved, whatever the
    command asked (it is the first attempt's request: a fresh start would refuse the launch's own checkpoints, and a
    given folder would repeat the steps saved since); the request itself while the launch has saved nothing."""
    if launch.id == "none":
        logger.warning("torchrun restarted the workers, and its rendezvous id is 'none', torchrun's default that every "
                       "launch without --rdzv-id shares: a checkpoint of an earlier launch in %s cannot be told "
                       "from this one's. Give each job its own id (torchrun --rdzv-id $SLURM_JOB_ID; finch train "
                       "--rdzv-id)", output_dir)
    found = latest_checkpoint_of_launch(output_dir, launch.id)
    if found is None:
        return resume
    logger.warning("torchrun restarted the workers (restart %d): resuming %s, the newest whole checkpoint this "
                   "launch saved", launch.restarts, found)
    return found


def _folder_to_resume(output_dir: Path, resume: str | Path | bool) -> Path:
    if resume is True:
        present = checkpoints(output_dir)
        if present and all(map(written_by_transformers, present)):
            raise _written_by_transformers(f"resume_from_checkpoint=True, but the checkpoints in {output_dir} "
                                           f"({', '.join(f.name for f in present)}) were", present[-1])
        found = latest_checkpoint(output_dir)  # warns about each one it skips, and why
        if found is None:
            held = f"no whole finch checkpoint ({describe_runs(present)})" if present else "no checkpoint"
            raise ResumeError(f"resume_from_checkpoint=True but {output_dir} holds {held}. Start without resuming, "
                              f"or pass a checkpoint folder")
        others = [f for f in checkpoints(output_dir) if run_of(f) != run_of(found)]
        if others:
            logger.warning("%s holds checkpoints of several runs; resuming %s, from the run that saved last. Other "
                           "runs' checkpoints are left alone: %s", output_dir, found, describe_runs(others))
        return found
    folder = Path(resume)
    if folder.is_file() and is_checkpoint(folder.parent):
        raise ResumeError(f"{folder} is a file of a checkpoint, not a checkpoint folder: pass its folder, "
                          f"{folder.parent}")
    if folder.is_file():
        raise ResumeError(f"{folder} is a file, not a checkpoint folder: pass a {PREFIX}<step> folder, or "
                          f"resume_from_checkpoint=True (CLI: --resume auto) for the newest one in {output_dir}")
    if not folder.is_dir():
        places = dict.fromkeys(p for p in (output_dir, folder.parent) if p.is_dir())
        present = [f"{place}: {', '.join(f.name for f in checkpoints(place)) or 'none'}" for place in places]
        raise ResumeError(f"no such checkpoint folder: {folder}. Checkpoints present: "
                          f"{'; '.join(present) or 'none'} (resume_from_checkpoint=True picks the newest whole one)")
    if not (folder / STATE).exists() and not (folder / MANIFEST).exists():  # with a manifest: a damaged one
        inner = checkpoints(folder)
        hint = (f"; it holds {', '.join(f.name for f in inner)}: pass one of those, or resume_from_checkpoint=True "
                f"(CLI: --resume auto) with output_dir={folder}") if inner else f"; pass a {PREFIX}<step> folder"
        raise ResumeError(f"{folder} is not a finch checkpoint folder (no {STATE}){hint}")
    return folder


def check_whole(folder: Path) -> None:
    """Raise `ResumeError` unless checkpoint `folder` is finch's and whole (every file as its manifest lists it).
    A transformers.Trainer checkpoint is not called damaged: the message says whose it is and how to go on."""
    if written_by_transformers(folder):
        raise _written_by_transformers(f"checkpoint {folder} was", folder)
    problem = verify(folder) or state_problem(folder)
    if problem is not None:
        raise ResumeError(f"checkpoint {folder} is damaged: {problem}; resume from an earlier one "
                          f"(resume_from_checkpoint=True picks the newest whole one)")


def _written_by_transformers(what: str, newest: Path) -> ResumeError:
    """The refusal of a transformers.Trainer checkpoint: `what` ("checkpoint X was", "the checkpoints in D were")
    is not damaged, why finch cannot resume it, and how to go on from its weights (`newest`'s)."""
    return ResumeError(f"{what} written by transformers.Trainer, not by finch: not damaged, but finch cannot resume "
                       f"a transformers.Trainer checkpoint (finch's resume needs the manifest, data position and RNG "
                       f"state that finch saves with each checkpoint). To go on from its weights, start a fresh "
                       f"run with the checkpoint as the model: "
                       f"model=AutoModelForSequenceClassification.from_pretrained('{newest}') "
                       f"(CLI: finch train --model {newest}); or resume it with transformers.Trainer")


def check_compatible(folder: str | Path, args: TrainingArguments) -> None:
    """Raise `ResumeError` if `folder` was saved with arguments that set a different data order than `args` do, or
    by another number of processes (unless `allow_world_size_change`: then the global batch must be the same)."""
    path = Path(folder) / "training_args.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved_world, world = world_size_of(folder), args.world_size
    fixed = RESUME_FIXED
    if saved_world != world:
        if not args.allow_world_size_change:
            raise ResumeError(
                f"cannot resume from {folder} exactly: it was saved by {saved_world} process(es), this run has "
                f"{world}. Each rank's random state (dropout) and its share of every batch belong to the number of "
                f"processes. Relaunch with {saved_world} process(es) (torchrun --nproc-per-node {saved_world}), or set "
                f"allow_world_size_change=True (CLI: --allow-world-size-change) to continue without the exact "
                f"guarantee")
        per_device = saved.get("per_device_train_batch_size")
        if per_device is not None and per_device * saved_world != args.per_device_train_batch_size * world:
            raise ResumeError(
                f"cannot resume from {folder}: its global batch was {per_device} x {saved_world} process(es) = "
                f"{per_device * saved_world} examples, this run's is {args.per_device_train_batch_size} x {world} = "
                f"{args.per_device_train_batch_size * world}, which changes every step. Set "
                f"per_device_train_batch_size={per_device * saved_world // world} if that divides evenly, or start a "
                f"new run in another output_dir")
        logger.warning("resuming %s, saved by %d process(es), with %d (allow_world_size_change=True): the data order "
                       "is the same, but dropout's random streams and the order of float sums differ, so the run "
                       "is not the one an uninterrupted run would have been", folder, saved_world, world)
        fixed = tuple(name for name in RESUME_FIXED if name != "per_device_train_batch_size")
    changed = [f"{name}: {saved.get(name)!r} then, {getattr(args, name)!r} now" for name in fixed
               if name in saved and saved[name] != getattr(args, name)]
    if bool(saved.get("fsdp")) != bool(args.fsdp):  # FSDP2 saves the optimizer by parameter name, DDP by position
        changed.append(f"fsdp: {saved.get('fsdp') or 'off'!r} then, {args.fsdp or 'off'!r} now")
    if changed:
        raise ResumeError(f"cannot resume from {folder} exactly: {'; '.join(changed)}. Use the arguments it was "
                          f"saved with, or start a new run in another output_dir")


def check_fingerprint(folder: str | Path, saved: TrainerState, fingerprint: Fingerprint | None) -> None:
    """Raise `ResumeError` if this run's data or model differs from checkpoint `folder`'s (warn if it has none)."""
    if fingerprint is None:
        return
    if saved.data_fingerprint is None or saved.model_fingerprint is None:
        logger.warning("%s was saved by an older finch without data and model fingerprints: resuming without "
                       "checking that the training data and the model are the same", folder)
    if None not in (saved.data_fingerprint, fingerprint.data) and saved.data_fingerprint != fingerprint.data:
        raise ResumeError(
            f"cannot resume from {folder}: the training data differs from the data this checkpoint was trained on "
            f"(other rows, labels, order or tokenization; fingerprint {fingerprint.data[:12]} now, "
            f"{saved.data_fingerprint[:12]} then). Use the same data, or start a new run in another output_dir")
    if None not in (saved.model_fingerprint, fingerprint.model) and saved.model_fingerprint != fingerprint.model:
        raise ResumeError(
            f"cannot resume from {folder}: the model differs from the one this checkpoint was trained on (another "
            f"class or configuration: layers, sizes, labels, dropout...). Use the same model, or start a new run in "
            f"another output_dir")


def check_named_for_its_step(folder: Path, saved: TrainerState) -> None:
    """Refuse a `checkpoint-<N>` folder whose trainer state is at another step (renamed, or copied under another
    name): `resume_from_checkpoint=True` would pick it by a step it does not hold, and this run's save of step N
    would replace it, losing the step it does hold. A folder not named like a checkpoint claims no step."""
    if re.fullmatch(rf"{PREFIX}\d+", folder.name) and step_of(folder) != saved.global_step:
        raise ResumeError(f"{folder} holds step {saved.global_step} (its {STATE}), not step {step_of(folder)}: it "
                          f"was renamed or copied. Rename it back to {PREFIX}{saved.global_step}, or to a name "
                          f"that is not checkpoint-<step> (e.g. saved-{saved.global_step}) and pass that folder")


def _check_no_foreign_checkpoint_names(output_dir: Path, args: TrainingArguments) -> None:
    """Refuse an output folder holding a `checkpoint-<step>` that is not a checkpoint (no manifest, no trainer state:
    the user's, or a copy) at a step this run may save (any, when its length is set in epochs): it is never read or
    deleted, so that save could not be put in its place, and the run would fail there instead of now."""
    if args.save_strategy == "no":
        return
    foreign = sorted((p for p in output_dir.glob(f"{PREFIX}*") if re.fullmatch(rf"{PREFIX}\d+", p.name)
                      and not is_checkpoint(p) and (args.max_steps <= 0 or step_of(p) <= args.max_steps)), key=step_of)
    if foreign:
        names = ", ".join(p.name for p in foreign)
        raise OutputError(f"output_dir {output_dir} holds {names}, which is not a finch checkpoint (no manifest.json "
                          f"or trainer_state.json) but has the name of a checkpoint this run may save: that save "
                          f"could not replace it. Rename or move it, or choose another output_dir (--output-dir)")


def _check_no_collision(output_dir: Path, folder: Path, saved: TrainerState, args: TrainingArguments) -> None:
    """Refuse a resume that would later save over other runs' checkpoints in `output_dir` (same step numbers)."""
    end = total_training_steps(args, saved.steps_per_epoch) if saved.steps_per_epoch else math.inf
    clashing = [f for f in checkpoints(output_dir)
                if saved.global_step < step_of(f) <= end and run_of(f) != saved.run_id]
    damaged = [f.name for f in clashing if lost_manifest_run(f) == saved.run_id]
    if damaged:
        raise ResumeError(
            f"{output_dir} holds {', '.join(damaged)} of this very run, damaged: the manifest.json is lost, so it can "
            f"neither be resumed nor safely replaced, and this run saves that step again. Delete or move "
            f"{', '.join(damaged)}, then resume again from {folder}; or pass overwrite_output_dir=True (CLI: "
            f"--overwrite-output-dir) to let finch replace it")
    if clashing:
        raise ResumeError(
            f"{output_dir} holds checkpoints of another run at steps this run will save "
            f"({describe_runs(clashing)}). Move them away, delete them with overwrite_output_dir=True (CLI: "
            f"--overwrite-output-dir), or resume {folder} into another output_dir")


def continue_state(saved: TrainerState, fresh: TrainerState, folder: str | Path) -> TrainerState:
    """The resumed run's state: progress from the checkpoint (`saved`), the plan from this run (`fresh`).

    The plan (`max_steps`, `num_train_epochs`, logging/eval/save intervals) is this run's, so a resume may train
    longer (or shorter) than first planned. The learning-rate schedule cannot follow exactly: its position comes
    from the checkpoint but its shape from the new total, so from the resumed step on the LR is that of a run
    planned for the new total (it may jump, e.g. back up from 0 at the end of a linear decay). A warning says so;
    for an exact schedule, plan the full length from the start.

    Raises:
        ResumeError: the checkpoint is already past the new `max_steps`, or (an older checkpoint without a data
            fingerprint) its steps per epoch differ from this run's.
    """
    if saved.steps_per_epoch and saved.steps_per_epoch != fresh.steps_per_epoch:
        raise ResumeError(f"{folder} was saved with {saved.steps_per_epoch} steps per epoch, this run has "
                          f"{fresh.steps_per_epoch}: the training data, batch size or accumulation changed. Use the "
                          f"ones it was saved with, or start a new run in another output_dir")
    if saved.global_step > fresh.max_steps:
        raise ResumeError(f"{folder} is at step {saved.global_step}, past this run's {fresh.max_steps} steps; raise "
                          f"max_steps (or num_train_epochs) to at least {saved.global_step}, or resume an earlier "
                          f"checkpoint")
    if saved.max_steps and saved.max_steps != fresh.max_steps:
        logger.warning("resuming %s with %d steps in all instead of %d: the learning-rate schedule was planned for "
                       "%d steps and now continues as one planned for %d (not what a run planned for %d from the "
                       "start would do before step %d)", folder, fresh.max_steps, saved.max_steps, saved.max_steps,
                       fresh.max_steps, fresh.max_steps, saved.global_step)
    return dataclasses.replace(
        saved, max_steps=fresh.max_steps, num_train_epochs=fresh.num_train_epochs, logging_steps=fresh.logging_steps,
        eval_steps=fresh.eval_steps, save_steps=fresh.save_steps, train_batch_size=fresh.train_batch_size,
        data_fingerprint=fresh.data_fingerprint, model_fingerprint=fresh.model_fingerprint)
