"""Preemption: SIGTERM, SIGINT and SIGUSR1 ask training to save and stop at the next step boundary.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before killing a job; SLURM can send
SIGUSR1 earlier with `--signal`. The handlers only set a flag, so no step is cut in half; the loop checks it after
each optimizer step, writes a checkpoint and raises `TrainingPreempted`, which exits the process with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again") unless the caller catches it. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

EXIT_PREEMPTED = 75
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class TrainingPreempted(SystemExit):
    """Raised by `Trainer.train` after a stop signal, once the checkpoint is on disk.

    A `SystemExit` with code `EXIT_PREEMPTED`, so a script that does not catch it exits with that code and its
    job can be requeued; `checkpoint` is the folder to resume from. Its message gives both ways to resume, the
    command line's and Python's: the same message is raised by `Trainer.train` under `finch train` and in a script.
    """

    RESUME_HINTS = ("to go on, run the same command with --resume auto (finch train ... --resume auto; finch search "
                    "needs no flag), or in Python trainer.train(resume_from_checkpoint=True)")

    def __init__(self, signal_name: str, checkpoint: str | None) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.signal_name, self.checkpoint = signal_name, checkpoint

    def __str__(self) -> str:
        if not self.checkpoint:
            return (f"training stopped by {self.signal_name}: no checkpoint saved (save_strategy='no'), nothing to "
                    f"resume")
        return f"training stopped by {self.signal_name}: checkpoint saved at {self.checkpoint}; {self.RESUME_HINTS}"


class PreemptionGuard:
    """While active, stop signals set `requested` instead of killing the process.

    Used as a context manager around the training loop; the previous handlers come back on exit. Outside the
    main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if number == signal.SIGINT and self.requested == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        self.requested = name
