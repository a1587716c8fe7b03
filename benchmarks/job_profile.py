"""Where a `finch train` job's wall time goes: imports, checks and data, training (split by what the loop does),
the final evaluation, the saved model and the report. The fixed per-job part is what matters for short GPU jobs.

Runs `finch train ARGS...` in this process under cProfile and prints the seconds of each phase (cumulative time of
the function that does it; profiling adds a little to each).

Usage (from the repo root):
    python benchmarks/job_profile.py --train ../shared/data/mrpc/train.tsv --validation ../shared/data/mrpc/dev.tsv \
        --num-train-epochs 1 --max-steps 40 --output-dir /tmp/job-profile --overwrite-output-dir
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import cProfile
import pstats
import sys

PHASES = [  # (label, function as "file:name"), in the order a job runs them
    ("checks and data (finch.cli.job.prepare)", "finch/cli/job.py", "prepare"),
    ("  arguments", "finch/cli/job.py", "training_arguments"),
    ("  data read, columns, task", "finch/data/columns.py", "load_splits"),
    ("  tokenization (cached)", "finch/data/tokenize.py", "tokenize_splits"),
    ("  resume plan, fingerprints", "finch/cli/job.py", "_plan_resume"),
    ("model loaded (Job.build)", "finch/cli/job.py", "build"),
    ("train()", "finch/training/trainer.py", "train"),
    ("  forward + backward", "finch/training/trainer.py", "_forward_backward"),
    ("  optimizer steps", "finch/training/trainer.py", "_optimizer_step"),
    ("  evaluations during training", "finch/training/trainer.py", "_evaluate_during_training"),
    ("  checkpoints", "finch/training/trainer.py", "_save_checkpoint"),
    ("  compute_metrics tried first", "finch/training/evaluation.py", "_check_compute_metrics"),
    ("all evaluate() calls", "finch/training/evaluation.py", "evaluate"),
    ("model saved (save_model)", "finch/training/log_and_save.py", "save_model"),
    ("report", "finch/report/write.py", "try_write_report"),
]


def cumulative(stats: pstats.Stats, file: str, name: str) -> float:
    return sum(row[3] for (path, _, function), row in stats.stats.items()  # type: ignore[attr-defined]
               if function == name and path.endswith(file))


def main() -> None:
    from finch.cli.commands import main as finch_main

    imported = time.perf_counter() - STARTED
    profile = cProfile.Profile()
    began = time.perf_counter()
    code = profile.runcall(finch_main, ["train", *sys.argv[1:]])
    whole = time.perf_counter() - began
    stats = pstats.Stats(profile)
    print(f"\nfinch train exited {code}; {imported:.2f} s importing finch, then {whole:.2f} s under the profiler")
    for label, file, name in PHASES:
        print(f"  {label:<42} {cumulative(stats, file, name):8.2f} s")


if __name__ == "__main__":
    main()
