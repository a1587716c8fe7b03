"""`Trainer`: HuggingFace's constructor and methods (`train`, `evaluate`, `predict`, `save_model`, callbacks).

The training loop in `train` reads top to bottom: for each step, its micro-batches (forward, backward, with the
loss normalised over every example of the step), clipping, the optimizer and scheduler, then logging, evaluation
and saving as the strategies say. Data order is a pure function of (seed, epoch), so resuming jumps to the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import EvalPrediction
from transformers.trainer_utils import TrainOutput

from finch import checkpoint, data, run_folders
from finch.args import TrainingArguments
from finch.callbacks import CallbackHandler, ProgressCallback, reporters
from finch.dropout import DropoutSwap
from finch.errors import ConfigError, DataError, ModelError
from finch.evaluation import EvaluationMixin, describe, split_outputs, to_device
from finch.fingerprint import Fingerprint, model_fingerprint
from finch.hf_names import as_finch_arguments, check_overrides
from finch.hub import Hub, HubCallback
from finch.nonfinite import NonFiniteGuard
from finch.optim import create_optimizer, create_scheduler, total_training_steps
from finch.outputs import run_lock
from finch.preemption import PreemptionGuard, TrainingPreempted
from finch.resume import continue_state, plan_resume
from finch.runtime import Runtime, rng_state, set_seed
from finch.state import TrainerControl, TrainerState
from finch.trainer_hf import HFMethodsMixin
from finch.trainer_outputs import OutputsMixin

logger = logging.getLogger("finch")


@dataclass
class TrainingRun:
    """What one `train()` call builds and the loop's helpers use, passed to them explicitly (never kept on the
    trainer, so nothing outlives the call by accident).

    Attributes:
        model: the module the training forward runs on: the trainer's model, wrapped in DDP when there are several
            processes and compiled with `torch_compile`; its parameters are the trainer's model's.
        scaler: fp16's gradient scaler, else None.
        nonfinite: counts NaN/Inf steps and decides whether the optimizer may step.
        dropout: finch's CPU dropout, swapped in around each micro-batch.
        last_checkpoint: the newest checkpoint this run saved or resumed from (named in error messages).
        learning_rate: the rate the last optimizer step used, which is what is logged (as HF logs it).
    """

    model: torch.nn.Module
    scaler: torch.amp.GradScaler | None
    nonfinite: NonFiniteGuard
    dropout: DropoutSwap
    last_checkpoint: str | None = None
    learning_rate: float | None = None


@dataclass
class LogWindow:
    """What the loop saw since the last log: summed loss (left on the device; read only at logging steps), items
    (of every rank), and this rank's samples and tokens."""

    loss: torch.Tensor
    start: float
    items: int = 0
    samples: int = 0
    tokens: int = 0
    steps: int = 0

    @classmethod
    def open(cls, device: torch.device, start: float | None = None) -> LogWindow:
        return cls(torch.zeros((), device=device), time.perf_counter() if start is None else start)


def _due(strategy: str, every: int, step: int, epoch_done: bool) -> bool:
    """Whether a `logging`/`eval`/`save` strategy with interval `every` asks for action at `step`."""
    return (strategy == "steps" and step % every == 0) or (strategy == "epoch" and epoch_done)


