"""`TrainerState` (everything about progress that survives a restart, as JSON) and `TrainerControl` (flags)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainerState:
    """Progress of a run, with HuggingFace's field names; saved as `trainer_state.json` in each checkpoint.

    `global_step` counts optimizer updates; `micro_step` counts forward/backward passes; `epoch` is a float
    (2.5 is half-way through the third epoch).

    finch adds three fields: `run_id` names the run (made by a fresh `train()`, kept across resumes; checkpoints
    without one are an older finch's), and `data_fingerprint` / `model_fingerprint` are SHA-256 digests of the
    training examples and of the model's architecture (see `finch.runs.fingerprint.Fingerprint`), so that a resume
    with other data or another model is refused instead of silently continuing.
    """

    epoch: float = 0.0
    global_step: int = 0
    micro_step: int = 0
    max_steps: int = 0
    steps_per_epoch: int = 0
    num_train_epochs: float = 0.0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    data_fingerprint: str | None = None
    model_fingerprint: str | None = None

    def save_to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def problem_in(cls, values: Any) -> str | None:
        """What makes `values` (a parsed trainer_state.json) unusable: not an object, or a field of the wrong type
        (a run would fail, or go wrong, much later); None if it can be loaded."""
        if not isinstance(values, dict):
            return f"it holds a JSON {type(values).__name__}, not an object of the trainer's state"
        for name, annotation in ((f.name, str(f.type)) for f in dataclasses.fields(cls)):
            if name in values and not _fits(values[name], annotation):
                return f"{name} is {values[name]!r}, not a {annotation}"
        return None

    @classmethod
    def load_from_json(cls, path: str | Path) -> TrainerState:
        values = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainerControl:
    """Flags that callbacks may set; the loop reads them at each step boundary and clears the per-step ones."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_step(self) -> None:
        self.should_save = self.should_evaluate = self.should_log = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,), "dict": (dict,)}


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated `annotation` ("int", "float | None", "list[dict[str, Any]]")."""
    for option in (part.strip() for part in annotation.split(" | ")):
        if option == "None" and value is None:
            return True
        kinds = _TYPES.get(option.split("[")[0])
        if kinds is not None and isinstance(value, kinds) and (option == "bool" or not isinstance(value, bool)):
            return True
    return False
