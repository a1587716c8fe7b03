"""The task a label column implies, its label encoding, and the metrics that go with it.

- integers, booleans or strings -> single-label classification (binary or multi-class); names kept as `id2label`
- floats (at least one not a whole number) -> regression: one output, MSE
- lists (JSON) or strings joined with "|" -> multi-label: one sigmoid per label, BCE, a 0.5 threshold
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finch.data.metrics import accuracy, f1_per_class, matthews, multilabel_metrics, regression_metrics
from finch.errors import DataError
from finch.events import in_metrics_trial

MULTI_LABEL_SEPARATOR = "|"
MISSING = {"", "nan", "none", "null", "na", "n/a"}


@dataclass
class Task:
    """What is learned: `kind` is "binary", "multiclass", "regression" or "multilabel"."""

    kind: str
    label_names: list[str] = field(default_factory=list)
    threshold: float = 0.5

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)

    @property
    def problem_type(self) -> str:
        return {"regression": "regression", "multilabel": "multi_label_classification"}.get(
            self.kind, "single_label_classification")

    @property
    def default_metric(self) -> str:
        """The metric that picks the best model by default; none depends on the order of the label names."""
        return {"binary": "f1_macro", "multiclass": "f1_macro", "regression": "pearson",
                "multilabel": "f1_micro"}[self.kind]

    def describe(self) -> str:
        if self.kind == "regression":
            return "regression (one output, MSE)"
        names = ", ".join(self.label_names[:8]) + (" ..." if len(self.label_names) > 8 else "")
        return f"{self.kind} classification, {len(self.label_names)} labels: {names}"

    @classmethod
    def from_config(cls, config: Any) -> Task:
        """The task of a saved model, from its `problem_type` and `id2label`."""
        names = [config.id2label[i] for i in sorted(config.id2label)]
        if config.problem_type == "regression" or config.num_labels == 1:
            return cls("regression")
        if config.problem_type == "multi_label_classification":
            return cls("multilabel", names)
        return cls("binary" if len(names) == 2 else "multiclass", names)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip().lower() in MISSING)


def detect_task(values: Sequence[Any], where: str) -> Task:
    """The task the training labels imply. Raises `DataError` for missing, mixed, nested or single-class labels."""
    _check_not_nested(values, where)
    missing = [i for i, v in enumerate(values) if is_missing(v) and not isinstance(v, list)]
    if missing:
        raise DataError(f"{where}: {len(missing)} row(s) have no label (rows {_rows(missing)}); fill them in or "
                        f"remove those rows")
    width = _multi_hot_width(values)
    if width:  # [0.0, 1.0, 1.0]: HF's multi-label tutorials' format, one position per class
        return Task("multilabel", [str(i) for i in range(width)])
    if any(isinstance(v, list) for v in values) or any(
            isinstance(v, str) and MULTI_LABEL_SEPARATOR in v for v in values):
        names = sorted({name for v in values for name in _label_set(v)})
        if len(names) < 2:
            raise DataError(f"{where}: multi-label data with a single label {names}; it needs at least two")
        return Task("multilabel", names)
    kinds = [_kind(v) for v in values]
    if len(set(kinds)) > 1:
        counts = {k: kinds.count(k) for k in set(kinds)}
        rare = min(counts, key=counts.get)
        rows = [i for i, k in enumerate(kinds) if k == rare]
        raise DataError(f"{where}: the labels mix types ({', '.join(f'{n} {k}' for k, n in counts.items())}); the "
                        f"{rare} one(s) are at rows {_rows(rows)}. Use one kind of label throughout")
    if kinds and kinds[0] == "number" and any(not float(v).is_integer() for v in values):
        return Task("regression")
    names = _class_names(values)
    if len(names) < 2:
        raise DataError(f"{where}: every row has the label {names[0]!r}; a classifier needs at least two classes")
    return Task("binary" if len(names) == 2 else "multiclass", names)


def encode(values: Sequence[Any], task: Task, where: str, known_from: str = "the training data") -> list:
    """Labels as the model takes them: class ids, floats, or multi-hot float vectors. `known_from` says where the
    task's labels come from, for the message about an unknown one (`finch eval`: the model's labels).

    Raises:
        DataError: a label that the training data never had (with the rows), or a missing or unparsable one.
    """
    _check_not_nested(values, where)
    missing = [i for i, v in enumerate(values) if is_missing(v) and not isinstance(v, list)]
    if missing:
        raise DataError(f"{where}: {len(missing)} row(s) have no label (rows {_rows(missing)}); fill them in or "
                        f"remove those rows")
    if task.kind == "regression":
        bad = [i for i, v in enumerate(values) if _kind(v) != "number"]
        if bad:
            raise DataError(f"{where}: regression labels must be numbers; rows {_rows(bad)} are not")
        numbers = [float(v) for v in values]
        infinite = [i for i, v in enumerate(numbers) if not math.isfinite(v)]
        if infinite:  # one inf label makes every loss inf: the run would only skip steps
            raise DataError(f"{where}: regression labels must be finite numbers; rows {_rows(infinite)} are "
                            f"{numbers[infinite[0]]} (or NaN); fix or remove those rows")
        return numbers
    index = {name: i for i, name in enumerate(task.label_names)}
    if task.kind == "multilabel" and _multi_hot_width(values, strict=False) == len(task.label_names) and \
            task.label_names == [str(i) for i in range(len(task.label_names))]:
        return [[float(x) for x in v] for v in values]  # multi-hot vectors, as the training data had them
    if task.kind == "multilabel":
        sets = [_label_set(v) for v in values]
        unseen = sorted({name for s in sets for name in s} - set(index))
        if unseen:
            rows = [i for i, s in enumerate(sets) if s - set(index)]
            raise DataError(f"{where}: label(s) {unseen[:10]} never occur in {known_from} (rows {_rows(rows)}); "
                            f"known: {task.label_names[:10]}")
        return [[1.0 if name in s else 0.0 for name in task.label_names] for s in sets]
    keys = [_name(v) for v in values]
    unseen_rows = [i for i, key in enumerate(keys) if key not in index]
    if unseen_rows:
        unseen = sorted({keys[i] for i in unseen_rows})
        fix = ("add examples of them to the training file" if known_from == "the training data"
               else "use --label-column to name the column that holds these labels")
        raise DataError(f"{where}: label(s) {unseen[:10]} never occur in {known_from} (rows "
                        f"{_rows(unseen_rows)}); known: {task.label_names[:10]}. Fix the labels, or {fix}")
    return [index[key] for key in keys]


def _check_not_nested(values: Sequence[Any], where: str) -> None:
    """Objects, or lists holding objects or lists, are no labels (as text they would be classes like "{'a': 1}")."""
    nested = [i for i, v in enumerate(values) if isinstance(v, dict) or (
        isinstance(v, list) and any(isinstance(item, (dict, list)) for item in v))]
    if nested:
        example = values[nested[0]]
        kind = "JSON objects" if isinstance(example, dict) else "lists of objects or lists"
        raise DataError(f"{where}: rows {_rows(nested)} have labels that are {kind} ({str(example)[:60]}); a label "
                        f"is a class name, a number, or a list of class names (multi-label). Pick the field that "
                        f"holds the label and pass it with --label-column")


@dataclass
class CollapseWatch:
    """Watches a classification run's evaluations for collapse: (nearly) every example predicted as one class.

    Such runs happen with BERT-style fine-tuning on small data (a seed or a learning rate too high), end near the
    majority rate, and no trainer says so. Only evaluations of `rows` examples count (the validation set), and not
    finch's try of `compute_metrics` before training, even on a validation set that small.
    """

    rows: int
    threshold: float = 0.95
    shares: list[tuple[str, float]] = field(default_factory=list)

    def record(self, predicted: np.ndarray, names: Sequence[str]) -> None:
        if len(predicted) == self.rows and self.rows and not in_metrics_trial():
            counts = np.bincount(predicted, minlength=len(names))
            self.shares.append((names[int(counts.argmax())], float(counts.max() / len(predicted))))

    def warning(self) -> str | None:
        """A message when every evaluation so far predicted one class for >= `threshold` of the examples."""
        if not self.shares or any(share < self.threshold for _, share in self.shares):
            return None
        seen = ", ".join(f"{share:.0%} {name!r}" for name, share in self.shares[-5:])
        return (f"the model predicted one class for nearly every validation example in each of its "
                f"{len(self.shares)} evaluation(s) ({seen}): the run collapsed to a constant guess, and its accuracy "
                f"is about the share of that class. Try a lower --learning-rate, --warmup-steps 0.1, or another "
                f"--seed")


def compute_metrics_for(task: Task, extra: Sequence[str] = (), watch: CollapseWatch | None = None,
                        positive: int = 1) -> Callable[[Any], dict[str, float]]:
    """`compute_metrics` for `task`; `extra` may ask for "mcc" on classification; `watch` records each
    evaluation's predicted classes. Binary `f1` is the F1 of class `positive` (HF's and scikit-learn's convention:
    the second label), `f1_macro` the mean over both classes, which does not depend on which label is second."""
    def compute(prediction: Any) -> dict[str, float]:
        logits, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        if task.kind == "regression":
            return regression_metrics(logits.reshape(-1), labels.reshape(-1))
        if task.kind == "multilabel":
            return multilabel_metrics(logits > _logit(task.threshold), labels > 0.5)
        predicted = logits.argmax(-1)
        if watch is not None:
            watch.record(predicted, task.label_names)
        f1 = f1_per_class(predicted, labels, len(task.label_names))
        metrics = {"accuracy": accuracy(predicted, labels)}
        if task.kind == "binary":
            metrics["f1"] = float(f1[positive])
        metrics["f1_macro"] = float(f1.mean())
        if "mcc" in extra:
            metrics["mcc"] = matthews(predicted, labels, len(task.label_names))
        return metrics

    return compute


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    try:
        float(str(value))
        return "number"
    except ValueError:
        return "text"


def _name(value: Any) -> str:
    """The class name of a label: '3' for 3, 3.0 and ' 3 '; 'True' for True; text stripped."""
    if isinstance(value, bool):
        return str(value)
    if _kind(value) == "number" and float(value).is_integer():
        return str(int(float(value)))
    return str(value).strip()


def _class_names(values: Sequence[Any]) -> list[str]:
    names = {_name(v) for v in values}
    if all(_kind(v) == "number" for v in values):
        return [str(n) for n in sorted(int(n) for n in names)]
    return sorted(names)


def _multi_hot_width(values: Sequence[Any], strict: bool = True) -> int | None:
    """K when every label is a list of K >= 2 zeros and ones: multi-hot vectors. Lists of class names or ids are
    read as names instead; `strict` (for training data) tells them apart by floats (0.0/1.0) or a repeated value
    ([0, 1, 1]), which a list of names never has."""
    if not values or not all(isinstance(v, list) for v in values):
        return None
    width = len(values[0])
    if width < 2 or any(len(v) != width for v in values):
        return None
    flat = [x for v in values for x in v]
    if not all(isinstance(x, (bool, int, float)) and x in (0, 1) for x in flat):
        return None
    evident = any(isinstance(x, float) for x in flat) or any(len(set(v)) < len(v) for v in values)
    return width if evident or not strict else None


def _label_set(value: Any) -> set[str]:
    if isinstance(value, list):
        return {_name(v) for v in value}
    if is_missing(value):
        return set()
    return {part.strip() for part in str(value).split(MULTI_LABEL_SEPARATOR) if part.strip()}


def _rows(indices: Sequence[int], shown: int = 5) -> str:
    """Row numbers as a person counts them in the file: the first data row is 1."""
    text = ", ".join(str(i + 1) for i in indices[:shown])
    return text + (f" and {len(indices) - shown} more" if len(indices) > shown else "")
