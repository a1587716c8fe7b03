"""Task metrics computed from NumPy arrays (no extra dependency)."""

from __future__ import annotations

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
