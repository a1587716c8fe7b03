"""Dataset preparation for the model, batch order (a pure function of seed and epoch), collation, loaders."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, default_data_collator

from finch.data.models import is_peft
from finch.errors import ConfigError, DataError

MEGABATCH_FACTOR = 50  # length grouping sorts windows of 50 batches: little padding, order still random
LABEL_COLUMNS = ("label", "labels", "label_ids")


def model_input_names(model: torch.nn.Module) -> set[str]:
    """Argument names of `model.forward` (what a batch may contain); a PEFT adapter's, the model it wraps (as HF
    reads them: peft's forward names few of the arguments it passes on)."""
    if is_peft(model):
        model = model.get_base_model()
    return set(inspect.signature(model.forward).parameters) - {"self", "kwargs"}


def prepare_dataset(dataset: Any, model: torch.nn.Module, remove_unused_columns: bool,
                    label_names: Sequence[str] = (), own_collator: bool = False) -> tuple[Any, list[str]]:
    """Rename `label` to `labels` when the model wants `labels`, and drop columns the model does not take, but the
    `label_names` (a custom `compute_loss` reads those, as HF keeps them). For the user's own collator
    (`own_collator`), the label columns are kept as they are named, as HF passes them (a collator written for HF
    reads `example["label"]`).

    Returns the dataset and the dropped column names. Datasets without column names (plain torch datasets, lists
    of dicts) are returned unchanged.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        return dataset, []
    accepted = model_input_names(model)
    if "label" in columns and "label" not in accepted and "labels" in accepted and "labels" not in columns and \
            not own_collator:
        dataset = dataset.rename_column("label", "labels")
        columns = dataset.column_names
    if not remove_unused_columns or not accepted:  # forward(**kwargs) alone: it may take anything
        return dataset, []
    kept = set(label_names) | (set(LABEL_COLUMNS) if own_collator else set())
    unused = [c for c in columns if c not in accepted and c not in kept]
    return (dataset.remove_columns(unused) if unused else dataset), unused


def check_map_style(dataset: Any, what: str) -> None:
    """Raise `ConfigError` for a dataset without a length or indexing (streaming `datasets.IterableDataset`,
    `torch.utils.data.IterableDataset`, a generator): finch plans each epoch's batches from (seed, epoch), which
    needs both, and so do exact resume and length-grouped batches."""
    if isinstance(dataset, Mapping):  # a DatasetDict, or a dict of sets: one of them was meant
        keys = list(dataset)
        raise ConfigError(f"{what} is a {type(dataset).__name__} of {len(keys)} split(s) {keys}, not one dataset: "
                          f"pass one split, e.g. {what}=dataset[{(keys or ['train'])[0]!r}]")
    if type(dataset).__module__.startswith("pandas"):  # indexing by position fails in the loader (KeyError: 0)
        raise ConfigError(f"{what} is a pandas {type(dataset).__name__}: make it a dataset first, "
                          f"datasets.Dataset.from_pandas(frame), then tokenize it with dataset.map(...)")
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return
    raise ConfigError(f"{what} ({type(dataset).__name__}) has no length or indexing (a streaming dataset?): "
                      f"finch plans every epoch's batches from (seed, epoch), which makes resume exact and batches "
                      f"length-grouped, and needs both. Pass a datasets.Dataset (load_dataset without streaming=True, "
                      f"no .to_iterable_dataset(); Dataset.from_generator(...) for a generator: it stays on disk, "
                      f"memory-mapped, so data larger than memory works), or a torch Dataset with __len__ and "
                      f"__getitem__")


def check_dataset(dataset: Any, model: torch.nn.Module, what: str, lengths: Sequence[int] | None = None,
                  tokenizing_collator: bool = False) -> None:
    """Raise `DataError` for mistakes that torch would report from deep inside the forward pass, with the fix: an
    untokenized dataset, texts longer than the model's positions, labels that are strings or outside the model's
    `num_labels`. Datasets without column names (torch datasets, lists) are checked for tokens by their first
    example. `tokenizing_collator`: the user's data_collator gets every column, and may tokenize itself."""
    columns = getattr(dataset, "column_names", None)
    if not tokenizing_collator:
        check_tokenized(dataset, model, what, columns or first_example_keys(dataset))
    if columns is None:
        return
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", "input_ids")
    limit = getattr(config, "max_position_embeddings", None)
    if lengths and _nested(dataset, main):  # multiple choice: the limit is per sequence, not per example
        lengths = [max(map(len, row), default=0) for row in dataset[main]]
    if lengths and isinstance(limit, int) and max(lengths) > limit:
        row = int(np.argmax(lengths))
        raise DataError(f"{what}: row {row} has {lengths[row]} tokens, but {type(model).__name__} takes at most "
                        f"{limit}; tokenize with truncation=True (max_length={limit} or less)")
    vocab = getattr(config, "vocab_size", None)
    if main == "input_ids" and main in columns and isinstance(vocab, int) and hasattr(dataset, "with_format"):
        import pyarrow
        import pyarrow.compute

        ids = dataset.with_format("arrow")[main]
        while hasattr(ids, "type") and pyarrow.types.is_list(ids.type):  # nested: one list per choice
            ids = pyarrow.compute.list_flatten(ids)
        highest = pyarrow.compute.max(ids).as_py()
        if highest is not None and highest >= vocab:  # torch: "IndexError: index out of range in self"
            raise DataError(f"{what}: token id {highest} is beyond the model's vocabulary ({vocab} tokens): the "
                            f"data was tokenized with another model's tokenizer. Tokenize it with the model's own "
                            f"(AutoTokenizer.from_pretrained of the same name or folder)")
    label = next((name for name in ("labels", "label") if name in columns), None)
    if label is None or len(dataset) == 0:
        return
    values = _column_values(dataset, label)
    if isinstance(values[0], str):
        raise DataError(f"{what}: the labels ({label!r}) are strings ({values[0]!r}, ...), not class ids; encode them, "
                        f"e.g. dataset.class_encode_column({label!r}), and give the model id2label/label2id")
    num_labels = getattr(config, "num_labels", None)
    single_label = getattr(config, "problem_type", None) in (None, "single_label_classification")
    single_label = single_label and not _nested(dataset, main)  # multiple choice: a label picks a choice, no class
    integers = values.dtype.kind in "iu" if isinstance(values, np.ndarray) else all(type(v) is int for v in values)
    if isinstance(num_labels, int) and num_labels > 1 and single_label and integers:
        ids = np.asarray(values, dtype=np.int64)
        outside = np.flatnonzero((ids != -100) & ((ids < 0) | (ids >= num_labels))).tolist()
        if outside:
            highest = int(ids.max())
            raise DataError(f"{what}: label {int(ids[outside[0]])} (row {outside[0]}; {len(outside)} row(s) in all) is "
                            f"not a class of the model, which has num_labels={num_labels} (ids 0 to "
                            f"{num_labels - 1}); build it with num_labels={max(highest + 1, num_labels)} (and "
                            f"id2label), or fix the labels")


