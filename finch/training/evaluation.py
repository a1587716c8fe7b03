"""The Trainer's `evaluate` and `predict` (`EvaluationMixin`) and the pieces of their prediction loop: reading model
outputs, moving them to the CPU batch by batch, restoring dataset order, and `compute_metrics` tried before training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction
from transformers.trainer_utils import PredictionOutput

from finch.data import batching
from finch.errors import ConfigError, DataError
from finch.events import Event, metrics_trial
from finch.training import shapes
from finch.training.readback import Readback

logger = logging.getLogger("finch")

PAD_INDEX = -100  # what pads token-level outputs of different lengths, as HF does
METRICS_CHECK_ROWS = 8  # rows compute_metrics is tried on before training: enough for shapes, seconds at most


class EvaluationMixin:
    """`Trainer.evaluate` and `Trainer.predict` on the one prediction loop. Part of `finch.training.trainer.Trainer`:
    it reads the trainer's model, arguments, runtime, collator, label names, precision and metrics function, and calls
    its `compute_loss`, `log` and callbacks."""

    def _check_compute_metrics(self) -> None:
        """Run `compute_metrics` (and the evaluation loss) on a few evaluation rows before training, so a broken
        function fails in seconds instead of after the first epoch. Invisible to the run: no log entry, no
        callback event, and every RNG left exactly where it was (exact resume and parity compare bit for bit)."""
        dataset = self.eval_dataset
        if self.compute_metrics is None or dataset is None:
            return
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()), None)
        if dataset is None or len(dataset) == 0:
            return
        with _rng_preserved(), metrics_trial():
            try:
                checked = self._prediction_loop(_first_rows(dataset, METRICS_CHECK_ROWS), None, "eval",
                                                tell_callbacks=False)
            except ConfigError as on_a_few_rows:
                if len(dataset) <= METRICS_CHECK_ROWS:
                    raise
                # it may need the whole set (it reads the evaluation dataset itself, say): tried on all of it, once,
                # before training; only a failure there too is the function's mistake (reported on the few rows)
                try:
                    checked = self._prediction_loop(dataset, None, "eval", tell_callbacks=False)
                except ConfigError:
                    raise on_a_few_rows from on_a_few_rows.__cause__
                logger.info("compute_metrics failed on the first %d evaluation rows but works on the whole set: it "
                            "was checked on the whole set before training", METRICS_CHECK_ROWS)
        if self.args.metric_for_best_model is not None:
            check_best_metric(self.args.metric_for_best_model, checked.metrics)

    def _call_compute_metrics(self, prediction: EvalPrediction, before_training: bool = False) -> dict[str, float]:
        """`compute_metrics(prediction)`, its mistakes reported with the function's name and what it was given
        (`before_training`: finch's early try, which the message then explains)."""
        name = getattr(self.compute_metrics, "__qualname__", type(self.compute_metrics).__name__)
        try:
            result = self.compute_metrics(prediction)
        except Exception as error:
            raise ConfigError(
                f"compute_metrics={name} raised {type(error).__name__}: {error}. It was given an EvalPrediction with "
                f"predictions {describe(prediction.predictions)} and label_ids {describe(prediction.label_ids)}"
                + (f" (finch tries it on {METRICS_CHECK_ROWS} evaluation rows before training, so this shows early)"
                   if before_training else "") +
                ". Fix the function (the traceback above points into it); the usual start is "
                "`logits, labels = eval_pred; predictions = np.argmax(logits, axis=-1)`.") from error
        if not isinstance(result, Mapping):
            raise ConfigError(f"compute_metrics={name} returned {type(result).__name__} {result!r:.80}, not a dict: "
                              f"return metric names mapped to numbers, e.g. {{'accuracy': 0.91, 'f1': 0.88}}")
        metrics = {str(key): plain(value) for key, value in result.items()}
        for key, value in metrics.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise ConfigError(f"compute_metrics={name} returned {key!r}: {_described(result[key])}, which cannot "
                                  f"be logged: return numbers (one key per number, e.g. {{'f1_class0': 0.91}}), or "
                                  f"text or lists of numbers, which are logged as they are") from None
        self._say_non_numbers(name, result, metrics)
        return metrics

    def _say_non_numbers(self, name: str, result: Mapping, metrics: dict[str, Any]) -> None:
        """One warning per key for metrics that are not one number (text, a per-class list, None): logged as they
        are, as HF's Trainer logs them, but trackers, the report's curves and the best model's choice read numbers."""
        said = self.__dict__.setdefault("_non_number_metrics", set())
        others = [key for key, value in metrics.items() if key not in said and not isinstance(value, (int, float))]
        if not others:
            return
        said.update(others)
        logger.warning("compute_metrics=%s returned %s, not one number each: logged as they are (as HF's Trainer "
                       "logs them), but trackers, the report's curves and metric_for_best_model take single numbers; "
                       "return one key per number (e.g. {'f1_class0': 0.91, 'f1_class1': 0.88}) to see them there",
                       name, ", ".join(f"{key!r} ({_described(result[key])})" for key in others))

    # ---- evaluation and prediction -------------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval", *, reuse_unchanged: bool = False) -> dict[str, float]:
        """Loss and `compute_metrics` on `eval_dataset` (default: the trainer's); a dict of sets gives
        `eval_<name>_*` metrics for each. Logged, and passed to callbacks' `on_evaluate`.

        `reuse_unchanged` (finch's own; `finch train` uses it for its final evaluation): when the last evaluation was
        of these same weights on this same dataset, with the same settings, its metrics are returned (logged and
        passed to callbacks again) instead of a second identical pass. Off by default: a user's `compute_metrics`
        may have side effects that HF's second pass would repeat."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigError("Trainer.evaluate() needs an eval_dataset (pass one here or to the Trainer)")
        if isinstance(dataset, str):  # HF: the name of one of the Trainer's eval datasets
            if not isinstance(self.eval_dataset, dict) or dataset not in self.eval_dataset:
                names = sorted(self.eval_dataset) if isinstance(self.eval_dataset, dict) else []
                raise ConfigError(f"Trainer.evaluate(eval_dataset={dataset!r}): a name picks one of the Trainer's "
                                  f"eval_dataset dict ({names or 'it has none'}); pass a dataset or one of those")
            dataset = self.eval_dataset[dataset]
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, subset in dataset.items():
                metrics.update(self.evaluate(subset, ignore_keys, f"{metric_key_prefix}_{name}",
                                             reuse_unchanged=reuse_unchanged))
            return metrics
        if _is_empty(dataset):
            raise DataError(f"Trainer.evaluate(): the evaluation set{_named(metric_key_prefix)} has no rows, so there "
                            f"is no loss or metric to compute (an empty split or filter?); pass a dataset with rows")
        key = self._evaluation_key(dataset, ignore_keys, metric_key_prefix)
        last_key, last_metrics = getattr(self, "_last_evaluation", (None, {}))
        # every rank takes the same branch (agreed only when a reuse is asked for: no collective otherwise)
        if reuse_unchanged and not self.runtime.any_rank(key is None or key != last_key)[0]:
            metrics = dict(last_metrics)
            logger.info("The weights are those of the last evaluation (step %d): its metrics are reused, not "
                        "computed again", self.state.global_step)
        else:
            # HF's rule: without compute_metrics, evaluate() gathers no predictions (a causal LM's vocabulary-sized
            # logits would fill memory for nothing)
            metrics = self._prediction_loop(dataset, ignore_keys, metric_key_prefix,
                                            loss_only=self.compute_metrics is None).metrics
        self._last_evaluation = (key, dict(metrics))
        metrics["epoch"] = self._logged_epoch()  # as HF's evaluate() returns it: tutorials read metrics["epoch"]
        self.log(metrics)
        self._fire(Event.ON_EVALUATE, metrics=metrics)
        return metrics

    def _evaluation_key(self, dataset: Any, ignore_keys: list[str] | None, prefix: str) -> tuple | None:
        """What an evaluation's metrics depend on: the weights' digest, the dataset and the settings that shape the
        pass. None where the weights cannot be read whole on this rank (FSDP2's shards), or for a dataset
        without a length."""
        if self.runtime.sharded or not hasattr(dataset, "__len__"):  # no length: refused by the prediction loop
            return None
        args = self.args
        return (weights_digest(self.model), id(dataset), getattr(dataset, "_fingerprint", None), len(dataset), prefix,
                tuple(ignore_keys or ()), id(self.compute_metrics), id(self.preprocess_logits_for_metrics),
                tuple(args.include_for_metrics or ()), args.per_device_eval_batch_size, self.precision.name)

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        """Predictions for every example, in dataset order: `(predictions, label_ids, metrics)`."""
        output = self._prediction_loop(test_dataset, ignore_keys, metric_key_prefix)
        self._fire(Event.ON_PREDICT, metrics=output.metrics)
        return output

    def _batch_predictions(self, model: torch.nn.Module, batch: dict, outputs: Any, has_labels: bool,
                           ignore: tuple[str, ...]) -> Any:
        """What a batch contributes to `predictions`: the model's outputs without the loss and `ignore` (HF's
        logits: one tensor, or a tuple). `Seq2SeqTrainer` generates instead, with `predict_with_generate`."""
        return split_outputs(outputs, has_labels, ignore)[1]

    def _batch_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """What a batch contributes to `label_ids` (the labels as they are; `Seq2SeqTrainer` pads them)."""
        return labels

    def _prediction_loader(self, dataset: Any, prefix: str) -> tuple[Any, list[list[int]], Any]:
        """The dataset checked and prepared, the global plan of evaluation batches (longest first), and the
        DataLoader of this rank's share of them (batches rank, rank + world, ...)."""
        model, args, runtime = self.model, self.args, self.runtime
        given, name = dataset, "the evaluation dataset" if prefix == "eval" else f"the {prefix} dataset"
        batching.check_map_style(dataset, name)
        dataset, _ = batching.prepare_dataset(dataset, model, args.remove_unused_columns, self.label_names,
                                              self._own_collator)
        lengths = batching.example_lengths(dataset)
        batching.check_dataset(given, model, name, lengths, self._tokenizing_collator())
        batches = batching.eval_batches(len(dataset), args.per_device_eval_batch_size, lengths)
        return dataset, batches, self._loader(dataset, batches[runtime.rank::runtime.world_size])

    def _loader(self, dataset: Any, batches: list[list[int]]) -> Any:
        """A DataLoader over exactly `batches` of `dataset` (this rank's), with the trainer's collator, workers and
        pinning (on CUDA): what training, evaluation and HF's `get_*_dataloader` all load through."""
        args = self.args
        return batching.make_loader(dataset, batches, self.data_collator, args.dataloader_num_workers,
                                args.dataloader_pin_memory and self.device.type == "cuda")

    def _readback(self) -> Readback:
        """How evaluation outputs reach the host: asynchronously, read a few batches later, on CUDA."""
        return Readback.for_device(self.device)

    def _prediction_loop(self, dataset: Any, ignore_keys: list[str] | None, prefix: str,
                         tell_callbacks: bool = True, loss_only: bool = False) -> PredictionOutput:
        """Batches in decreasing length under `inference_mode`; outputs to the CPU batch by batch; dataset order.

        With several processes, rank r runs batches r, r + world, ... of the one global plan, and every rank gets
        every rank's outputs: each example is evaluated once, predictions come back in dataset order, and the loss
        and `compute_metrics` see exactly what one process would (the same batches, summed in the same order), so
        the metrics are identical on every rank. `tell_callbacks=False` fires no `on_prediction_step` (finch's own
        check before training). `loss_only` (or `prediction_loss_only`): the loss alone, no predictions gathered."""
        model, args, runtime = self.model, self.args, self.runtime
        dataset, batches, loader = self._prediction_loader(dataset, prefix)
        ignore = shapes.ignore_keys(model, ignore_keys)
        loss_only = loss_only or bool(getattr(args, "prediction_loss_only", False))
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        include = set(args.include_for_metrics or ())
        readback = self._readback()  # each batch's outputs to the host, without a sync per batch on CUDA
        counts = []  # (items, rows) of this rank's batches
        # FSDP2: the whole model gathered first (ranks run different numbers of batches), outside inference mode, or
        # the gathered parameters would be inference tensors that the next training forward cannot write into
        with runtime.gathered(model), torch.inference_mode():
            for batch in loader:
                has_labels = all(batch.get(name) is not None for name in self.label_names)
                batch_items = self._count_items(batch)
                batch = to_device(batch, self.device)
                # read before compute_loss: an override may `inputs.pop("labels")` (HF's class-imbalance recipe)
                labels = batch[self.label_names[0]] if has_labels else None
                loss = None
                with self.precision.autocast(self.device):
                    if has_labels:
                        loss, outputs = self.compute_loss(model, batch, return_outputs=True)
                        loss = loss.detach().float()  # read with the predictions, not here: no sync per batch
                    else:
                        outputs = model(**batch)
                logits = None if loss_only else self._batch_predictions(model, batch, outputs, has_labels, ignore)
                if logits is not None and self.preprocess_logits_for_metrics is not None:
                    logits = self.preprocess_logits_for_metrics(logits, labels)
                # include_for_metrics, as HF gives them: the input ids, and each example's batch mean loss
                inputs = batch.get(getattr(model, "main_input_name", "input_ids")) if "inputs" in include else None
                labels = self._batch_labels(labels) if not loss_only else None  # the loss alone: no labels kept
                staged = readback.stage((logits, labels, loss, inputs))
                counts.append((batch_items, batching.batch_rows(batch)))
                # what is kept is copied only once the model's outputs are freed: small arrays kept from every batch
                # then fill the space the outputs left, instead of pinning the top of the heap above it (a causal
                # LM's vocabulary-sized logits otherwise left the heap growing by megabytes per batch)
                del outputs, logits, batch, labels, loss, inputs
                readback.put(staged)
                if tell_callbacks:
                    self._fire(Event.ON_PREDICTION_STEP)
            outputs_of_batches = [_batch_record(read, items, rows, include)
                                  for read, (items, rows) in zip(readback.results(), counts)]
        model.train(was_training)
        gathered = runtime.all_gather((outputs_of_batches, time.perf_counter() - started))
        # global batch b was run by rank b % world as its (b // world)-th batch: back to the plan's order
        in_order = [gathered[b % runtime.world_size][0][b // runtime.world_size] for b in range(len(batches))]
        loss_sum, items = 0.0, 0
        for _, _, batch_loss, batch_items, _ in in_order:
            if batch_loss is not None:
                loss_sum += batch_loss
                items += batch_items
        order = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if batches else np.zeros(0, int)
        prediction_chunks = [logits for logits, *_ in in_order if logits is not None]
        predictions = reorder(concatenate(prediction_chunks), order) if prediction_chunks else None
        label_chunks = [labels for _, labels, *_ in in_order if labels is not None]
        label_ids = reorder(concatenate(label_chunks), order) if label_chunks else None
        metrics: dict[str, float] = {}
        if items:
            metrics["loss"] = loss_sum / items
        elif any(batch_loss is not None for _, _, batch_loss, _, _ in in_order):  # labels, every one -100: as HF
            metrics["loss"] = float("nan")
        if self.compute_metrics is not None and label_ids is not None and predictions is not None:
            extras = {name: reorder(concatenate([batch[-1][name] for batch in in_order]), order)
                      for name in ("inputs", "losses") if all(batch[-1][name] is not None for batch in in_order)}
            metrics.update(self._call_compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids,
                                                                     **extras), before_training=not tell_callbacks))
        runtime_seconds = max(seconds for _, seconds in gathered)  # the slowest rank's: the same on every rank
        metrics.update(runtime=round(runtime_seconds, 4), samples_per_second=round(len(dataset) / runtime_seconds, 3),
                       steps_per_second=round(len(batches) / runtime_seconds, 3))
        metrics = {k if k.startswith(f"{prefix}_") else f"{prefix}_{k}": v for k, v in metrics.items()}
        return PredictionOutput(predictions=predictions, label_ids=label_ids, metrics=metrics)



def check_best_metric(name: str, metrics: dict[str, Any]) -> None:
    """Raise `ConfigError` when `metric_for_best_model` is among the evaluation metrics but not one number (text, a
    per-class list): no evaluation could be compared with another. Checked before training and at each evaluation."""
    key = name if name.startswith("eval_") else f"eval_{name}"
    value = metrics.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        numbers = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                         and not k.endswith(("_runtime", "_per_second")))
        raise ConfigError(f"metric_for_best_model={name!r} is {type(value).__name__} {value!r:.60}, not a number, so "
                          f"no evaluation can be compared with another: return it from compute_metrics as one number, "
                          f"or choose another metric ({', '.join(numbers)})")