class Trainer(EvaluationMixin, OutputsMixin, HFMethodsMixin):
    """Fine-tunes `model` on `train_dataset` as `args` say; the API of `transformers.Trainer`.

    Args:
        model: a `transformers` model or any `nn.Module` whose forward returns a loss when given labels.
        args: `TrainingArguments` (defaults if None).
        data_collator: turns a list of examples into a batch; default: dynamic padding with `processing_class`.
        train_dataset, eval_dataset: `datasets.Dataset`s or torch datasets; `eval_dataset` may be a dict of them.
        processing_class: the tokenizer, saved with the model (`tokenizer=` is accepted with a warning).
        model_init: builds a fresh model for each `train()` (hyperparameter search).
        compute_metrics: `EvalPrediction -> dict` of metrics.
        callbacks: `TrainerCallback`s (instances or classes).
        optimizers: `(optimizer, lr_scheduler)` to use instead of the defaults.
        preprocess_logits_for_metrics: `(logits, labels) -> tensor`, applied batch by batch before gathering.
        compute_loss_func: `(outputs, labels, num_items_in_batch) -> loss` replacing the model's loss.
    """

    def __init__(self, model: torch.nn.Module | None = None, args: TrainingArguments | None = None,
                 data_collator: Callable | None = None, train_dataset: Any = None, eval_dataset: Any = None,
                 processing_class: Any = None, model_init: Callable[[], torch.nn.Module] | None = None,
                 compute_metrics: Callable[[EvalPrediction], dict] | None = None, callbacks: list | None = None,
                 optimizers: tuple = (None, None), preprocess_logits_for_metrics: Callable | None = None,
                 compute_loss_func: Callable | None = None, tokenizer: Any = None) -> None:
        _show_finch_logs()
        if tokenizer is not None:
            warnings.warn("Trainer: 'tokenizer' was renamed 'processing_class' in transformers; finch takes both.",
                          FutureWarning, stacklevel=2)
            processing_class = processing_class if processing_class is not None else tokenizer
        if model is None and model_init is None:
            raise ConfigError("Trainer needs a model: pass model=... or model_init=...")
        check_overrides(type(self), Trainer)  # an HF override point finch never calls: refused, not ignored
        self.args = as_finch_arguments(args, TrainingArguments)
        self.runtime = Runtime.for_args(self.args)  # joins torchrun's process group when there is one
        self.runtime.precision.apply()  # TF32 switches, when the precision decides them
        self.device, self.precision = self.runtime.device, self.runtime.precision
        # offline, no token, a repository that cannot be created: said now, not after training
        self.hub = Hub.for_trainer(self.args, self.runtime) if self.args.push_to_hub else None
        if not self.runtime.is_main_process:
            logger.setLevel(logging.WARNING)  # one run header, not one per rank; warnings still show
        self.model_init = model_init
        self.model = (model if model is not None else self._build_model()).to(self.device)
        self.processing_class = processing_class
        multiple = data.padding_multiple(self.args.pad_to_multiple_of, self.device.type, self.args.torch_compile,
                                         bf16=self.precision.name == "bf16")
        self.data_collator = (data.with_padding_multiple(data_collator, multiple) if data_collator is not None
                              else data.default_collator(processing_class, multiple))
        self.padding_multiple = getattr(self.data_collator, "pad_to_multiple_of", None)  # None: not ours to round
        self._uses_fast_dropout = (self.args.fast_dropout is not False and self.device.type == "cpu"
                                   and not self.args.torch_compile)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.compute_loss_func = compute_loss_func
        self.optimizer, self.lr_scheduler = optimizers
        if self.runtime.sharded and self.optimizer is not None:
            raise ConfigError("fsdp: finch makes the optimizer after sharding the model (it must hold the shards); "
                              "drop optimizers=(...) and set the optimizer through TrainingArguments (optim=...)")
        self._class_weights: torch.Tensor | None = None
        self.label_names = data.label_names_of(self.model, self.args.label_names)
        self.state = TrainerState(is_local_process_zero=self.runtime.is_local_main_process,
                                  is_world_process_zero=self.runtime.is_main_process)
        self.control = TrainerControl()
        # progress lines from rank 0 only; the writers among `reporters` check `state.is_world_process_zero`
        default_callbacks = [ProgressCallback()] if self.runtime.is_main_process else []
        default_callbacks += reporters(self.args.report_to)
        default_callbacks += [HubCallback(self.hub)] if self.hub is not None else []
        self.callback_handler = CallbackHandler(default_callbacks + list(callbacks or []))
        _name_labels(self.model, data.class_names(train_dataset))
        self.control = self._fire("on_init_end")

    # ---- callbacks ------------------------------------------------------------------------------------------------
    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add(callback)

    def pop_callback(self, callback: Any) -> Any:
        return self.callback_handler.pop(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.pop(callback)

    def _fire(self, event: str, **kwargs: Any) -> TrainerControl:
        return self.callback_handler.fire(event, self.args, self.state, self.control, model=self.model,
                                          processing_class=self.processing_class, optimizer=self.optimizer,
                                          lr_scheduler=self.lr_scheduler, **kwargs)

    # ---- training -------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Train; `resume_from_checkpoint=True` continues from the newest checkpoint in `output_dir`, a path from
        that one (see `finch.resume.plan_resume` for what is refused, before anything is written).
        Returns `TrainOutput(global_step, training_loss, metrics)`.

        Raises:
            OutputError: another finch run is training into `output_dir` now (see `finch.outputs.run_lock`)."""
        # one run at a time per output folder; its writer holds it (the other ranks write nothing there)
        with run_lock(self.args.output_dir) if self.runtime.is_main_process else contextlib.nullcontext():
            return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint: str | bool | None) -> TrainOutput:
        args, runtime = self.args, self.runtime
        if self.train_dataset is None:
            raise ConfigError("Trainer.train() needs a train_dataset")
        data.check_map_style(self.train_dataset, "train_dataset")
        fingerprint = Fingerprint.of(self.train_dataset, self.model)  # hashes the token ids: once per train()
        # rank 0 decides from the files and tells the others: every rank resumes the same checkpoint, or none
        # (after a torchrun restart: the newest checkpoint this launch saved, see `plan_resume`)
        resume = runtime.on_main(lambda: plan_resume(args.output_dir, resume_from_checkpoint, args, fingerprint,
                                                     runtime.launch, set_aside=True))
        set_seed(args.seed)
        if self.model_init is not None and resume is None:
            self.model = self._build_model().to(self.device)
            self.optimizer = self.lr_scheduler = None
            fingerprint = dataclasses.replace(fingerprint, model=model_fingerprint(self.model))
        model, device = self.model, self.device
        dataset, dropped = data.prepare_dataset(self.train_dataset, model, args.remove_unused_columns,
                                                self.label_names)
        lengths = data.example_lengths(dataset) if args.train_sampling_strategy == "group_by_length" else None
        data.check_dataset(self.train_dataset, model, "train_dataset", lengths)  # as given: its columns all named
        data.check_cross_entropy_options(args, model)
        self._class_weights = data.class_weights(args.class_weights, dataset, self.label_names, device)
        # HF's meaning: per_device_train_batch_size rows on each process, so a step holds that x world x accumulation
        batch_size, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        global_batch = batch_size * runtime.world_size
        if len(dataset) == 0:
            raise DataError("train_dataset has no rows: there is nothing to train on; check how it was built or "
                            "filtered")
        steps_per_epoch = data.steps_per_epoch(len(dataset), global_batch, accumulation, args.dataloader_drop_last)
        if steps_per_epoch == 0:
            raise DataError(f"dataloader_drop_last=True drops every batch: {len(dataset)} training examples are fewer "
                            f"than one batch of {global_batch}; lower per_device_train_batch_size or set "
                            f"dataloader_drop_last=False")
        max_steps = total_training_steps(args, steps_per_epoch)
        runtime.shard(model, args)  # FSDP2, in place: before the optimizer takes the parameters
        if self.optimizer is None:
            self.optimizer = create_optimizer(model, args)
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(self.optimizer, args, max_steps)
        run = TrainingRun(
            model=model, scaler=torch.amp.GradScaler(device.type) if self.precision.needs_scaler else None,
            nonfinite=NonFiniteGuard(args.max_nonfinite_steps,
                                     NonFiniteGuard.supports_on_device(self.optimizer, device)),
            dropout=DropoutSwap(model, self._uses_fast_dropout))
        self.state = state = TrainerState(
            max_steps=max_steps, steps_per_epoch=steps_per_epoch, num_train_epochs=max_steps / steps_per_epoch,
            logging_steps=args.resolve_steps(args.logging_steps, max_steps),
            eval_steps=args.resolve_steps(args.eval_steps, max_steps),
            save_steps=args.resolve_steps(args.save_steps, max_steps), train_batch_size=batch_size,
            run_id=runtime.on_main(checkpoint.new_run_id), data_fingerprint=fingerprint.data,
            model_fingerprint=fingerprint.model, is_local_process_zero=runtime.is_local_main_process,
            is_world_process_zero=runtime.is_main_process)
        if resume is not None:
            self.state = state = self._resume(run, resume, state)
        else:
            runtime.seed_rank(args.seed)  # dropout: each rank its own stream (rank 0 keeps one process's)
        # DDP after loading: it broadcasts rank 0's weights; compiled: same parameters, compiled forward
        run.model = runtime.wrap(model, args)
        run.model = torch.compile(run.model) if args.torch_compile else run.model

        def prepare_output_dir() -> None:  # only now, every check passed, is output_dir written to (by its writer)
            run_folders.prepare_output_dir(args.output_dir, state.run_id, args.overwrite_output_dir)
            args.save(Path(args.output_dir) / "training_args.json")
        runtime.on_writers(prepare_output_dir, args.save_on_each_node)
        self._print_header(len(dataset), dropped, resume, run.dropout.describe())
        self._warn_if_warmup_outlasts_the_run(max_steps)
        self._check_compute_metrics()
        self.control = TrainerControl()
        self.control = self._fire("on_train_begin")
        if args.eval_on_start and resume is None:  # a baseline, as in HF: never "the best model" (no checkpoint has it)
            self._evaluate_during_training(baseline=True)

        run.model.train()
        started, run_start_step = time.perf_counter(), state.global_step
        window = LogWindow.open(device, started)
        total_loss, total_items = torch.zeros((), device=device), 0
        grad_norm = None
        with PreemptionGuard() as preemption:
            epochs = range(state.global_step // steps_per_epoch, math.ceil(max_steps / steps_per_epoch))
            for epoch in epochs if state.global_step < max_steps else ():  # a finished run, resumed, trains no more
                # the step's global micro-batches, planned alike on every rank; then each rank loads only its share
                steps = self._epoch_steps(len(dataset), lengths, epoch)
                first_step = state.global_step - epoch * steps_per_epoch  # > 0 only when resuming mid-epoch
                shares = [[data.rank_share(b, runtime.rank, runtime.world_size) for b in step]
                          for step in steps[first_step:]]
                micro_batches = iter(self._loader(dataset, [rows for step in shares for rows, _ in step]))
                self.control._new_epoch()
                self.control = self._fire("on_epoch_begin")
                for step_in_epoch in range(first_step, len(steps)):
                    step_shares = shares[step_in_epoch - first_step]
                    # all micro-batches are loaded before the first backward: the loss is divided by the whole
                    # step's item count (all micro-batches, all ranks: one small reduction)
                    step_batches = [next(micro_batches) for _ in step_shares]
                    (step_items,) = runtime.sum_ints(sum(data.count_items(batch, self.label_names)
                                                         for batch, (_, counts) in zip(step_batches, step_shares)
                                                         if counts))
                    self.control._new_step()
                    self.control = self._fire("on_step_begin")
                    step_loss = torch.zeros((), device=device)
                    for index, (batch, (_, counts)) in enumerate(zip(step_batches, step_shares)):
                        last = index == len(step_batches) - 1
                        if counts:
                            window.samples += data.batch_rows(batch)
                            window.tokens += _token_count(batch)
                        with runtime.no_sync(run.model, sync=last):  # gradients cross ranks once per step
                            step_loss += self._forward_backward(run, batch, step_items, counts)
                        state.micro_step += 1
                        if not last:
                            self.control = self._fire("on_substep_end")
                    grad_norm, finite = self._optimizer_step(run, step_loss, steps[step_in_epoch])
                    window.loss += torch.where(finite, step_loss, 0.0)  # a skipped step's NaN stays out of logs
                    window.items += step_items
                    window.steps += 1
                    state.global_step += 1
                    state.epoch = epoch + (step_in_epoch + 1) / steps_per_epoch
                    self.control = self._fire("on_step_end")
                    self._agree_on_control()

                    epoch_done = step_in_epoch == len(steps) - 1 or state.global_step >= max_steps
                    if _due(args.logging_strategy, state.logging_steps, state.global_step, epoch_done) or \
                            self.control.should_log or (args.logging_first_step and state.global_step == 1):
                        runtime.all_reduce_sum(window.loss)  # the logged loss is every rank's
                        total_loss, total_items = total_loss + window.loss, total_items + window.items
                        self._log_training(run, window, grad_norm)
                        window = LogWindow.open(device)
                    if _due(args.eval_strategy, state.eval_steps, state.global_step, epoch_done) or \
                            self.control.should_evaluate:
                        self._evaluate_during_training()
                        self._agree_on_control()  # on_evaluate may stop training (early stopping)
                    saved = None
                    new_best = args.save_strategy == "best" and state.best_global_step == state.global_step
                    if _due(args.save_strategy, state.save_steps, state.global_step, epoch_done) or new_best or \
                            self.control.should_save or (state.global_step >= max_steps and
                                                         args.save_strategy not in ("no", "best")):
                        saved = self._save_checkpoint(run)
                    if self._agree_on_control(preemption):  # a stop signal reached some rank: save, then exit
                        run.nonfinite.flush(run.last_checkpoint)
                        stop = TrainingPreempted(preemption.requested or "a stop signal to another rank",
                                                 str(saved or self._save_checkpoint(run)))
                        logger.warning("%s", stop)
                        raise stop
                    if self.control.should_training_stop or self.control.should_epoch_stop \
                            or state.global_step >= max_steps:
                        break
                self.control = self._fire("on_epoch_end")
                self._agree_on_control()
                if self.control.should_training_stop or state.global_step >= max_steps:
                    break

        run.nonfinite.flush(run.last_checkpoint)
        runtime_seconds = time.perf_counter() - started
        runtime.all_reduce_sum(window.loss)
        total_loss, total_items = total_loss + window.loss, total_items + window.items
        training_loss = total_loss.item() / max(total_items, 1)
        if args.load_best_model_at_end and state.best_model_checkpoint:
            if Path(state.best_model_checkpoint).name == f"{run_folders.PREFIX}{state.global_step}":  # saved from
                # these very weights, which nothing has changed since: there is nothing to load
                logger.info("The best model (%s = %s) is the last step's, %s", args.metric_for_best_model,
                            state.best_metric, state.best_model_checkpoint)
            else:
                logger.info("Loading the best model (%s = %s) from %s", args.metric_for_best_model, state.best_metric,
                            state.best_model_checkpoint)
                checkpoint.load_model_weights(model, state.best_model_checkpoint, runtime.sharded)
        steps_run = state.global_step - run_start_step
        metrics = {"train_runtime": round(runtime_seconds, 3),
                   "train_samples_per_second": round(steps_run * global_batch * accumulation / runtime_seconds, 3),
                   "train_steps_per_second": round(steps_run / runtime_seconds, 3), "train_loss": training_loss,
                   "epoch": self._logged_epoch()}  # HF's train() metrics carry the epoch (its log() adds it in place)
        self.log(metrics)
        self.control = self._fire("on_train_end")
        if args.push_to_hub:  # every rank: save_model waits for rank 0; rank 0 uploads, a failure is a warning
            self.save_model()
            if runtime.is_main_process:
                self.hub.push_folder(args.output_dir, state, self.model, "End of training", blocking=True,
                                     revision=args.hub_revision, card_fields={}, observer=True)
        return TrainOutput(state.global_step, training_loss, metrics)

    def _epoch_steps(self, num_examples: int, lengths: list[int] | None, epoch: int) -> list[list[list[int]]]:
        """The epoch's optimizer steps, each a list of global micro-batches of example indices: a pure function of
        the seed, the epoch and the arguments, planned alike on every rank (`data.epoch_steps`)."""
        args = self.args
        return data.epoch_steps(num_examples, args.per_device_train_batch_size * self.runtime.world_size,
                                args.gradient_accumulation_steps, args.sampler_seed, epoch,
                                args.train_sampling_strategy, lengths, args.dataloader_drop_last)

    def _agree_on_control(self, preemption: PreemptionGuard | None = None) -> bool:
        """Every rank takes up each control flag that a callback set on any rank, in one collective (nothing in one
        process), so all ranks log, evaluate, save and stop together. Returns whether a stop signal reached any
        rank (asked only where the loop acts on it)."""
        control = self.control
        (control.should_training_stop, control.should_epoch_stop, control.should_save, control.should_evaluate,
         control.should_log, preempted) = self.runtime.any_rank(
            control.should_training_stop, control.should_epoch_stop, control.should_save, control.should_evaluate,
            control.should_log, preemption is not None and preemption.requested is not None)
        return preempted

    def _forward_backward(self, run: TrainingRun, batch: dict, step_items: int, counts: bool) -> torch.Tensor:
        """One micro-batch: forward, loss scaled by its share of the step's items, backward.

        `step_items` counts the whole step's items on every rank; DDP averages gradients over ranks, so each rank's
        share is multiplied by the world size. A batch that does not count (`counts` False: a placeholder row on a
        rank the epoch's tail left idle) is weighted 0. finch's CPU dropout is swapped in for this forward and
        backward only (`run.dropout`). Returns the summed (not averaged) loss of the micro-batch, detached and left
        on the device: reading it is a host sync, done only at logging steps.
        """
        items = data.count_items(batch, self.label_names) if counts else 0  # before compute_loss, which may pop labels
        batch = to_device(batch, self.device)  # a new dict: an override's `inputs.pop("labels")` leaves ours intact
        with run.dropout:
            with self.precision.autocast(self.device):
                loss = self.compute_loss(run.model, batch)
            # sum over the step's examples / their number: the same update for any accumulation or world size
            scaled = loss * (items * self.runtime.world_size / step_items)
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        return loss.detach().float() * items

    def compute_loss(self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: int | None = None) -> Any:
        """Mean loss over the batch's items (override for custom losses, as with HF's Trainer).

        finch calls it without `num_items_in_batch` (an override gets its default, None): the loop itself scales
        each micro-batch's mean loss by its share of the step's items, so an override returns the batch's mean.
        Overrides may `inputs.pop("labels")`: the trainer reads the labels before it calls this."""
        labels = inputs.get(self.label_names[0]) if self.label_names else None
        weighted = self._class_weights is not None or self.args.label_smoothing_factor > 0
        custom = self.compute_loss_func is not None or weighted
        model_inputs = {k: v for k, v in inputs.items() if k not in self.label_names} if custom else inputs
        outputs = model(**model_inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch or
                                          data.count_items(inputs, self.label_names))
        elif weighted:  # class weights and/or label smoothing: cross-entropy computed here
            logits = split_outputs(outputs, has_labels=False)[1]
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                     weight=self._class_weights, ignore_index=-100,
                                                     label_smoothing=self.args.label_smoothing_factor)
        else:
            loss = _model_loss(outputs, model, self.label_names, labels_given=labels is not None)
        return (loss, outputs) if return_outputs else loss

    def _optimizer_step(self, run: TrainingRun, step_loss: torch.Tensor,
                        batches: list[list[int]]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Unscale, clip, step the optimizer and the schedule, clear gradients; a step whose loss or gradient norm
        is NaN/Inf on any rank is skipped on all (see `finch.nonfinite`). Returns the gradient norm and the device
        flag `finite`."""
        scaler = run.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.args.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor of the norm over every rank's shards
                grad_norm = grad_norm.full_tensor()
        finite = self.runtime.all_true(NonFiniteGuard.finite(step_loss, grad_norm))
        indices = [index for batch in batches for index in batch]
        if not run.nonfinite.allow_step(finite, self.optimizer, self.state.global_step + 1, indices,
                                        run.last_checkpoint):
            if scaler is not None:
                scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm, finite
        self.control = self._fire("on_pre_optimizer_step")
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.control = self._fire("on_optimizer_step")
        run.learning_rate = self.lr_scheduler.get_last_lr()[0]  # the rate this step used, before the schedule moves
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, finite

    def _log_training(self, run: TrainingRun, window: LogWindow, grad_norm: torch.Tensor | None) -> None:
        """Log mean loss (`window.loss` already summed over ranks), lr, grad norm and throughput since the last log."""
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        logs = {"loss": window.loss.item() / max(window.items, 1)}  # host sync: only at logging steps
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        logs["learning_rate"] = run.learning_rate if run.learning_rate is not None else \
            self.lr_scheduler.get_last_lr()[0]
        run.nonfinite.flush(run.last_checkpoint)
        if run.nonfinite.skipped:
            logs["nonfinite_steps"] = run.nonfinite.skipped
        samples, tokens = self.runtime.sum_ints(window.samples, window.tokens)  # throughput of all ranks together
        logs["samples_per_second"] = round(samples / elapsed, 2)
        logs["tokens_per_second"] = round(tokens / elapsed, 1)
        self.log(logs)

    def _evaluate_during_training(self, baseline: bool = False) -> None:
        if self.eval_dataset is None:
            raise ConfigError(f"eval_strategy={self.args.eval_strategy!r} needs an eval_dataset; pass eval_dataset= "
                             f"to the Trainer or set eval_strategy='no'")
        metrics = self.evaluate()
        name = self.args.metric_for_best_model
        if name is None or baseline:
            return
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise ConfigError(f"metric_for_best_model={name!r} is not among the evaluation metrics {sorted(metrics)}; "
                           f"return it from compute_metrics or choose one of those")
        best, value = self.state.best_metric, metrics[key]
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric, self.state.best_global_step = value, self.state.global_step

    def _save_checkpoint(self, run: TrainingRun) -> Path:
        """Every rank's RNG state is gathered; rank 0 (each machine's first process with `save_on_each_node`) writes
        the checkpoint (atomically) and rotates, and the others wait for it: when this returns on any rank, the
        checkpoint is whole on disk (or every rank raises)."""
        state, args = self.state, self.args
        path = Path(args.output_dir) / f"{run_folders.PREFIX}{state.global_step}"
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(path)
        state.stateful_callbacks = {type(cb).__name__: cb.state_dict() for cb in self.callback_handler.callbacks
                                    if hasattr(cb, "state_dict")}
        rng_states = self.runtime.all_gather(rng_state())
        weights = optimizer_state = shards_in = None
        if self.runtime.sharded_checkpoints:  # FSDP2, sharded: every rank writes its part; rank 0 completes it
            shards_in = checkpoint.save_shards(args.output_dir, state, self.model,
                                               None if args.save_only_model else self.optimizer,
                                               self.runtime.on_main, self.runtime.is_main_process)
        else:
            weights, optimizer_state = self.runtime.full_state(self.model, self.optimizer)  # FSDP2: gathered to rank 0

        def write() -> None:
            checkpoint.save_checkpoint(args.output_dir, self.model, state, args, self.optimizer, self.lr_scheduler,
                                       run.scaler, self.processing_class, rng_states, self.runtime.launch.id,
                                       weights, optimizer_state, shards_in)
            run_folders.rotate_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint,
                                           state.run_id, keep=path)
        self.runtime.on_writers(write, args.save_on_each_node)
        run.last_checkpoint = str(path)
        self.control = self._fire("on_save")
        return path

    def _resume(self, run: TrainingRun, folder: Path, fresh: TrainerState) -> TrainerState:
        """Load `folder` into the model, optimizer, scheduler and scaler, and this rank's RNG state; its progress
        with this run's plan."""
        runtime = self.runtime
        saved = checkpoint.load_checkpoint(folder, self.model, self.optimizer, self.lr_scheduler, run.scaler,
                                           rank=runtime.rank, sharded=runtime.sharded)
        state = continue_state(saved, fresh, folder)
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
    # ---- hyperparameter search -----------------------------------------------------------------------------------
    def hyperparameter_search(self, hp_space: Callable | None = None, compute_objective: Callable | None = None,
                              n_trials: int | None = 20, direction: str | list[str] = "minimize",
                              backend: Any = "optuna", hp_name: Callable | None = None, **kwargs: Any) -> Any:
        """HuggingFace's `hyperparameter_search` on Optuna: `n_trials` trials, each a fresh model from `model_init`
        trained in `output_dir/run-<trial number>`. Returns the best trial as a `BestRun` (a list for several
        directions). See `finch.search.hyperparameter_search` for the options, pruning and storage."""
        from finch.search import hyperparameter_search

        return hyperparameter_search(self, hp_space, compute_objective, n_trials, direction, backend, hp_name,
                                     **kwargs)

    @property
    def tokenizer(self) -> Any:
        return self.processing_class

    def _build_model(self) -> torch.nn.Module:
        set_seed(self.args.seed)
        # HF's model_init takes no argument or the trial (None outside a search): tutorials write `model_init(trial)`
        takes_trial = len(inspect.signature(self.model_init).parameters) == 1
        return self.model_init(None) if takes_trial else self.model_init()


