"""`finch verify-resume`: check, on the user's own job, that a stopped and resumed run equals an unbroken one.

Three short runs of the same configuration, each from a freshly built trainer: A trains `steps` steps straight;
B trains the same steps but is stopped halfway, right after a checkpoint; C is a new trainer (as after a restart)
that resumes B's checkpoint and finishes. A's and C's weights must be identical, bit for bit.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from finch.args import TrainingArguments
from finch.distributed.runtime import set_seed
from finch.errors import ConfigError
from finch.training.callbacks import TrainerCallback


class _StopAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@dataclass
class ResumeReport:
    """What `verify_resume` found: identical weights or which tensors differ and by how much."""

    steps: int
    stopped_at: int
    tensors: int
    differing: list[str]
    max_abs_difference: float

    @property
    def identical(self) -> bool:
        return not self.differing

    def __str__(self) -> str:
        head = f"{self.steps} steps straight vs stopped at step {self.stopped_at} and resumed in a new trainer"
        if self.identical:
            return f"{head}: all {self.tensors} weight tensors identical, bit for bit. Resume is exact."
        return (f"{head}: {len(self.differing)} of {self.tensors} tensors differ (largest difference "
                f"{self.max_abs_difference:.3g}), first: {', '.join(self.differing[:5])}. Resume is NOT exact.")


def verify_resume(build_trainer: Callable[[TrainingArguments], object], args: TrainingArguments,
                  steps: int = 8) -> ResumeReport:
    """Run the job three ways (see the module docstring) and compare the final weights.

    Args:
        build_trainer: makes a fresh `Trainer` (model included) for the given arguments, as the user's script does.
        args: the user's arguments; output folder, duration, evaluation and saving are overridden.
        steps: optimizer steps to run (at least 2); the stop is at `steps // 2`.
    """
    if steps < 2:
        raise ConfigError(f"verify-resume needs at least 2 steps, got {steps}")
    stop = steps // 2
    with tempfile.TemporaryDirectory(prefix="finch-verify-") as scratch:
        def arguments(name: str, **overrides: object) -> TrainingArguments:
            return dataclasses.replace(args, output_dir=str(Path(scratch) / name), max_steps=steps,
                                       eval_strategy="no", load_best_model_at_end=False, report_to=["none"],
                                       push_to_hub=False, save_total_limit=None, **overrides)

        straight = _fresh(build_trainer, arguments("straight", save_strategy="no"))
        straight.train()
        stopped_args = arguments("stopped", save_strategy="steps", save_steps=stop)
        stopped = _fresh(build_trainer, stopped_args)
        stopped.add_callback(_StopAfter(stop))
        stopped.train()
        resumed = _fresh(build_trainer, stopped_args)
        resumed.train(resume_from_checkpoint=str(Path(stopped_args.output_dir) / f"checkpoint-{stop}"))
    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    largest = max((float((expected[n].float() - got[n].float()).abs().max()) for n in differing), default=0.0)
    return ResumeReport(steps, stop, len(expected), differing, largest)


def _fresh(build_trainer: Callable[[TrainingArguments], object], args: TrainingArguments) -> object:
    set_seed(args.seed)  # a new head is initialised from the global RNG: the same one for each run
    return build_trainer(args)
