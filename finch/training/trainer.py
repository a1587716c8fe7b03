"""`Trainer`: HuggingFace's constructor and methods (`train`, `evaluate`, `predict`, `save_model`, callbacks).

The loop is on one screen: `_train` runs `_start_run` (every check, the model, optimizer, schedule, state or the
checkpoint's), then `_train_epoch` for each epoch, then `_end_run`. An epoch reads as named steps: the plan (data
order is a pure function of seed and epoch, so resuming jumps to the step), `_train_step` (micro-batches forward and
backward with the loss normalised over every example of the step, clipping, the optimizer and schedule),
`_log_evaluate_save` (as the strategies and callbacks say, agreed by every rank), termination.

No host syncs in the step. Between logging, evaluation and saving steps nothing in the loop reads a device tensor
on the host (`.item()`, `bool()`, `float()`, `int()`, `.tolist()`, `.cpu()`, `.numpy()`): on CUDA each read makes
the host wait for the GPU, which then idles while Python queues the next kernels. Counts are taken from the batch
while it is still on the host (`_count_items`, `_token_count`); the loss window, the gradient norm and the NaN/Inf
flags stay on the device and are read at logging (or evaluation, saving, the end) steps only. tests/
test_no_host_sync.py audits it. With several processes, `_agree_on_control` still reads one small all-reduce per
step (the callbacks' flags must agree before the loop acts on them).
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
from pathlib import Path
from typing import Any

import torch
from transformers import EvalPrediction
from transformers.trainer_utils import TrainOutput

from finch.args import TrainingArguments, total_training_steps, unused_hub_options
from finch.data import batching, buckets
from finch.distributed.connect import runtime_for
from finch.distributed.runtime import set_seed
from finch.errors import ConfigError, DataError, ModelError
from finch.events import Event
from finch.hf.names import as_finch_arguments, check_overrides
from finch.observers.hub import Hub, HubCallback
from finch.runs import adapters, checkpoint
from finch.runs import folders as run_folders
from finch.runs.files import run_lock
from finch.runs.fingerprint import Fingerprint, model_fingerprint
from finch.runs.resume import plan_resume
from finch.state import TrainerControl, TrainerState
from finch.training import graphs, shapes
from finch.training.callbacks import CallbackHandler, ProgressCallback, reporters
from finch.training.checkpointing import CheckpointingMixin
from finch.training.dropout import DropoutSwap
from finch.training.evaluation import EvaluationMixin, check_best_metric, describe, split_outputs, to_device
from finch.training.hf_methods import HFMethodsMixin
from finch.training.log_and_save import OutputsMixin
from finch.training.nonfinite import NonFiniteGuard
from finch.training.optim import create_optimizer, create_scheduler
from finch.training.preemption import PreemptionGuard, TrainingPreempted
from finch.training.run import LogWindow, TrainingRun

logger = logging.getLogger("finch")
_WARNED: set[str] = set()  # warnings about the arguments, said once per process (a search builds many trainers)


def _check_optimizer_of(optimizer: Any, model: torch.nn.Module) -> None:
    """Raise `ConfigError` when the user's optimizer holds none of the model's parameters (made for another model
    object): every step would update those, and the model being trained and saved would never change."""
    held = [parameter for group in getattr(optimizer, "param_groups", []) for parameter in group["params"]]
    mine = {id(parameter) for parameter in model.parameters()}
    if held and not any(id(parameter) in mine for parameter in held):
        raise ConfigError(f"optimizers=({type(optimizer).__name__}, ...) holds none of the model's parameters: it was "
                          f"made for another model object, so training would never change this one. Make it from "
                          f"this model: {type(optimizer).__name__}(model.parameters(), ...), after the model is "
                          f"built (and passed as model=)")


def _warn_once(message: str | None) -> None:
    if message is not None and message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def _due(strategy: str, every: int, step: int, epoch_done: bool) -> bool:
    """Whether a `logging`/`eval`/`save` strategy with interval `every` asks for action at `step`."""
    return (strategy == "steps" and step % every == 0) or (strategy == "epoch" and epoch_done)


class Trainer(EvaluationMixin, CheckpointingMixin, OutputsMixin, HFMethodsMixin):
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

    arguments_class = TrainingArguments  # what HF's arguments are converted to (and the default)

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
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ConfigError(f"Trainer(model=...) takes a model object, not {type(model).__name__} {model!r:.80}: "
                              f"load it first, e.g. model = AutoModelForSequenceClassification.from_pretrained("
                              f"{str(model)!r:.80}, num_labels=...)")
        check_overrides(type(self), Trainer)  # an HF override point finch never calls: refused, not ignored
        self.args = as_finch_arguments(args, self.arguments_class)
        self.runtime = runtime_for(self.args)  # joins torchrun's process group when there is one
        self.runtime.precision.apply()  # TF32 switches, when the precision decides them
        self.device, self.precision = self.runtime.device, self.runtime.precision
        # offline, no token, a repository that cannot be created: said now, not after training
        self.hub = Hub.for_trainer(self.args, self.runtime) if self.args.push_to_hub else None
        if self.runtime.is_main_process:
            _warn_once(unused_hub_options(self.args))
        if not self.runtime.is_main_process:
            logger.setLevel(logging.WARNING)  # one run header, not one per rank; warnings still show
        self.model_init = model_init
        self.model = (model if model is not None else self._build_model()).to(self.device)
        _set_use_cache(self.model, getattr(self.args, "use_cache", False))
        self.processing_class = processing_class
        wanted = self.args.shape_buckets if self.args.shape_buckets is not None else self.args.torch_compile
        self._shape_buckets = bool(wanted) and not getattr(getattr(self.model, "config", None), "is_encoder_decoder",
                                                            False)  # labels and decoder inputs: lengths of their own
        # compiled with buckets: rounded to 8 here, then to the buckets (made from the data when train() starts)
        multiple = batching.padding_multiple(self.args.pad_to_multiple_of, self.device.type,
                                             self.args.torch_compile and not self._shape_buckets,
                                             bf16=self.precision.name == "bf16" or self._shape_buckets)
        self._own_collator = data_collator is not None  # it may tokenize: an untokenized dataset is then no mistake
        self.data_collator = (batching.with_padding_multiple(data_collator, multiple) if data_collator is not None
                              else batching.default_collator(processing_class, multiple))
        self.padding_multiple = getattr(self.data_collator, "pad_to_multiple_of", None)  # None: not ours to round
        # not under activation checkpointing: the backward's recomputation must draw the forward's dropout masks
        self._uses_fast_dropout = (self.args.fast_dropout is not False and self.device.type == "cpu"
                                   and not self.args.torch_compile and not self.args.activation_checkpointing)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.compute_loss_func = compute_loss_func
        if not isinstance(optimizers, (tuple, list)) or len(optimizers) != 2:
            raise ConfigError(f"optimizers={optimizers!r:.80}: give a pair (optimizer, lr_scheduler), either of them "
                              f"None for finch's own, e.g. optimizers=(torch.optim.AdamW(model.parameters()), None)")
        self.optimizer, self.lr_scheduler = optimizers
        if self.runtime.sharded and self.optimizer is not None:
            raise ConfigError("fsdp: finch makes the optimizer after sharding the model (it must hold the shards); "
                              "drop optimizers=(...) and set the optimizer through TrainingArguments (optim=...)")
        self._weights_of: tuple | None = None  # (train_dataset, class_weights, device, weights): see _class_weights
        self._checkpoint_writer = checkpoint.BackgroundWriter()  # background_save's thread
        self.label_names = batching.label_names_of(self.model, self.args.label_names)
        self.state = TrainerState(is_local_process_zero=self.runtime.is_local_main_process,
                                  is_world_process_zero=self.runtime.is_main_process)
        self.control = TrainerControl()
        # progress lines from rank 0 only; the writers among `reporters` check `state.is_world_process_zero`
        default_callbacks = [ProgressCallback()] if self.runtime.is_main_process else []
        default_callbacks += reporters(self.args.report_to)
        default_callbacks += [HubCallback(self.hub)] if self.hub is not None else []
        self.callback_handler = CallbackHandler(default_callbacks + list(callbacks or []))
        _name_labels(self.model, batching.class_names(train_dataset))
        self._fire(Event.ON_INIT_END)

    # ---- callbacks ------------------------------------------------------------------------------------------------
    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add(callback)

    def pop_callback(self, callback: Any) -> Any:
        return self.callback_handler.pop(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.pop(callback)

    def _fire(self, event: Event, **kwargs: Any) -> None:
        """Tell every callback about `event`; `self.control` becomes what they leave (a callback may return a new
        `TrainerControl`)."""
        self.control = self.callback_handler.fire(event, self.args, self.state, self.control, model=self.model,
                                                  processing_class=self.processing_class, optimizer=self.optimizer,
                                                  lr_scheduler=self.lr_scheduler, **kwargs)

    # ---- training -------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Train; `resume_from_checkpoint=True` continues from the newest checkpoint in `output_dir`, a path from
        that one (see `finch.runs.resume.plan_resume` for what is refused, before anything is written).
        Returns `TrainOutput(global_step, training_loss, metrics)`.

        Raises:
            OutputError: another finch run is training into `output_dir` now (see `finch.runs.files.run_lock`)."""
        # one run at a time per output folder; its writer holds it (the other ranks write nothing there)
        with run_lock(self.args.output_dir) if self.runtime.is_main_process else contextlib.nullcontext():
            return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint: str | bool | None) -> TrainOutput:
        run = self._start_run(resume_from_checkpoint)
        try:
            with PreemptionGuard() as preemption:
                for epoch in run.epochs(self.state.global_step):
                    self._train_epoch(run, epoch, preemption)
                    if self.control.should_training_stop or self.state.global_step >= run.max_steps:
                        break
        except BaseException:
            self._finish_checkpoint_quietly()  # the checkpoint an error message names is whole, or said not to be
            raise
        self._wait_for_checkpoint()  # before the best model is read back, or anything else reads checkpoints
        return self._end_run(run)

    def _train_epoch(self, run: TrainingRun, epoch: int, preemption: PreemptionGuard) -> None:
        """One epoch (its rest, when resuming mid-epoch), nanoGPT's loop in named steps."""
        state, runtime = self.state, self.runtime
        # ---- the plan: global micro-batches from (seed, epoch), alike on every rank; each rank loads its share
        steps = self._epoch_steps(len(run.dataset), run.lengths, epoch)
        # > 0 only when resuming mid-epoch; < 0 after an epoch that should_epoch_stop cut short: this one starts at 0
        first_step = max(0, state.global_step - epoch * run.steps_per_epoch)
        shares = [[batching.rank_share(b, runtime.rank, runtime.world_size) for b in step] for step in steps]
        micro_batches = iter(self._loader(run.dataset, [rows for step in shares[first_step:] for rows, _ in step]))
        self.control._new_epoch()
        self._fire(Event.ON_EPOCH_BEGIN)
        for step_in_epoch in range(first_step, len(steps)):
            # ---- forward, backward, clip, update
            self._train_step(run, [next(micro_batches) for _ in shares[step_in_epoch]], shares[step_in_epoch],
                             steps[step_in_epoch])
            state.epoch = epoch + (step_in_epoch + 1) / run.steps_per_epoch
            # ---- log, evaluate, save as the strategies say; a stop signal saves and exits
            epoch_done = step_in_epoch == len(steps) - 1 or state.global_step >= run.max_steps
            self._log_evaluate_save(run, epoch_done, preemption)
            # ---- termination
            if self.control.should_training_stop or self.control.should_epoch_stop or \
                    state.global_step >= run.max_steps:
                break
        self._fire(Event.ON_EPOCH_END)
        self._agree_on_control()

    def _tokenizing_collator(self) -> bool:
        """Whether the user's data_collator gets the dataset's text columns (and may tokenize them itself)."""
        return self._own_collator and not self.args.remove_unused_columns

    def _check_label_names(self, prepared: Any) -> None:
        """label_names given (TrainingArguments) that are no column of the training set: the labels would never
        reach compute_metrics (no label_ids, so no metrics) and a custom compute_loss would get none."""
        columns = getattr(prepared, "column_names", None) or batching.first_example_keys(prepared)
        given = self.args.label_names
        if not given or columns is None or self._own_collator:  # a collator of one's own may make the labels
            return
        missing = [name for name in given if name not in columns]
        if missing:
            raise ConfigError(f"label_names={given}: {missing} is no column of train_dataset (its columns: "
                              f"{list(columns)}); name the columns that hold the labels (e.g. label_names=['labels'])"
                              f", or leave label_names unset")

    def _check_eval_tokenized(self, model: torch.nn.Module) -> None:
        """Raw text in an evaluation set, said before the first step rather than at the first evaluation."""
        sets = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"": self.eval_dataset}
        if self._tokenizing_collator():
            return
        for name, dataset in sets.items():
            if dataset is not None and not isinstance(dataset, str):
                batching.check_tokenized(dataset, model, f"the eval_{name} dataset" if name else "the evaluation "
                                         "dataset", getattr(dataset, "column_names", None)
                                         or batching.first_example_keys(dataset))

    def _start_run(self, resume_from_checkpoint: str | bool | None) -> TrainingRun:
        """Everything before the first step: the checks, the model (fresh from `model_init`), the plan, the
        optimizer and schedule, the state (or the checkpoint's, resuming), the output folder, the run header."""
        args, runtime = self.args, self.runtime
        if self.train_dataset is None:
            raise ConfigError("Trainer.train() needs a train_dataset")
        batching.check_map_style(self.train_dataset, "train_dataset")
        fingerprint = Fingerprint.of(self.train_dataset, self.model)  # hashes the token ids: once per train()
        # rank 0 decides from the files and tells the others: every rank resumes the same checkpoint, or none
        # (after a torchrun restart: the newest checkpoint this launch saved, see `plan_resume`)
        resume = runtime.on_main(lambda: plan_resume(args.output_dir, resume_from_checkpoint, args, fingerprint,
                                                     runtime.launch, set_aside=True))
        set_seed(args.seed)
        if self.model_init is not None and resume is None:
            self.model = self._build_model().to(self.device)
            _set_use_cache(self.model, getattr(self.args, "use_cache", False))
            self.optimizer = self.lr_scheduler = None
            fingerprint = dataclasses.replace(fingerprint, model=model_fingerprint(self.model))
        model, device = self.model, self.device
        dataset, dropped = batching.prepare_dataset(self.train_dataset, model, args.remove_unused_columns,
                                                    self.label_names, self._own_collator)
        lengths = batching.example_lengths(dataset) if args.train_sampling_strategy == "group_by_length" else None
        if self._shape_buckets:
            self._bucket_collator(lengths if lengths is not None else batching.example_lengths(dataset))
        batching.check_dataset(self.train_dataset, model, "train_dataset", lengths,  # as given: its columns all named
                               self._tokenizing_collator())
        self._check_eval_tokenized(model)
        self._check_label_names(dataset)
        batching.check_cross_entropy_options(args, model)
        self._class_weights(dataset)  # "balanced" on data without labels, a list of the wrong length: said now
        steps_per_epoch = self._steps_per_epoch(len(dataset))
        max_steps = total_training_steps(args, steps_per_epoch)
        if shapes.is_peft(model):
            if runtime.sharded:
                raise ConfigError("fsdp with a PeftModel: finch's FSDP2 shards every transformer layer, and peft's "
                                  "adapters (small, trainable) inside frozen layers make shards of mixed "
                                  "requires_grad that FSDP2 cannot flatten; train the adapter with DDP (fsdp='', "
                                  "torchrun as before: the frozen base is replicated, only the adapter's gradients "
                                  "cross ranks)")
            adapters.check_trainable_parameters_saved(model)
        if args.activation_checkpointing:
            _enable_activation_checkpointing(model, args.activation_checkpointing_kwargs)
        runtime.shard(model, args)  # FSDP2, in place: before the optimizer takes the parameters
        if self.optimizer is None:
            self.optimizer = create_optimizer(model, args)
        else:
            _check_optimizer_of(self.optimizer, model)
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(self.optimizer, args, max_steps)
        run = TrainingRun(
            model=model, dataset=dataset, lengths=lengths, steps_per_epoch=steps_per_epoch, max_steps=max_steps,
            scaler=torch.amp.GradScaler(device.type) if self.precision.needs_scaler else None,
            nonfinite=NonFiniteGuard(args.max_nonfinite_steps,
                                     NonFiniteGuard.supports_on_device(self.optimizer, device)),
            dropout=DropoutSwap(model, self._uses_fast_dropout))
        self.state = TrainerState(
            max_steps=max_steps, steps_per_epoch=steps_per_epoch, num_train_epochs=max_steps / steps_per_epoch,
            logging_steps=args.resolve_steps(args.logging_steps, max_steps),
            eval_steps=args.resolve_steps(args.eval_steps, max_steps),
            save_steps=args.resolve_steps(args.save_steps, max_steps),
            train_batch_size=args.per_device_train_batch_size, run_id=runtime.on_main(checkpoint.new_run_id),
            data_fingerprint=fingerprint.data, model_fingerprint=fingerprint.model,
            is_local_process_zero=runtime.is_local_main_process, is_world_process_zero=runtime.is_main_process)
        if resume is not None:
            self.state = self._resume(run, resume, self.state)
        else:
            runtime.seed_rank(args.seed)  # dropout: each rank its own stream (rank 0 keeps one process's)
        # DDP after loading: it broadcasts rank 0's weights; compiled: same parameters, compiled forward
        run.model = runtime.wrap(model, args)
        run.graphs = self._graph_plan()
        if args.torch_compile:
            eager, run.model = run.model, graphs.compile_model(run.model, run.graphs)
            run.fallback = graphs.EagerFallback(run.model, eager) if run.graphs.on else None
        state = self.state

        def prepare_output_dir() -> None:  # only now, every check passed, is output_dir written to (by its writer)
            run_folders.prepare_output_dir(args.output_dir, state.run_id, args.overwrite_output_dir)
            args.save(Path(args.output_dir) / "training_args.json")
        runtime.on_writers(prepare_output_dir, args.save_on_each_node)
        self._print_header(len(dataset), dropped, resume, run.dropout.describe(), run.graphs.describe())
        self._warn_if_warmup_outlasts_the_run(max_steps)
        self._check_compute_metrics()
        self.control = TrainerControl()
        self._fire(Event.ON_TRAIN_BEGIN)
        if args.eval_on_start and resume is None:  # a baseline, as in HF: never "the best model" (no checkpoint has it)
            self._evaluate_during_training(baseline=True)
        run.model.train()
        run.started, run.start_step = time.perf_counter(), state.global_step
        run.window, run.total_loss = LogWindow.open(device, run.started), torch.zeros((), device=device)
        return run

    def _graph_plan(self) -> graphs.GraphPlan:
        """Whether the step is captured as CUDA graphs (`finch.training.graphs.decide`, from this run's facts)."""
        collator = self.data_collator
        return graphs.decide(self.args.cuda_graphs, self.device, self.args.torch_compile,
                             collator.buckets if isinstance(collator, buckets.BucketPadding) else None,
                             graphs.overridden_methods(type(self), Trainer), self.runtime.sharded, self.optimizer,
                             self.callback_handler.callbacks)

    def _bucket_collator(self, lengths: list[int] | None) -> None:
        """The collator wrapped in `BucketPadding` over buckets chosen from the training set's `lengths` (training and
        evaluation batches then take a few shapes); the wrapper of an earlier `train()` replaced, not stacked."""
        collator = getattr(self.data_collator, "collator", self.data_collator) \
            if isinstance(self.data_collator, buckets.BucketPadding) else self.data_collator
        if not lengths:
            self.data_collator = collator
            return
        pad, side = buckets.tokenizer_padding(collator, self.processing_class)
        chosen = buckets.choose_buckets(lengths, self.padding_multiple or 8)
        self.data_collator = buckets.BucketPadding(collator, chosen, pad, side,
                                                   getattr(self.model, "main_input_name", "input_ids"))

    def _steps_per_epoch(self, num_examples: int) -> int:
        """Optimizer steps in an epoch of `num_examples`; HF's meaning of the batch size: per_device_train_batch_size
        rows on each process, so a step holds that x world x accumulation."""
        args = self.args
        global_batch = args.per_device_train_batch_size * self.runtime.world_size
        if num_examples == 0:
            raise DataError("train_dataset has no rows: there is nothing to train on; check how it was built or "
                            "filtered")
        steps = batching.steps_per_epoch(num_examples, global_batch, args.gradient_accumulation_steps,
                                         args.dataloader_drop_last)
        if steps == 0:
            raise DataError(f"dataloader_drop_last=True drops every batch: {num_examples} training examples are "
                            f"fewer than one batch of {global_batch}; lower per_device_train_batch_size or set "
                            f"dataloader_drop_last=False")
        return steps

    def _train_step(self, run: TrainingRun, batches: list[dict], shares: list[tuple[list[int], bool]],
                    step: list[list[int]]) -> None:
        """One optimizer step over its micro-batches `batches` (this rank's `shares` of the global `step`).

        All micro-batches are loaded before the first backward: the loss is divided by the whole step's item count
        (all micro-batches, all ranks: one small reduction)."""
        state, window = self.state, run.window
        (step_items,) = self.runtime.sum_ints(sum(self._count_items(batch)
                                                  for batch, (_, counts) in zip(batches, shares) if counts))
        self.control._new_step()
        self._fire(Event.ON_STEP_BEGIN)
        step_loss = torch.zeros((), device=self.device)
        for index, (batch, (_, counts)) in enumerate(zip(batches, shares)):
            last = index == len(batches) - 1
            if counts:
                window.samples += batching.batch_rows(batch)
                window.tokens += _token_count(batch)
            with self.runtime.no_sync(run.model, sync=last):  # gradients cross ranks once per step
                step_loss += self._forward_backward(run, batch, step_items, counts)
            state.micro_step += 1
            if not last:
                self._fire(Event.ON_SUBSTEP_END)
        run.grad_norm, finite = self._optimizer_step(run, step_loss, step)
        window.loss += torch.where(finite, step_loss, 0.0)  # a skipped step's NaN stays out of logs
        window.items += step_items
        window.steps += 1
        state.global_step += 1

    def _log_evaluate_save(self, run: TrainingRun, epoch_done: bool, preemption: PreemptionGuard) -> None:
        """After a step: callbacks told, then log, evaluate and save as the strategies (or callbacks) ask, every
        rank agreeing; a stop signal on any rank saves a checkpoint and raises `TrainingPreempted`."""
        args, state = self.args, self.state
        self._fire(Event.ON_STEP_END)
        self._agree_on_control()
        step, control = state.global_step, self.control
        if _due(args.logging_strategy, state.logging_steps, step, epoch_done) or control.should_log or \
                (args.logging_first_step and step == 1):
            self.runtime.all_reduce_sum(run.window.loss)  # the logged loss is every rank's
            self._log_training(run, run.add_window(), run.grad_norm)
            run.window = LogWindow.open(self.device)
        if _due(args.eval_strategy, state.eval_steps, step, epoch_done) or self.control.should_evaluate:
            self._evaluate_during_training(run)
            self._agree_on_control()  # on_evaluate may stop training (early stopping)
        saved = None
        new_best = args.save_strategy == "best" and state.best_global_step == step
        if _due(args.save_strategy, state.save_steps, step, epoch_done) or new_best or self.control.should_save or \
                (step >= run.max_steps and args.save_strategy not in ("no", "best")):
            saved = self._save_checkpoint(run)
        if self._agree_on_control(preemption):  # a stop signal reached some rank: save, then exit
            run.nonfinite.flush(run.last_checkpoint)
            stop = TrainingPreempted(preemption.requested or "a stop signal to another rank",
                                     str(saved or self._save_checkpoint(run)))
            self._wait_for_checkpoint()  # exit code 75 means the checkpoint is whole
            logger.warning("%s", stop)
            raise stop

    def _end_run(self, run: TrainingRun) -> TrainOutput:
        """After the last step: the run's loss and throughput, the best model loaded back, the final upload."""
        args, runtime, state = self.args, self.runtime, self.state
        run.nonfinite.flush(run.last_checkpoint)
        runtime_seconds = time.perf_counter() - run.started
        runtime.all_reduce_sum(run.window.loss)
        run.add_window()
        training_loss = run.total_loss.item() / max(run.total_items, 1)
        if args.load_best_model_at_end and not state.best_model_checkpoint and args.metric_for_best_model and \
                any(k.startswith("eval_") for e in state.log_history for k in e):
            logger.warning("load_best_model_at_end: no evaluation gave a finite %s, so no best model was chosen; "
                           "the last step's weights are kept", args.metric_for_best_model)
        if args.load_best_model_at_end and state.best_model_checkpoint:
            if Path(state.best_model_checkpoint).name == f"{run_folders.PREFIX}{state.global_step}":  # saved from
                # these very weights, which nothing has changed since: there is nothing to load
                logger.info("The best model (%s = %s) is the last step's, %s", args.metric_for_best_model,
                            state.best_metric, state.best_model_checkpoint)
            else:
                logger.info("Loading the best model (%s = %s) from %s", args.metric_for_best_model, state.best_metric,
                            state.best_model_checkpoint)
                checkpoint.load_model_weights(self.model, state.best_model_checkpoint, runtime.sharded)
        steps_run = state.global_step - run.start_step
        step_rows = args.per_device_train_batch_size * runtime.world_size * args.gradient_accumulation_steps
        metrics = {"train_runtime": round(runtime_seconds, 3),
                   "train_samples_per_second": round(steps_run * step_rows / runtime_seconds, 3),
                   "train_steps_per_second": round(steps_run / runtime_seconds, 3), "train_loss": training_loss,
                   "epoch": self._logged_epoch()}  # HF's train() metrics carry the epoch (its log() adds it in place)
        self.log(metrics)
        self._fire(Event.ON_TRAIN_END)
        if args.push_to_hub:  # every rank: save_model waits for rank 0; rank 0 uploads, a failure is a warning
            self.save_model()
            if runtime.is_main_process:
                self.hub.push_folder(args.output_dir, state, self.model, "End of training", blocking=True,
                                     revision=args.hub_revision, card_fields={}, observer=True)
        return TrainOutput(state.global_step, training_loss, metrics)

    def _epoch_steps(self, num_examples: int, lengths: list[int] | None, epoch: int) -> list[list[list[int]]]:
        """The epoch's optimizer steps, each a list of global micro-batches of example indices: a pure function of
        the seed, the epoch and the arguments, planned alike on every rank (`batching.epoch_steps`)."""
        args = self.args
        return batching.epoch_steps(num_examples, args.per_device_train_batch_size * self.runtime.world_size,
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
        items = (
            self._count_items(batch) if counts else 0
        )  # before compute_loss, which may pop labels
        batch = to_device(batch, self.device)  # a new dict: an override's `inputs.pop("labels")` leaves ours intact
        with run.dropout:
            with self.precision.autocast(self.device):
                loss = self._captured_loss(run, batch)
            # sum over the step's examples / their number: the same update for any accumulation or world size
            # a step without any loss term (every label -100) updates with zero gradients (as HF's does)
            scaled = loss * (items * self.runtime.world_size / step_items) if step_items else loss * 0.0
            if not self._captured_backward(run, run.scaler.scale(scaled) if run.scaler is not None else scaled):
                return self._forward_backward(run, batch, step_items, counts)  # the eager model, this batch again
        return loss.detach().float() * items

    def _captured_backward(self, run: TrainingRun, scaled: torch.Tensor) -> bool:
        """`scaled.backward()`; False when the captured backward raised (its graph is recorded at the first
        backward of each shape, after the forward's succeeded), which switches this run to the eager model, said
        once. The failing node is the compiled model's whole backward, which raises before it hands any gradient to
        autograd, so nothing of this micro-batch has been accumulated and the caller runs it again eagerly."""
        if run.fallback is None or run.fallback.failed:
            scaled.backward()
            return True
        done, _ = run.fallback.attempt(scaled.backward)
        if not done:
            run.model = run.fallback.eager
        return done

    def _captured_loss(self, run: TrainingRun, batch: dict) -> torch.Tensor:
        """`compute_loss` on the training model; replayed as CUDA graphs, a capture that raises switches this run to
        the eager model, said once (`graphs.EagerFallback.attempt`)."""
        if run.fallback is not None and not run.fallback.failed:
            torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs were read: they may be overwritten
            done, loss = run.fallback.attempt(lambda: self.compute_loss(run.model, batch))
            if done:
                return loss
            run.model = run.fallback.eager
        return self.compute_loss(run.model, batch)

    def compute_loss(self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: int | None = None) -> Any:
        """Mean loss over the batch's items (override for custom losses, as with HF's Trainer).

        finch calls it without `num_items_in_batch` (an override gets its default, None): the loop itself scales
        each micro-batch's mean loss by its share of the step's items, so an override returns the batch's mean.
        Overrides may `inputs.pop("labels")`: the trainer reads the labels before it calls this."""
        labels = inputs.get(self.label_names[0]) if self.label_names else None
        class_weights = self._class_weights()
        weighted = class_weights is not None or self.args.label_smoothing_factor > 0
        custom = self.compute_loss_func is not None or weighted
        model_inputs = {k: v for k, v in inputs.items() if k not in self.label_names} if custom else inputs
        if not custom and labels is not None and self._model_shape()[1]:
            # the model sums its loss terms and divides by this count (HF 4.46+): the batch's mean over the terms
            # that finch counts (a causal LM's shifted targets), which the loop weighs by their share of the step
            if num_items_in_batch is None:  # counted on the device: no host sync in the step
                items = batching.items_of(inputs, self.label_names, shift=self._model_shape()[0])
                num_items_in_batch = items.clamp(min=1) if isinstance(items, torch.Tensor) else max(items, 1)
            model_inputs = {**model_inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**model_inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch or
                                          self._count_items(inputs))
        elif weighted:  # class weights and/or label smoothing: cross-entropy computed here
            logits = split_outputs(outputs, has_labels=False)[1]
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                     weight=class_weights, ignore_index=-100,
                                                     label_smoothing=self.args.label_smoothing_factor)
        else:
            loss = _model_loss(outputs, model, self.label_names, labels_given=labels is not None)
        return (loss, outputs) if return_outputs else loss

    def _model_shape(self) -> tuple[bool, bool]:
        """(whether the model's loss shifts labels, whether its forward takes `num_items_in_batch`): see
        `finch.training.shapes`; read once per model."""
        if getattr(self, "_shape_of", (None,))[0] is not self.model:
            self._shape_of = (self.model, shapes.loss_shifts_labels(self.model), shapes.accepts_loss_kwargs(self.model))
        return self._shape_of[1:]

    def _count_items(self, batch: dict) -> int:
        """The loss terms in a batch, counted as the model's loss counts them (see `batching.count_items`)."""
        return batching.count_items(batch, self.label_names, shift=self._model_shape()[0])

    def _class_weights(self, prepared: Any = None) -> torch.Tensor | None:
        """`args.class_weights` as cross-entropy weights ("balanced": from `train_dataset`'s label counts). A function
        of the arguments and the training set alone, so `compute_loss` gives the same loss before, during and after
        `train()`; computed once for a given training set (`prepared`: that set with its unused columns already
        dropped, as `train()` has it)."""
        spec = self.args.class_weights
        if spec is None or (spec == "balanced" and self.train_dataset is None):  # nothing to count the labels of
            return None
        cached = self._weights_of
        if cached is None or cached[0] is not self.train_dataset or cached[1] != spec or cached[2] != self.device:
            batching.check_cross_entropy_options(self.args, self.model)  # a regression model: said, not a crash
            dataset = prepared if prepared is not None else self.train_dataset
            if prepared is None and dataset is not None:
                dataset = batching.prepare_dataset(dataset, self.model, self.args.remove_unused_columns,
                                                   self.label_names, self._own_collator)[0]
            weights = batching.class_weights(spec, dataset, self.label_names, self.device)
            self._weights_of = cached = (self.train_dataset, spec, self.device, weights)
        return cached[3]

    def _optimizer_step(self, run: TrainingRun, step_loss: torch.Tensor,
                        batches: list[list[int]]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Unscale, clip, step the optimizer and the schedule, clear gradients; a step whose loss or gradient norm
        is NaN/Inf on any rank is skipped on all (see `finch.training.nonfinite`). Returns the gradient norm and the
        device flag `finite`."""
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
        self._fire(Event.ON_PRE_OPTIMIZER_STEP)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self._fire(Event.ON_OPTIMIZER_STEP)
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

    def _evaluate_during_training(self, run: TrainingRun | None = None, baseline: bool = False) -> None:
        if run is not None:
            run.nonfinite.flush(run.last_checkpoint)  # the host waits for the device here anyway
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
        check_best_metric(name, metrics)
        if not math.isfinite(value):  # NaN would be best forever, unbeaten
            logger.warning("metric_for_best_model %s is %s at step %d: this evaluation is no candidate for the best "
                           "model (check compute_metrics, or the model's outputs)", key, value, self.state.global_step)
            return
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric, self.state.best_global_step = value, self.state.global_step

    # ---- hyperparameter search -----------------------------------------------------------------------------------
    def hyperparameter_search(self, hp_space: Callable | None = None, compute_objective: Callable | None = None,
                              n_trials: int | None = 20, direction: str | list[str] = "minimize",
                              backend: Any = "optuna", hp_name: Callable | None = None, **kwargs: Any) -> Any:
        """HuggingFace's `hyperparameter_search` on Optuna: `n_trials` trials, each a fresh model from `model_init`
        trained in `output_dir/run-<trial number>`. Returns the best trial as a `BestRun` (a list for several
        directions). See `finch.search.study.hyperparameter_search` for the options, pruning and storage."""
        from finch.search.study import hyperparameter_search

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


def _enable_activation_checkpointing(model: torch.nn.Module, kwargs: dict | None) -> None:
    """`activation_checkpointing=True`, as HF's Trainer turns it on: the model's `activation_checkpointing_enable`
    (`every_n_layers` and `offload` taken out of the kwargs, the rest for `torch.utils.checkpoint`; transformers'
    default is the non-reentrant form, which also works when the embeddings are frozen, as under LoRA)."""
    kwargs = dict(kwargs or {})
    every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs or None, every_n_layers=every_n_layers, offload=offload)
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None:
        raise ConfigError(f"activation_checkpointing=True: {type(model).__name__} has no "
                          f"activation_checkpointing_enable() (a transformers model has); wrap its layers in "
                          f"torch.utils.checkpoint yourself, or set activation_checkpointing=False")
    enable(gradient_checkpointing_kwargs=kwargs or None)


def _set_use_cache(model: torch.nn.Module, use_cache: bool) -> None:
    """The model config's `use_cache` set to `TrainingArguments.use_cache` (False unless asked), as HF's Trainer sets
    it: training and evaluation forwards build no generation cache (memory, and state that is no prediction)."""
    if shapes.takes_use_cache(model):
        shapes.unwrap(model).config.use_cache = use_cache


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