def _model_loss(outputs: Any, model: torch.nn.Module, label_names: list[str], labels_given: bool) -> torch.Tensor:
    """The loss a model returned (output object, dict or tuple), or an error that names the model and the fix.

    A tuple's first element counts as the loss only when it is a scalar: a tuple of logits has none."""
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    elif isinstance(outputs, (tuple, list)) and outputs:
        loss = outputs[0] if isinstance(outputs[0], torch.Tensor) and outputs[0].ndim == 0 else None
    else:
        loss = None
    if loss is not None:
        return loss
    unwrapped = getattr(model, "_orig_mod", model)  # torch.compile's wrapper hides the class, and DDP's
    if isinstance(unwrapped, torch.nn.parallel.DistributedDataParallel):
        unwrapped = unwrapped.module
    model_class = type(unwrapped).__name__
    if not labels_given:
        raise DataError(f"{model_class} returned no loss: the batches have no labels it recognises. Name the label "
                        f"column 'label' or 'labels', or set label_names=[...] in TrainingArguments.")
    raise ModelError(f"{model_class} returned no loss although the batch has labels ({', '.join(label_names)}): its "
                     f"forward returned {describe(outputs)}. Use a model with a task head that computes its loss from "
                     f"`labels` (e.g. AutoModelForSequenceClassification, not AutoModel), pass compute_loss_func="
                     f"(outputs, labels, num_items_in_batch) -> loss to the Trainer, or override Trainer.compute_loss.")


def _token_count(batch: dict) -> int:
    """Non-padding tokens in a CPU batch (0 when it has no token ids)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, torch.Tensor) else 0


def _name_labels(model: torch.nn.Module, names: list[str] | None) -> None:
    """Give the model's config the dataset's label names, so saved models and pipelines report names."""
    config = getattr(model, "config", None)
    if names is None or config is None or getattr(config, "num_labels", None) != len(names):
        return
    if all(label == f"LABEL_{i}" for i, label in config.id2label.items()):
        config.id2label = dict(enumerate(names))
        config.label2id = {name: i for i, name in enumerate(names)}


def _show_finch_logs() -> None:
    """finch's INFO messages (run header, dropped columns) reach stderr unless the application set up logging."""
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[finch] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
