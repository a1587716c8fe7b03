"""`load_metric`: the metrics the HuggingFace tutorials load with `evaluate.load`, offline.

Why: the tutorial's `compute_metrics` starts with `metric = evaluate.load("glue", "mrpc")`, which downloads the
metric's script from the hub; offline (clusters, CI) it fails before training starts. These are the same
computations (scikit-learn's and scipy's functions, the inputs cast as `evaluate` casts them) under the same names
and result keys, so `metric.compute(predictions=..., references=...)` returns what `evaluate` would:

    metric = load_metric("glue", "mrpc")
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666..., 'f1': 0.666...}

scikit-learn (which brings scipy) is imported when a metric is computed, not when finch is imported.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from finch.errors import ConfigError, DataError, UnknownArgumentError

INTEGER, REAL = np.int64, np.float32  # what `evaluate` casts inputs to: class ids; scores ("float" is float32)


def _sklearn_metrics() -> Any:
    try:
        from sklearn import metrics
    except ImportError as error:
        raise ImportError("finch.load_metric computes with scikit-learn: pip install scikit-learn") from error
    return metrics


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as error:
        raise ImportError("finch.load_metric computes correlations with scipy: pip install scikit-learn "
                          "(which installs scipy)") from error
    return stats


def _score(value: np.ndarray | float) -> float | np.ndarray:
    """A single score as a Python float; per-class scores (`average=None`) stay an array, as `evaluate` has them."""
    value = np.asarray(value)
    return float(value) if value.size == 1 else value


def accuracy(predictions: np.ndarray, references: np.ndarray, normalize: bool = True,
             sample_weight: Any = None) -> dict[str, Any]:
    score = _sklearn_metrics().accuracy_score(references, predictions, normalize=normalize,
                                              sample_weight=sample_weight)
    return {"accuracy": float(score)}


def f1(predictions: np.ndarray, references: np.ndarray, labels: Any = None, pos_label: Any = 1,
       average: str | None = "binary", sample_weight: Any = None) -> dict[str, Any]:
    score = _sklearn_metrics().f1_score(references, predictions, labels=labels, pos_label=pos_label, average=average,
                                        sample_weight=sample_weight)
    return {"f1": _score(score)}


def precision(predictions: np.ndarray, references: np.ndarray, labels: Any = None, pos_label: Any = 1,
              average: str | None = "binary", sample_weight: Any = None,
              zero_division: str | float = "warn") -> dict[str, Any]:
    score = _sklearn_metrics().precision_score(references, predictions, labels=labels, pos_label=pos_label,
                                               average=average, sample_weight=sample_weight,
                                               zero_division=zero_division)
    return {"precision": _score(score)}


def recall(predictions: np.ndarray, references: np.ndarray, labels: Any = None, pos_label: Any = 1,
           average: str | None = "binary", sample_weight: Any = None,
           zero_division: str | float = "warn") -> dict[str, Any]:
    score = _sklearn_metrics().recall_score(references, predictions, labels=labels, pos_label=pos_label,
                                            average=average, sample_weight=sample_weight,
                                            zero_division=zero_division)
    return {"recall": _score(score)}


def matthews_correlation(predictions: np.ndarray, references: np.ndarray,
                         sample_weight: Any = None) -> dict[str, Any]:
    score = _sklearn_metrics().matthews_corrcoef(references, predictions, sample_weight=sample_weight)
    return {"matthews_correlation": float(score)}


def pearsonr(predictions: np.ndarray, references: np.ndarray, return_pvalue: bool = False) -> dict[str, Any]:
    result = _scipy_stats().pearsonr(references, predictions)
    return {"pearsonr": float(result[0]), "p-value": float(result[1])} if return_pvalue else \
        {"pearsonr": float(result[0])}


def spearmanr(predictions: np.ndarray, references: np.ndarray, return_pvalue: bool = False) -> dict[str, Any]:
    result = _scipy_stats().spearmanr(references, predictions)
    return {"spearmanr": float(result[0]), "spearmanr_pvalue": float(result[1])} if return_pvalue else \
        {"spearmanr": float(result[0])}


def _glue_accuracy(predictions: np.ndarray, references: np.ndarray) -> dict[str, Any]:
    return {"accuracy": float((predictions == references).mean())}


def _glue_accuracy_and_f1(predictions: np.ndarray, references: np.ndarray) -> dict[str, Any]:
    return {**_glue_accuracy(predictions, references), **f1(predictions, references)}


def _glue_matthews(predictions: np.ndarray, references: np.ndarray) -> dict[str, Any]:
    return matthews_correlation(predictions, references)


def _glue_correlations(predictions: np.ndarray, references: np.ndarray) -> dict[str, Any]:
    # GLUE names these "pearson" and "spearmanr" (not "pearsonr"): evaluate's glue metric does, so we do
    return {"pearson": float(_scipy_stats().pearsonr(predictions, references)[0]),
            "spearmanr": float(_scipy_stats().spearmanr(predictions, references)[0])}


# name -> (function, dtype the inputs are cast to, configurations it accepts)
METRICS: dict[str, tuple[Callable[..., dict], type, tuple[str | None, ...]]] = {
    "accuracy": (accuracy, INTEGER, (None, "default", "multilabel")),
    "f1": (f1, INTEGER, (None, "default", "multilabel")),
    "precision": (precision, INTEGER, (None, "default", "multilabel")),
    "recall": (recall, INTEGER, (None, "default", "multilabel")),
    "matthews_correlation": (matthews_correlation, INTEGER, (None, "default")),
    "pearsonr": (pearsonr, REAL, (None, "default")),
    "spearmanr": (spearmanr, REAL, (None, "default")),
}
GLUE_TASKS: dict[str, tuple[Callable[..., dict], type]] = {
    "cola": (_glue_matthews, INTEGER),
    "stsb": (_glue_correlations, REAL),
    "mrpc": (_glue_accuracy_and_f1, INTEGER),
    "qqp": (_glue_accuracy_and_f1, INTEGER),
    **{task: (_glue_accuracy, INTEGER) for task in ("sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte",
                                                      "wnli", "hans")},
}


class Metric:
    """A metric with `evaluate.Metric`'s interface: `compute`, `add_batch`, `add`; keyword arguments only.

    Inputs given to `add_batch`/`add` accumulate until `compute()`, which computes on all of them (and those
    passed to it) and starts afresh, as `evaluate` does.
    """

    def __init__(self, name: str, config_name: str | None, function: Callable[..., dict], dtype: type) -> None:
        self.name, self.config_name = name, config_name
        self._function, self._dtype = function, dtype
        parameters = list(inspect.signature(function).parameters)
        self.options = tuple(p for p in parameters if p not in ("predictions", "references"))
        self._predictions: list[np.ndarray] = []
        self._references: list[np.ndarray] = []

    def __repr__(self) -> str:
        config = f", {self.config_name!r}" if self.config_name else ""
        return f"finch.load_metric({self.name!r}{config})"

    def add_batch(self, *, predictions: Sequence | np.ndarray | None = None,
                  references: Sequence | np.ndarray | None = None) -> None:
        """Keep a batch of predictions and references for the next `compute()`."""
        if predictions is None or references is None:
            raise DataError(f"{self!r}.add_batch needs both predictions= and references=")
        predictions, references = self._cast(predictions, "predictions"), self._cast(references, "references")
        if len(predictions) != len(references):
            raise DataError(f"{self!r}: {len(predictions)} predictions but {len(references)} references; "
                            f"pass one reference per prediction")
        self._predictions.append(predictions)
        self._references.append(references)

    def add(self, *, prediction: Any = None, reference: Any = None) -> None:
        """Keep one prediction and its reference for the next `compute()`."""
        self.add_batch(predictions=[prediction], references=[reference])

    def compute(self, *, predictions: Sequence | np.ndarray | None = None,
                references: Sequence | np.ndarray | None = None, **options: Any) -> dict[str, Any]:
        """The metric on `predictions` vs `references` plus everything added since the last `compute()`.

        `options` are the metric's own keywords (`average=` for f1/precision/recall, `return_pvalue=`...).
        Returns a dict with `evaluate`'s keys. Raises `UnknownArgumentError` for a keyword the metric lacks."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise UnknownArgumentError(f"{self!r}.compute() takes no {', '.join(unknown)}; it takes predictions=, "
                                       f"references=" + "".join(f", {o}=" for o in self.options))
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        if not self._predictions:
            raise DataError(f"{self!r}.compute() has nothing to compute: pass predictions= and references=, "
                            f"or call add_batch(...) first")
        predictions = np.concatenate(self._predictions)
        references = np.concatenate(self._references)
        self._predictions, self._references = [], []
        return self._function(predictions, references, **options)

    def _cast(self, values: Sequence | np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(values)
        if self._dtype is INTEGER and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
            raise DataError(f"{self!r} compares class ids, but {what} holds fractions ({array.reshape(-1)[:3]}...): "
                            f"pass class ids, e.g. predictions=np.argmax(logits, axis=-1)")
        return array.astype(self._dtype)


def load_metric(path: str, config_name: str | None = None, **load_options: Any) -> Metric:
    """A metric by `evaluate.load`'s name, computed offline: accuracy, f1, precision, recall,
    matthews_correlation, pearsonr, spearmanr, and ("glue", task) for every GLUE task.

    Args:
        path: the metric's name (an `evaluate-metric/` prefix is accepted).
        config_name: the GLUE task for "glue"; "multilabel" for accuracy/f1/precision/recall.
        load_options: `evaluate.load`'s download options (cache_dir, ...): accepted and unused, nothing is downloaded.

    Returns:
        a `Metric`; `metric.compute(predictions=..., references=...)` returns a dict.

    Raises:
        ConfigError: a name or GLUE task finch does not have (the message lists those it has).
    """
    name = path.removeprefix("evaluate-metric/").lower()
    if name == "glue":
        return _glue(config_name)
    if name not in METRICS:
        known = sorted([*METRICS, "glue"])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"finch.load_metric has no metric {path!r}: {hint}it has {', '.join(known)}. For other "
                          f"metrics use the evaluate library (needs the network): pip install evaluate; "
                          f"evaluate.load({path!r})")
    function, dtype, configs = METRICS[name]
    if config_name not in configs:
        raise ConfigError(f"finch.load_metric({name!r}) has no configuration {config_name!r}; it takes "
                          f"{', '.join(repr(c) for c in configs if c)} or none")
    return Metric(name, config_name, function, dtype)


def _glue(task: str | None) -> Metric:
    if task not in GLUE_TASKS:
        close = difflib.get_close_matches(str(task).lower(), GLUE_TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"load_metric('glue', task) needs one of GLUE's tasks as the second argument, got "
                          f"{task!r}{hint}: {', '.join(GLUE_TASKS)}")
    function, dtype = GLUE_TASKS[task]
    return Metric("glue", task, function, dtype)