def check_tokenized(dataset: Any, model: torch.nn.Module, what: str, columns: Sequence[str] | None) -> None:
    """Raise `DataError` when the model reads token ids (its forward takes its `main_input_name`, input_ids for
    text) and `columns` have neither them nor `inputs_embeds`: raw text, which the collator or the forward would
    refuse with a message about neither the dataset nor the fix."""
    main = getattr(model, "main_input_name", "input_ids")
    accepted = model_input_names(model)
    if columns is None or main not in accepted or main in columns or "inputs_embeds" in columns:
        return
    reads = [name for name in (main, "attention_mask", "token_type_ids", "pixel_values", "inputs_embeds")
             if name in accepted]
    texts = [name for name in columns if name not in LABEL_COLUMNS][:2] or ["text"]
    call = ", ".join(f"batch[{name!r}]" for name in texts)
    raise DataError(f"{what} has no {main!r} column (its columns: {list(columns)}): it is not tokenized, and "
                    f"{type(model).__name__} reads {', '.join(reads)}. Tokenize it first: "
                    f"dataset = dataset.map(lambda batch: tokenizer({call}, truncation=True), batched=True) (a "
                    f"data_collator of your own that tokenizes each batch needs remove_unused_columns=False, so "
                    f"the text reaches it)")


def first_example_keys(dataset: Any) -> list[str] | None:
    """The keys of a dataset's first example when it is a dict (a list of dicts, a torch Dataset), else None."""
    try:
        first = dataset[0] if len(dataset) else None
    except Exception:  # noqa: BLE001 (a dataset that cannot be indexed so: the loader will say)
        return None
    return [str(key) for key in first] if isinstance(first, Mapping) else None