def _batch_record(read: tuple, items: int, rows: int, include: set[str]) -> tuple:
    """One batch as the loop keeps it: (logits, labels, loss sum or None, items, extras), from its read-back
    (logits, labels, mean loss, inputs) as NumPy. The loss is summed in Python floats, batch by batch in the plan's
    order, so every rank and every device sums the same numbers in the same order."""
    logits, labels, loss, inputs = read
    loss_sum = float(loss) * items if loss is not None else None
    extras = {"inputs": inputs if "inputs" in include else None,
              "losses": np.full(rows, loss_sum / items, np.float32) if "loss" in include and loss_sum is not None
              else None}
    return logits, labels, loss_sum, items, extras


def weights_digest(model: torch.nn.Module) -> tuple[int, ...]:
    """A digest of every parameter and buffer: the sum of each one's bytes read as 64-bit integers, exactly.

    Any write that changes a value changes its tensor's sum (short of two writes that cancel to the bit). Version
    counters cannot stand in: torch's fused AdamW updates weights without advancing them. One read of the weights,
    on their device (milliseconds for MiniLM on a CPU), against an evaluation's forward pass over every example."""
    sums = []
    for tensor in (*model.parameters(), *model.buffers()):
        raw = tensor.detach().reshape(-1).view(torch.uint8)
        whole = raw.numel() // 8 * 8
        total = raw[:whole].view(torch.int64).sum()
        sums.append(total + raw[whole:].sum() if whole < raw.numel() else total)
    return tuple(torch.stack(sums).tolist()) if sums else ()


