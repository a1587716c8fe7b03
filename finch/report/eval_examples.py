"""The final evaluation, example by example: what the report's confusion matrix, per-class table, predicted-vs-true
plot and highest-loss examples are made of.

How the examples reach the report: `finch train` keeps the predictions of its final `evaluate()` (its
`compute_metrics` sees them in dataset order, so no second pass over the validation set) and writes
`OUTPUT_DIR/eval_examples.jsonl` before the report, with the texts of the highest-loss examples (the no-code path
knows the texts; the Trainer sees token ids only). `finch report` reads the file again, so the page can be made at any
time. From Python, `write_report(output_dir, predictions=trainer.predict(eval_dataset), texts=eval_dataset["text"])`
gives the same sections without a file.

The file: a first line `{"kind": ..., "classes": [...]}`, then one line per example `{"row", "label", "prediction",
"loss"}` (labels and predictions as class names for classification, lists of names for multi-label, numbers for
regression), and `"text"` on the `HARDEST` highest-loss rows only, so the file stays small for large validation sets.
The loss of an example is the model's objective without class weights or label smoothing: cross-entropy for
classification, mean binary cross-entropy for multi-label, squared error for regression.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FILE = "eval_examples.jsonl"
HARDEST = 20  # examples with the highest loss shown in the report (and whose text is kept)
TEXT_LIMIT = 1000  # characters of each kept text


@dataclass
class EvalExamples:
    """Labels, predictions and losses of every evaluated example, and the texts of the highest-loss ones.

    `kind`: "classification" (labels and predictions are class indices), "multilabel" (0/1 matrices) or
    "regression" (numbers)."""

    kind: str
    labels: np.ndarray
    predicted: np.ndarray
    losses: np.ndarray
    class_names: list[str] = field(default_factory=list)
    texts: dict[int, Any] = field(default_factory=dict)  # row -> text (a string, or {column: text} for pairs)

    @classmethod
    def from_predictions(cls, predictions: Any, label_ids: Any, class_names: Sequence[str] = (),
                         text_of: Callable[[int], Any] | None = None, kind: str | None = None) -> EvalExamples | None:
        """From logits and labels in dataset order (`trainer.predict(...)`'s). `kind` is inferred when None:
        2-D labels are multi-label, one output is regression, else classification. None without labels.
        `text_of(row)` gives an example's text; it is asked for the highest-loss rows only."""
        if label_ids is None:
            return None
        logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions, dtype=np.float64)
        labels = np.asarray(label_ids)
        if kind is None:
            kind = "multilabel" if labels.ndim == 2 and labels.shape == logits.shape else \
                "regression" if logits.ndim == 1 or logits.shape[-1] == 1 else "classification"
        if kind == "regression":
            values, truth = logits.reshape(-1), labels.astype(np.float64).reshape(-1)
            examples = cls(kind, truth, values, (values - truth) ** 2)
        elif kind == "multilabel":
            truth = (labels > 0.5).astype(np.int64)
            softplus = np.logaddexp(0, -logits)  # -log sigmoid(x), stable for large |x|
            losses = (truth * softplus + (1 - truth) * (softplus + logits)).mean(axis=-1)
            examples = cls(kind, truth, (logits > 0).astype(np.int64), losses)
        else:
            truth = labels.reshape(-1).astype(np.int64)
            if logits.ndim != 2 or len(truth) != len(logits) or truth.min(initial=0) < 0:
                return None  # not one label per example (token classification, -100 labels): no per-example view
            log_probabilities = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
            examples = cls(kind, truth, logits.argmax(-1), -log_probabilities[np.arange(len(truth)), truth])
        classes = logits.shape[-1] if kind != "regression" else 0
        examples.class_names = list(class_names) if len(class_names) == classes else [str(i) for i in range(classes)]
        if text_of is not None:
            examples.texts = {row: _cut(text_of(row)) for row in examples.hardest()}
        return examples

    def hardest(self, count: int = HARDEST) -> list[int]:
        """Rows of the `count` highest losses, highest first (ties: the earlier row first)."""
        order = np.argsort(-self.losses, kind="stable")
        return [int(row) for row in order[:count]]

    # ---- the file --------------------------------------------------------------------------------------------------
    def write(self, path: str | Path) -> None:
        from finch.runs.files import write_text

        lines = [json.dumps({"kind": self.kind, "classes": self.class_names})]
        for row in range(len(self.losses)):
            line = {"row": row, "label": self._shown(self.labels[row]), "prediction": self._shown(self.predicted[row]),
                    "loss": round(float(self.losses[row]), 6)}
            if row in self.texts:
                line["text"] = self.texts[row]
            lines.append(json.dumps(line, ensure_ascii=False))
        write_text(Path(path), "\n".join(lines) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> EvalExamples | None:
        """The file `write` made, or None when there is none.

        Raises:
            ValueError: the file is damaged or is not one `write` made (the message names the line and what is
                wrong): a report leaves its sections out with a note, rather than fail with a KeyError.
        """
        path = Path(path)
        if not path.exists():
            return None
        try:
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except ValueError as error:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
            raise ValueError(f"{path} is not readable JSON Lines ({error})") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("kind") not in KINDS:
            raise ValueError(f"{path} does not start with the line finch writes ({{\"kind\": ..., \"classes\": ...}})")
        head, rows = lines[0], lines[1:]
        kind, names = head["kind"], list(head.get("classes") or [])
        index = {name: i for i, name in enumerate(names)}

        def value(shown: Any) -> Any:
            if kind == "regression":
                return float(shown)
            if kind == "multilabel":
                return [int(name in shown) for name in names]
            return index[shown]
        try:
            return cls(kind, np.asarray([value(r["label"]) for r in rows]),
                       np.asarray([value(r["prediction"]) for r in rows]),
                       np.asarray([float(r["loss"]) for r in rows]), names,
                       {int(r["row"]): r["text"] for r in rows if "text" in r})
        except (KeyError, TypeError, ValueError) as error:
            bad = next((number for number, r in enumerate(rows, 2) if not _readable_row(r, kind, index)), None)
            where = f"line {bad}" if bad else "a line"
            raise ValueError(f"{path}: {where} is not an example finch writes (a row, label, prediction and loss"
                             f"{' among the classes ' + ', '.join(names) if kind != 'regression' else ''}; "
                             f"{type(error).__name__}: {error})") from None

    def _shown(self, value: Any) -> Any:
        if self.kind == "regression":
            return round(float(value), 6)
        if self.kind == "multilabel":
            return [name for name, on in zip(self.class_names, value) if on]
        return self.class_names[int(value)]

    # ---- statistics ------------------------------------------------------------------------------------------------
    def confusion(self) -> np.ndarray:
        """Classification: counts[true, predicted]."""
        classes = len(self.class_names)
        matrix = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predicted), 1)
        return matrix

    def per_class(self) -> list[tuple[str, float, float, float, int]]:
        """(class, precision, recall, F1, support) for each class, then the macro and support-weighted averages.
        A class never predicted has precision 0 (scikit-learn's `zero_division=0`)."""
        if self.kind == "multilabel":
            truth, predicted = self.labels.astype(bool), self.predicted.astype(bool)
        else:
            classes = np.arange(len(self.class_names))
            truth, predicted = self.labels[:, None] == classes, self.predicted[:, None] == classes
        true_positive = (truth & predicted).sum(axis=0)
        support, predicted_count = truth.sum(axis=0), predicted.sum(axis=0)
        precision = np.divide(true_positive, predicted_count, out=np.zeros(len(support)), where=predicted_count > 0)
        recall = np.divide(true_positive, support, out=np.zeros(len(support)), where=support > 0)
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(support)), where=total > 0)
        rows = [(name, float(p), float(r), float(f), int(s))
                for name, p, r, f, s in zip(self.class_names, precision, recall, f1, support)]
        weights = support / max(support.sum(), 1)
        rows.append(("macro average", float(precision.mean()), float(recall.mean()), float(f1.mean()),
                     int(support.sum())))
        rows.append(("weighted average", float(precision @ weights), float(recall @ weights), float(f1 @ weights),
                     int(support.sum())))
        return rows

    def shown_label(self, value: Any) -> str:
        shown = self._shown(value)
        return ", ".join(shown) if isinstance(shown, list) else f"{shown:.4g}" if isinstance(shown, float) else shown


def _cut(text: Any) -> Any:
    if isinstance(text, dict):
        return {str(k): _cut(v) for k, v in text.items()}
    text = str(text)
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "..."


KINDS = ("classification", "multilabel", "regression")


def _readable_row(row: Any, kind: str, index: dict[str, int]) -> bool:
    if not isinstance(row, dict) or not {"row", "label", "prediction", "loss"} <= row.keys():
        return False
    try:
        float(row["loss"]), int(row["row"])
    except (TypeError, ValueError):
        return False
    if kind == "regression":
        return all(isinstance(row[key], (int, float)) for key in ("label", "prediction"))
    if kind == "multilabel":
        return all(isinstance(row[key], list) for key in ("label", "prediction"))
    return row["label"] in index and row["prediction"] in index