def _nested(dataset: Any, column: str) -> bool:
    """Whether a dataset's `column` holds several sequences per example (a list of lists: multiple choice)."""
    feature = (getattr(dataset, "features", None) or {}).get(column)
    inner = getattr(feature, "feature", None)
    return inner is not None and hasattr(inner, "feature") or isinstance(inner, (list, tuple))


def _column_values(dataset: Any, name: str) -> Any:
    """A column's values: a NumPy array through Arrow for a `datasets.Dataset` column of numbers (indexing one
    gives a column that reads row by row), else as the dataset gives them."""
    if isinstance(dataset, datasets.Dataset):
        import pyarrow as pa

        column = dataset.select_columns([name]).with_format("arrow")[:].column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            return column.to_numpy()
    return dataset[name]


def example_lengths(dataset: Any) -> list[int] | None:
    """Token count of each example as it will be padded, from the `input_ids` column; None when there is no such
    column. An example of more than one sequence (multiple choice: one per choice) counts its choices times its
    longest, the size of its part of a padded batch."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "input_ids" not in columns:
        return None
    if isinstance(dataset, datasets.Dataset):  # Arrow's list lengths: no Python list per example (1.86M rows)
        return _arrow_lengths(dataset.select_columns(["input_ids"]).with_format("arrow")[:].column("input_ids"))
    if columns is not None:
        return [_padded_size(ids) for ids in dataset["input_ids"]]
    try:
        return [_padded_size(dataset[i]["input_ids"]) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        return None


def _padded_size(ids: Any) -> int:
    """Tokens of one example's ids padded to a rectangle: its length, or choices x longest for nested lists."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return int(np.prod(ids.shape)) if ids.ndim > 1 else len(ids)
    if len(ids) and isinstance(ids[0], (list, tuple, np.ndarray, torch.Tensor)):
        return len(ids) * max(len(choice) for choice in ids)
    return len(ids)


def _arrow_lengths(column: Any) -> list[int]:
    """`_padded_size` of every row of an Arrow list column, computed columnar."""
    import pyarrow
    import pyarrow.compute as pc

    if isinstance(column, pyarrow.ChunkedArray):
        column = column.combine_chunks()
    if not pyarrow.types.is_list(column.type) and not pyarrow.types.is_large_list(column.type):
        return [_padded_size(ids) for ids in column.to_pylist()]
    outer = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if not (pyarrow.types.is_list(column.type.value_type) or pyarrow.types.is_large_list(column.type.value_type)):
        return outer.astype(np.int64).tolist()
    inner = pc.list_value_length(column.flatten()).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(outer)[:-1]]).astype(np.int64)
    longest = np.zeros(len(outer), np.int64)
    nonempty = outer > 0
    if inner.size:
        longest[nonempty] = np.maximum.reduceat(inner, starts[nonempty])
    return (outer * longest).astype(np.int64).tolist()


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int, strategy: str,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """The training batches of one epoch, as lists of example indices: a pure function of its arguments.

    Resuming therefore jumps to any batch without replaying the ones before it.
    "group_by_length" sorts windows of `MEGABATCH_FACTOR` batches by length, so a batch pads little, then shuffles
    the batches, the one holding the longest example first (an out-of-memory shows at once, not hours in).
    """
    if strategy == "sequential":
        order = np.arange(num_examples)
    else:
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    if strategy != "group_by_length" or lengths is None:
        return [order[i:i + batch_size].tolist() for i in range(0, num_examples, batch_size)]
    rng = np.random.default_rng([seed, epoch, 1])
    lengths = np.asarray(lengths)
    window = MEGABATCH_FACTOR * batch_size
    batches = []
    for start in range(0, num_examples, window):
        megabatch = order[start:start + window]
        megabatch = megabatch[np.argsort(-lengths[megabatch], kind="stable")]
        batches += [megabatch[i:i + batch_size].tolist() for i in range(0, len(megabatch), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b]].max())
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def steps_per_epoch(num_examples: int, global_batch: int, accumulation: int, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch of `num_examples` in batches of `global_batch` rows (all ranks together)."""
    batches = num_examples // global_batch if drop_last else math.ceil(num_examples / global_batch)
    return math.ceil(batches / accumulation)


def epoch_steps(num_examples: int, global_batch: int, accumulation: int, seed: int, epoch: int, strategy: str,
                lengths: Sequence[int] | None = None, drop_last: bool = False) -> list[list[list[int]]]:
    """One epoch's optimizer steps, each a list of `accumulation` global micro-batches (all ranks' rows), each a
    list of example indices: a pure function of its arguments, whatever the number of processes.

    `global_batch` is `per_device_train_batch_size * world_size`, so 2 ranks x 4 see the examples 1 x 8 does;
    `drop_last` drops the epoch's one incomplete batch (wherever length grouping put it)."""
    batches = epoch_batches(num_examples, global_batch, seed, epoch, strategy, lengths)
    if drop_last:
        batches = [batch for batch in batches if len(batch) == global_batch]
    return [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]


