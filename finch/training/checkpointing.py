"""Checkpoints during a run: writing them (atomically, on the writing ranks, in the background where it is safe),
waiting for the one in flight, and resuming from one. Part of `finch.training.trainer.Trainer`: it reads the
trainer's model, optimizer, scheduler, state, arguments, runtime, callbacks and checkpoint writer; the files
themselves are `finch.runs.checkpoint`'s and `finch.runs.folders`' job."""

from __future__ import annotations

import logging
from pathlib import Path

import transformers

from finch.distributed.runtime import rng_state
from finch.events import Event
from finch.runs import checkpoint
from finch.runs import folders as run_folders
from finch.runs.resume import continue_state
from finch.state import TrainerState
from finch.training.run import TrainingRun

logger = logging.getLogger("finch")

# `on_save` methods that do nothing: finch's base class has none (its events are no-ops by `__getattr__`), HF's one
_NO_OP_ON_SAVE = {None, getattr(getattr(transformers, "TrainerCallback", None), "on_save", None)}


def _moved_with_the_run(best: str | None, resumed: Path) -> str | None:
    """The best checkpoint's path, in the folder of the checkpoint resumed when the run's folder was moved or
    copied (or the path was relative to another working directory): it is saved as a path, and the old one would
    load another folder's weights at the end (or none), and let rotation delete this run's best checkpoint."""
    if best is None:
        return None
    here = resumed.parent / Path(best).name
    if Path(best).parent.resolve() == resumed.parent.resolve() or not run_folders.is_checkpoint(here):
        return best
    logger.info("the best checkpoint %s is taken from this run's folder: %s (the run's folder was moved or copied)",
                best, here)
    return str(here)


class CheckpointingMixin:
    """Saving and resuming the run's checkpoints (see the module's docstring)."""

    def _finish_checkpoint_quietly(self) -> None:
        """On the way out of a failed run (this rank only, no collective): the checkpoint in flight is finished,
        and a failure to write it is logged, not raised over the error that ended the run."""
        try:
            self._checkpoint_writer.wait()
        except Exception as error:  # noqa: BLE001 (another error is on its way up)
            logger.error("the checkpoint being written when training stopped could not be written: %s", error)

    def _save_checkpoint(self, run: TrainingRun) -> Path:
        """Every rank's RNG state is gathered; rank 0 (each machine's first process with `save_on_each_node`) writes
        the checkpoint (atomically) and rotates, and the others wait for it.

        With `background_save` (not for sharded checkpoints, which every rank writes), the state is copied to host
        memory here and written by `self._checkpoint_writer`'s thread while training goes on: the checkpoint is
        whole on disk once `_wait_for_checkpoint` returns, on every rank (or every rank raises its error). The
        next save, the end of training, a stop signal, `save_model` and a callback that acts on saves (its
        `on_save` reads the folder) wait for it. Otherwise it is whole when this returns."""
        state, args = self.state, self.args
        run.nonfinite.flush(run.last_checkpoint)  # a step past the NaN/Inf limit is never saved
        path = Path(args.output_dir) / f"{run_folders.PREFIX}{state.global_step}"
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(path)
        state.stateful_callbacks = {type(cb).__name__: cb.state_dict() for cb in self.callback_handler.callbacks
                                    if hasattr(cb, "state_dict")}
        whole = self._run_state(run, rng_states=self.runtime.all_gather(rng_state()))
        shards_in = None
        background = self._background_save()
        if background:
            self._wait_for_checkpoint()  # one write in flight at most; its error raised here, before the next
        if self.runtime.sharded_checkpoints:  # FSDP2, sharded: every rank writes its part; rank 0 completes it
            shards_in = checkpoint.save_shards(args.output_dir, state, self.model,
                                               None if args.save_only_model else self.optimizer,
                                               self.runtime.on_main, self.runtime.is_main_process)
        else:  # FSDP2: gathered to rank 0 (one process: the state dicts as they are)
            whole.weights, whole.optimizer_state = self.runtime.full_state(self.model, self.optimizer)

        def write(saved: checkpoint.RunState) -> None:
            checkpoint.save_checkpoint(args.output_dir, saved, shards_in)
            run_folders.rotate_checkpoints(args.output_dir, args.save_total_limit, saved.state.best_model_checkpoint,
                                           saved.state.run_id, keep=path)

        if background:  # copied now (the next step changes the weights in place), written in the background
            writer = self._checkpoint_writer

            def start() -> None:
                copied = checkpoint.host_copy(whole)
                writer.start(lambda: write(copied), copied.ready)
            self.runtime.on_writers(start, args.save_on_each_node)
        else:
            self.runtime.on_writers(lambda: write(whole), args.save_on_each_node)
        run.last_checkpoint = str(path)
        if background and self.runtime.any_rank(self._acts_on_save())[0]:
            self._wait_for_checkpoint()
        self._fire(Event.ON_SAVE)
        return path

    def _background_save(self) -> bool:
        """`background_save`, unset: on for one process. Under torchrun a rank that fails makes the launcher stop
        the others, with a write in flight: the newest checkpoint would be lost and a restart would resume an older
        one (`test_max_restarts_resumes_the_launchs_newest_checkpoint_by_itself`). Never for sharded checkpoints,
        which every rank writes."""
        if self.runtime.sharded_checkpoints:
            return False
        if self.args.background_save is None:
            return self.runtime.world_size == 1
        return self.args.background_save

    def _wait_for_checkpoint(self) -> None:
        """Return once the checkpoint written in the background is whole on disk, on every rank (a collective);
        its write's error (`CheckpointError`) raised on every rank."""
        self.runtime.on_writers(self._checkpoint_writer.wait, self.args.save_on_each_node)

    def _acts_on_save(self) -> bool:
        """Whether a callback does something on `on_save` (HF's hub upload, a user's): it then gets the checkpoint
        whole on disk, as without background saves."""
        return any(getattr(type(callback), "on_save", None) not in _NO_OP_ON_SAVE
                   for callback in self.callback_handler.callbacks)

    def _run_state(self, run: TrainingRun, rng_states: list[dict] | None = None) -> checkpoint.RunState:
        """This run's state as one object, what a checkpoint holds (see `checkpoint.RunState`)."""
        return checkpoint.RunState(self.model, self.state, self.args, self.optimizer, self.lr_scheduler, run.scaler,
                                   self.processing_class, rng_states, self.runtime.launch.id)

    def _resume(self, run: TrainingRun, folder: Path, fresh: TrainerState) -> TrainerState:
        """Load `folder` into the model, optimizer, scheduler and scaler, and this rank's RNG state; its progress
        with this run's plan."""
        runtime = self.runtime
        saved = checkpoint.load_checkpoint(folder, self._run_state(run), rank=runtime.rank, sharded=runtime.sharded)
        state = continue_state(saved, fresh, folder)
        state.best_model_checkpoint = _moved_with_the_run(state.best_model_checkpoint, folder)
        state.is_local_process_zero, state.is_world_process_zero = fresh.is_local_process_zero, \
            fresh.is_world_process_zero
        if not (folder / checkpoint.rng_file(runtime.rank)).exists():  # saved by fewer ranks (allowed, not exact)
            runtime.seed_rank(self.args.seed, state.global_step)
        for callback in self.callback_handler.callbacks:
            callback_state = state.stateful_callbacks.get(type(callback).__name__)
            if callback_state is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(callback_state)
        logger.info("Resuming from %s at step %d (epoch %.2f)", folder, state.global_step, state.epoch)
        run.last_checkpoint = str(folder)
        return state
