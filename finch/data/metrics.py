"""Task metrics computed from NumPy arrays (no extra dependency)."""

from __future__ import annotations

import math

import numpy as np
from transformers import EvalPrediction


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean()) if len(labels) else float("nan")


def f1_per_class(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of each class (0 where a class is neither predicted nor present)."""
    scores = np.zeros(num_classes)
    for cls in range(num_classes):
        true_positive = np.sum((predictions == cls) & (labels == cls))
        predicted, actual = np.sum(predictions == cls), np.sum(labels == cls)
        if predicted + actual:
            scores[cls] = 2 * true_positive / (predicted + actual)
    return scores


def classification_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy plus F1: of the positive class for two classes (GLUE's convention), macro-averaged otherwise."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(eval_prediction.label_ids)
    num_classes = max(int(np.asarray(logits).shape[-1]), int(labels.max(initial=0)) + 1)
    per_class = f1_per_class(predictions, labels, num_classes)
    if num_classes == 2:
        return {"accuracy": accuracy(predictions, labels), "f1": float(per_class[1])}
    return {"accuracy": accuracy(predictions, labels), "f1_macro": float(per_class.mean())}


def regression_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        ranked = np.empty(len(x))
        ranked[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            tied = x == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    return {"mse": float(np.mean((predicted - labels) ** 2)), "pearson": _correlation(predicted, labels),
            "spearman": _correlation(ranks(predicted), ranks(labels))}


def multilabel_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    true_positive = (predicted & labels).sum(0)
    false_positive, false_negative = (predicted & ~labels).sum(0), (~predicted & labels).sum(0)
    denominator = 2 * true_positive + false_positive + false_negative
    per_label = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0)
    micro_denominator = denominator.sum()
    return {"f1_micro": float(2 * true_positive.sum() / micro_denominator) if micro_denominator else 0.0,
            "f1_macro": float(per_label.mean()), "exact_match": float((predicted == labels).all(1).mean())}


def matthews(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient (multi-class form)."""
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (labels, predicted), 1)
    total, correct = confusion.sum(), np.trace(confusion)
    actual, guessed = confusion.sum(1), confusion.sum(0)
    denominator = math.sqrt((total ** 2 - (guessed ** 2).sum()) * (total ** 2 - (actual ** 2).sum()))
    return float((correct * total - (actual * guessed).sum()) / denominator) if denominator else 0.0


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])