def rank_share(global_batch: list[int], rank: int, world_size: int) -> tuple[list[int], bool]:
    """This rank's rows of a global micro-batch, and whether they count: rank r takes the r-th slice of
    `ceil(len / world_size)` rows (the tail batch leaves the last ranks fewer rows, or none).

    A rank left with no rows gets the batch's first row to run with weight 0 (False): DDP needs every rank's
    backward, and no example may count twice."""
    per_rank = math.ceil(len(global_batch) / world_size)
    share = global_batch[rank * per_rank:(rank + 1) * per_rank]
    return (share, True) if share else (global_batch[:1], False)


def eval_batches(num_examples: int, batch_size: int, lengths: Sequence[int] | None) -> list[list[int]]:
    """Evaluation batches, longest first, holding about as many tokens as the first: `batch_size` rows of the
    longest examples, more rows of shorter ones (at most 8x). Less padding, fewer forward calls, and memory never
    above the first batch's; callers put the results back in dataset order.
    """
    if lengths is None:
        return [list(range(i, min(i + batch_size, num_examples))) for i in range(0, num_examples, batch_size)]
    order = np.argsort(-np.asarray(lengths), kind="stable").tolist()
    budget = batch_size * max(lengths[order[0]], 1) if order else 0
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < 8 * batch_size and \
                (len(batches[-1]) + 1) * max(lengths[batches[-1][0]], 1) <= budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def default_collator(processing_class: Any, pad_to_multiple_of: int | None = None) -> Callable[[list[dict]], dict]:
    """Dynamic padding when there is a tokenizer (HF's choice), else stacking of equal-length features.

    `pad_to_multiple_of` rounds each batch's length up (see `padding_multiple`).
    """
    if processing_class is not None and hasattr(processing_class, "pad"):
        return DataCollatorWithPadding(processing_class, pad_to_multiple_of=pad_to_multiple_of)
    return default_data_collator


def padding_multiple(requested: int | None, device_type: str, compiled: bool, bf16: bool) -> int | None:
    """The padding multiple to use: the user's; else 64 when compiling (a 128-token limit gives `torch.compile` two
    shapes, not one per length); 8 on CUDA (tensor cores) and on the CPU under bf16 autocast, where oneDNN builds and
    keeps kernels for every new sequence length (MRPC, MiniLM: 1.74 GB peak RSS at exact lengths, 1.11 GB rounded to
    8, for about 4% more time per step); else none (fp32 on the CPU: exact lengths are fastest)."""
    if requested is not None:
        return requested
    return 64 if compiled else 8 if device_type == "cuda" or bf16 else None


def with_padding_multiple(collator: Callable, multiple: int | None) -> Callable:
    """The user's padding collator (`DataCollatorWithPadding` and HF's other dataclass collators) with
    `pad_to_multiple_of=multiple`, a copy, when they left that field None and pad to each batch's longest; any
    other collator as it is (`padding="max_length"` asks for one exact length, which rounding would change)."""
    padding = getattr(getattr(collator, "padding", None), "value", getattr(collator, "padding", None))
    if padding in ("max_length", "do_not_pad", False):
        return collator
    if multiple and dataclasses.is_dataclass(collator) and getattr(collator, "pad_to_multiple_of", 0) is None:
        return dataclasses.replace(collator, pad_to_multiple_of=multiple)
    return collator