def split_outputs(outputs: Any, has_labels: bool, ignore_keys: Sequence[str] = ()) -> tuple[Any, Any]:
    """(loss or None, logits) from a model output object, dict, tuple or bare tensor.

    Logits are one tensor, or a tuple of tensors when the model returns several (loss and `ignore_keys` excluded).
    """
    if isinstance(outputs, torch.Tensor):
        return None, outputs
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        rest = [v for k, v in outputs.items() if k != "loss" and k not in ignore_keys and v is not None]
    else:
        outputs = tuple(outputs)
        loss = outputs[0] if has_labels else None
        rest = list(outputs[1:] if has_labels else outputs)
    rest = [v for v in rest if not shapes.is_cache(v)]  # a generation cache is state, not a prediction
    return loss, (rest[0] if len(rest) == 1 else tuple(rest))


def _described(value: Any) -> str:
    """A metric's value for a message: its type, its shape when it has one, and the start of its text."""
    shape = getattr(value, "shape", None)
    shaped = f" of shape {tuple(shape)}" if shape is not None else (
        f" of {len(value)} items" if isinstance(value, (list, tuple)) else "")
    return f"{type(value).__name__}{shaped} {value!r:.80}"


def plain(value: Any) -> Any:
    """A metric as Python numbers: NumPy and torch scalars (one-element arrays and tensors included) become
    float/int/bool, arrays lists, in dicts and lists too; as HF's `denumpify_detensorize`, which misses 0-d arrays."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.item() if value.size == 1 else value.tolist()
    return value


def concatenate(chunks: list[Any]) -> Any:
    """Join per-batch arrays along the first axis, padding other axes with -100 when their sizes differ."""
    if not chunks:
        return None
    if isinstance(chunks[0], tuple):
        return tuple(concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0])))
    if isinstance(chunks[0], dict):
        return {key: concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
    if chunks[0].ndim <= 1 or all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return np.concatenate(chunks, axis=0)
    shape = [sum(c.shape[0] for c in chunks)] + [max(c.shape[d] for c in chunks) for d in range(1, chunks[0].ndim)]
    joined = np.full(shape, PAD_INDEX, dtype=chunks[0].dtype)
    row = 0
    for chunk in chunks:
        joined[(slice(row, row + chunk.shape[0]), *(slice(0, n) for n in chunk.shape[1:]))] = chunk
        row += chunk.shape[0]
    return joined


def reorder(value: Any, order: np.ndarray) -> Any:
    """Rows of `value` (arrays or tuples of arrays) put back in dataset order; `order[i]` is row i's index."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(reorder(v, order) for v in value)
    if isinstance(value, dict):
        return {key: reorder(v, order) for key, v in value.items()}
    restored = np.empty_like(value)
    restored[order] = value
    return restored


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Every RNG the run draws from (Python, NumPy, torch CPU and CUDA) is put back as it was on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _first_rows(dataset: Any, count: int) -> Any:
    """The first `count` rows, keeping the dataset's type where it can (`datasets.Dataset.select`)."""
    count = min(count, len(dataset))
    if hasattr(dataset, "select"):
        return dataset.select(range(count))
    return torch.utils.data.Subset(dataset, range(count))


def describe(value: Any) -> str:
    """A short description of a model output or array for error messages: type, keys, shapes."""
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {[k for k, v in value.items() if v is not None]}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(describe(v) for v in value[:4])})"
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(value).__name__


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device` (a new dict)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _is_empty(dataset: Any) -> bool:
    """A sized dataset with no rows (an iterable one cannot tell before it is read)."""
    try:
        return len(dataset) == 0
    except TypeError:
        return False


def _named(prefix: str) -> str:
    return f" ({prefix.removeprefix('eval_')})" if prefix.startswith("eval_") else ""
