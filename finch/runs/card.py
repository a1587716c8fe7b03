"""The model card `finch train` writes beside a model (`finch.json`), and `finch eval` / `finch predict` read.

It records how the data was read at training time, so that evaluating or predicting with the model reads new files
the same way: the text column(s), the label column, the token limit, and the task.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finch.errors import ModelError

CARD_FILE = "finch.json"


@dataclass
class ModelCard:
    """What `finch train` knew about the data a model was trained on (all empty for other models)."""

    text_columns: list[str] = field(default_factory=list)
    label_column: str | None = None
    max_length: int | None = None
    task: str | None = None
    positive_label: str | None = None  # `--positive-label`: the class whose F1 `finch eval` reports as f1

    def write(self, model_dir: str | Path) -> Path:
        """Write `finch.json` into `model_dir` (to a temporary name, then renamed)."""
        path = Path(model_dir) / CARD_FILE
        temporary = path.with_name(f".{CARD_FILE}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(temporary, path)
        return path

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelCard:
        """The card in `model_dir`; an empty card when there is none (a model not trained by `finch train`).

        Raises:
            ModelError: the file exists but is not a card (not JSON, or values of the wrong type).
        """
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            card = cls(text_columns=list(values.get("text_columns") or []), label_column=values.get("label_column"),
                       max_length=values.get("max_length"), task=values.get("task"),
                       positive_label=values.get("positive_label"))
        except (ValueError, TypeError, AttributeError) as error:
            raise ModelError(f"{path}: not a valid finch model card ({error}); delete it to read columns afresh, "
                             f"or pass --text-columns / --label-column") from error
        optional = (str, type(None))
        if not all(isinstance(c, str) for c in card.text_columns) or not isinstance(card.label_column, optional) \
                or not isinstance(card.positive_label, optional) \
                or not isinstance(card.max_length, (int, type(None))):
            raise ModelError(f"{path}: a value has the wrong type; delete the file or pass --text-columns / "
                             f"--label-column")
        return card