def make_loader(dataset: Any, batches: list[list[int]], collator: Callable, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """A DataLoader over exactly `batches`, in that order (workers prefetch; order never depends on them).

    Its own generator keeps it from drawing on the global torch RNG, which dropout uses: a loader made mid-epoch
    on resume must leave the random stream exactly where the uninterrupted run had it.
    """
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collator, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))


def count_items(batch: dict, label_names: Sequence[str], shift: bool = False) -> int:
    """How many loss terms a batch holds: labels that are not -100 (tokens or examples), else its rows.

    `shift`: the model's loss shifts labels (a causal LM predicts token t+1 at t), so each row's first label is no
    target and is not counted (HF's rule; a collator's `shift_labels` are counted as they are)."""
    return int(items_of(batch, label_names, shift))


def items_of(batch: dict, label_names: Sequence[str], shift: bool = False) -> torch.Tensor | int:
    """`count_items`, left a tensor on the batch's device where it is counted from token labels (reading it would be
    a host sync, which the training step avoids)."""
    for name in label_names:
        labels = batch.get(name)
        if isinstance(labels, torch.Tensor):
            if labels.dtype in (torch.long, torch.int32) and labels.ndim > 1:
                shifted = batch.get("shift_labels")
                if isinstance(shifted, torch.Tensor):
                    return (shifted != -100).sum()
                return (labels[..., 1:] != -100).sum() if shift else (labels != -100).sum()
            return labels.shape[0]
    return batch_rows(batch)


def batch_rows(batch: dict) -> int:
    """Number of examples in a collated batch."""
    return next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]


def label_names_of(model: torch.nn.Module, explicit: Sequence[str] | None) -> list[str]:
    """Names of the batch entries holding labels: `label_names` if given, else the ones the model takes."""
    if explicit:
        return list(explicit)
    return [name for name in ("labels", "label", "label_ids", "start_positions", "end_positions")
            if name in model_input_names(model)][:1] or ["labels"]


def class_names(dataset: Any) -> list[str] | None:
    """Label names from a `datasets.ClassLabel` column, if the dataset has one."""
    features = getattr(dataset, "features", None) or {}
    for column in LABEL_COLUMNS:
        names = getattr(features.get(column), "names", None)
        if names:
            return list(names)
    return None


def check_cross_entropy_options(args: Any, model: Any) -> None:
    """Raise `ConfigError` if `class_weights` or `label_smoothing_factor` is set for a model that is not a
    single-label classifier (regression, multi-label): both shape a cross-entropy over classes."""
    config = getattr(model, "config", None)
    kind = getattr(config, "problem_type", None) or ("regression" if getattr(config, "num_labels", 2) == 1 else None)
    if kind not in ("regression", "multi_label_classification"):
        return
    for name, given in (("class_weights", args.class_weights is not None),
                        ("label_smoothing_factor", args.label_smoothing_factor > 0)):
        if given:
            raise ConfigError(f"{name} applies to single-label classification; this model is set up for {kind} "
                              f"(config.problem_type / num_labels). Remove {name}, or weight the loss in a "
                              f"compute_loss override")


def class_weights(spec: str | Sequence[float] | None, dataset: Any, label_names: Sequence[str],
                  device: torch.device) -> torch.Tensor | None:
    """Cross-entropy weights: "balanced" gives n / (classes * n_class) from the training labels; a list is used as is.

    Raises:
        ConfigError: "balanced" on a dataset without a readable label column, or a list of the wrong length.
    """
    if spec is None:
        return None
    present = getattr(dataset, "column_names", None) or []
    column = next((name for name in (*label_names, *LABEL_COLUMNS) if name in present), None)
    classes = _num_classes(dataset, column)
    if spec == "balanced":
        if column is None:
            raise ConfigError("class_weights='balanced' needs a dataset with a label column to count; pass a list")
        counts = np.bincount(np.asarray(dataset[column], dtype=np.int64), minlength=classes or 0)
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    else:
        weights = np.asarray(list(spec), dtype=np.float64)
        if classes is not None and len(weights) != classes:
            raise ConfigError(f"class_weights has {len(weights)} weights but the data has {classes} classes")
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _num_classes(dataset: Any, column: str | None) -> int | None:
    feature = (getattr(dataset, "features", None) or {}).get(column) if column else None
    return len(feature.names) if getattr(feature, "names", None) else None
