"""Where `finch train` starts a newly made classification head: from the data, not from the order of the labels.

HF draws a new head at random, so the class listed first starts from other weights than the second, and the same data
with its label names swapped trains another model. A head started at zero avoids that, but from zero the encoder gets
no gradient on the first step and tiny ones until the head has grown: on a hard task (State of the Union paragraphs
by party, 5 seeds) it ended 0.9 points of accuracy behind HF's random head.

So each class's row starts from its own examples, as a nearest-class-mean probe: the pretrained model reads a few
hundred training rows (no dropout, no gradient), and row c is the mean of class c's features minus the mean of the
class means, divided by the features' within-class variance (a diagonal linear discriminant), scaled to the
initializer's size (`initializer_range`, 0.02 for BERT). Swapping two label names swaps two rows and nothing else, so
training stays the same class for class; the encoder gets gradients along the direction that tells the classes apart
from the first step. No random number is drawn, so the run's other random draws are those of a zero head.
"""

from __future__ import annotations

from typing import Any

from finch.data.tasks import Task

PROBE_ROWS = 256  # rows the model reads: 1.6 s for 256 MRPC pairs with MiniLM on 2 CPU cores
MIN_PER_CLASS = 8
SCAN_ROWS = 20_000  # labels looked at to fill each class's share (rows beyond are not read)
BATCH = 32


def new_heads(model: Any, loading: dict[str, Any], task: Task) -> list[Any]:
    """The model's newly made output layers with one output per label (not loaded from the checkpoint)."""
    import torch

    new = set(loading.get("missing_keys") or ()) | {key[0] if isinstance(key, tuple) else key
                                                    for key in loading.get("mismatched_keys") or ()}
    return [module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.out_features == task.num_labels
            and f"{name}.weight" in new]


def start_new_head(model: Any, loading: dict[str, Any], task: Task, train: Any, pad_id: int | None) -> str | None:
    """Set each new head's rows from the class means of `train` (a tokenized dataset); what was done, for the header.

    Regression (one output) keeps the head as drawn: there is no order of labels to be independent of. A head that
    the model already had (its weights loaded) is kept."""
    import torch

    heads = new_heads(model, loading, task)
    if task.kind == "regression" or not heads:
        return None
    rows, targets = _probe_rows(train, task)
    with torch.no_grad():
        for head in heads:
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    if not rows:
        return "the new classification head starts at zero (no labelled rows to start it from)"
    features = _features(model, heads[-1], train, rows, pad_id)
    if features is None:
        return "the new classification head starts at zero (its input is not one vector per row)"
    weight, bias = discriminant(features, targets, task.kind == "multilabel",
                                float(getattr(model.config, "initializer_range", 0.02)))
    with torch.no_grad():
        heads[-1].weight.copy_(weight.to(heads[-1].weight.dtype))
        if heads[-1].bias is not None:
            heads[-1].bias.copy_(bias.to(heads[-1].bias.dtype))
    return f"the new classification head starts from the class means of {len(rows)} training rows"


def _probe_rows(train: Any, task: Task) -> tuple[list[int], Any]:
    """Which rows the model reads (in file order: up to an equal share per class) and their targets, one row per
    example and one column per class (1 where the example has that class)."""
    import numpy as np

    column = "labels" if "labels" in train.column_names else "label"
    labels = train.select_columns([column]).with_format("numpy")[:SCAN_ROWS][column]
    count = task.num_labels
    if task.kind == "multilabel":
        targets = np.asarray([np.asarray(value, dtype=np.float64) for value in labels[:PROBE_ROWS]])
        rows = list(range(len(targets)))
        return rows, (targets.reshape(len(rows), count) if rows else targets)
    share, taken, rows = max(MIN_PER_CLASS, PROBE_ROWS // count), np.zeros(count, dtype=int), []
    for i, label in enumerate(np.asarray(labels, dtype=np.int64)):
        if 0 <= label < count and taken[label] < share:
            taken[label] += 1
            rows.append(i)
            if taken.min() >= share:
                break
    targets = np.zeros((len(rows), count))
    targets[np.arange(len(rows)), np.asarray(labels, dtype=np.int64)[rows]] = 1.0
    return rows, targets


def _features(model: Any, head: Any, train: Any, rows: list[int], pad_id: int | None) -> Any:
    """The head's input for each row, read with the model in eval mode (no dropout) and no gradient."""
    import torch

    names = [n for n in ("input_ids", "token_type_ids", "attention_mask") if n in train.column_names]
    examples = train.select(rows).select_columns(names).with_format(None)[:]
    order = sorted(range(len(rows)), key=lambda i: len(examples["input_ids"][i]))  # batches of similar lengths
    examples = {name: [examples[name][i] for i in order] for name in names}
    seen: list[Any] = []
    hook = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), BATCH):
                batch = {name: values[start:start + BATCH] for name, values in examples.items()}
                width = max(len(ids) for ids in batch["input_ids"])
                model(**{name: torch.tensor([list(v) + [(pad_id or 0) if name == "input_ids" else 0] * (width - len(v))
                                             for v in batch[name]], device=head.weight.device)
                         for name in names})
    finally:
        hook.remove()
        model.train(training)
    if not seen or any(f.dim() != 2 for f in seen):
        return None
    features = torch.empty(len(rows), seen[0].shape[1], dtype=torch.float64)
    features[order] = torch.cat(seen).double().cpu()  # back in the order of `rows`
    return features


def discriminant(features: Any, targets: Any, multilabel: bool, scale: float) -> tuple[Any, Any]:
    """Rows `(mean_c - center) / variance`, scaled so that their root mean square is `scale`; biases put every logit
    at zero at the center. `center` is the mean of the class means (single label) or of all rows (multi-label): it
    gives no class more weight for being listed first or for being common. A class without rows gets a zero row."""
    import torch

    y = torch.as_tensor(targets, dtype=torch.float64)
    counts = y.sum(0)
    present = counts > 0
    means = (y.T @ features) / counts.clamp(min=1).unsqueeze(1)  # (classes, features)
    if multilabel:
        center = features.mean(0)
        variance = features.var(0, unbiased=False)
    else:
        center = means[present].mean(0)
        variance = ((features - y @ means) ** 2).mean(0)  # within-class
    weight = (means - center) / (variance + 1e-3 * variance.mean() + 1e-12)
    weight[~present] = 0.0
    rms = weight.pow(2).mean().sqrt()
    if rms > 0:
        weight = weight * (scale / rms)
    return weight, -(weight @ center)
