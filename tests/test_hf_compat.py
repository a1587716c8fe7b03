"""Code written for HuggingFace's Trainer, as its documentation and tutorials write it, run by finch's."""

import json
import random

import datasets
import numpy as np
import pytest
import torch
from conftest import sentiment_dataset, tiny_bert, weights_of
from test_trainer import Recorder

from finch import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from finch.errors import ConfigError, DataError, ModelError
from finch.metrics import classification_metrics

CLASS_WEIGHTS = [1.0, 3.0]


def quiet_args(tmp_path, **overrides) -> TrainingArguments:
    values = {"output_dir": str(tmp_path / "run"), "bf16": False, "save_strategy": "no", "logging_steps": 1000,
              "disable_tqdm": True, "learning_rate": 1e-3, "seed": 7, "per_device_train_batch_size": 8,
              "per_device_eval_batch_size": 64}
    values.update(overrides)
    return TrainingArguments(**values)


# ---- compute_loss overrides: HF's class-imbalance recipe, `pop` and `get`, with and without num_items_in_batch ----
class PopLabelsTrainer(Trainer):
    """HF's documentation, verbatim but for the weights."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen_num_items = getattr(self, "seen_num_items", set()) | {num_items_in_batch}
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.get("logits")
        loss_fct = torch.nn.CrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS, device=model.device))
        loss = loss_fct(logits.view(-1, self.model.config.num_labels), labels.view(-1))
        return (loss, outputs) if return_outputs else loss


class GetLabelsTrainer(Trainer):
    """The older signature, without num_items_in_batch, reading the labels with `get`."""

    def compute_loss(self, model, inputs, return_outputs=False):
        labels = inputs.get("labels")
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels,
                                                 weight=torch.tensor(CLASS_WEIGHTS, device=labels.device))
        return (loss, outputs) if return_outputs else loss


@pytest.mark.parametrize("trainer_class", [PopLabelsTrainer, GetLabelsTrainer])
def test_compute_loss_override_trains_evaluates_and_predicts(tmp_path, tokenizer, trainer_class):
    data = sentiment_dataset(tokenizer, rows=24)
    trainer = trainer_class(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=3), train_dataset=data,
                            eval_dataset=data, processing_class=tokenizer, compute_metrics=classification_metrics)
    result = trainer.train()
    assert trainer.state.global_step == 3 and np.isfinite(result.training_loss)
    metrics = trainer.evaluate()
    output = trainer.predict(data)
    np.testing.assert_array_equal(output.label_ids, np.array(data["label"]))  # read before the override popped them
    # one evaluation batch (64 rows fit): eval_loss is the override's weighted loss over every prediction
    expected = torch.nn.functional.cross_entropy(torch.tensor(output.predictions), torch.tensor(output.label_ids),
                                                 weight=torch.tensor(CLASS_WEIGHTS))
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert output.metrics["test_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert {"eval_accuracy", "eval_f1"} <= set(metrics)
    if trainer_class is PopLabelsTrainer:
        assert trainer.seen_num_items == {None}  # finch's loop scales the batch's mean loss itself


def popping_loss(column: str) -> type[Trainer]:
    """A Trainer whose `compute_loss` pops `column` from the batch and takes the logits' cross-entropy against it."""

    class PoppingLoss(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop(column)
            outputs = model(**inputs)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

    return PoppingLoss


def test_popping_labels_in_training_leaves_finchs_accounting_intact(tmp_path, tokenizer):
    """Same weights as the built-in loss: the items of each step were counted before the override popped labels."""

    PlainPop = popping_loss("labels")
    data = sentiment_dataset(tokenizer, rows=20)  # batches of 4 x accumulation 3: steps of 12 and 8 rows
    runs = {}
    for trainer_class in (Trainer, PlainPop):
        trainer = trainer_class(model=tiny_bert(dropout=0.0), train_dataset=data, processing_class=tokenizer,
                                args=quiet_args(tmp_path / trainer_class.__name__, num_train_epochs=1,
                                                per_device_train_batch_size=4, gradient_accumulation_steps=3,
                                                logging_strategy="epoch"))
        trainer.train()
        runs[trainer_class] = (weights_of(trainer.model), trainer.state.log_history[0]["loss"])
    for key, value in runs[Trainer][0].items():
        torch.testing.assert_close(runs[PlainPop][0][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert runs[PlainPop][1] == pytest.approx(runs[Trainer][1], rel=1e-5)


# ---- evaluate() returns the epoch ------------------------------------------------------------------------------
def test_evaluate_returns_the_epoch_as_hf_does(tmp_path, tokenizer):
    data = sentiment_dataset(tokenizer, rows=16)
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, num_train_epochs=2), train_dataset=data,
                      eval_dataset=data, processing_class=tokenizer, compute_metrics=classification_metrics)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["epoch"] == 2.0  # the tutorial reads metrics["epoch"]
    assert {"eval_loss", "eval_accuracy"} <= set(metrics)
    assert trainer.state.log_history[-1]["epoch"] == 2.0


# ---- EarlyStoppingCallback without metric_for_best_model ---------------------------------------------------------
def test_early_stopping_without_a_metric_watches_the_eval_loss(tmp_path, tokenizer, caplog):
    data = sentiment_dataset(tokenizer, rows=16)
    args = quiet_args(tmp_path, eval_strategy="steps", eval_steps=1, max_steps=50, learning_rate=0.0)  # loss constant
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=data, eval_dataset=data.select(range(8)),
                      processing_class=tokenizer)
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=3))
    with caplog.at_level("WARNING", logger="finch"):
        trainer.train()
    # evaluation 1 sets the best loss; 2, 3 and 4 do not improve on it: patience 3 is used up at step 4
    assert trainer.state.global_step == 4
    warnings = [r.getMessage() for r in caplog.records if "EarlyStoppingCallback" in r.getMessage()]
    assert len(warnings) == 1 and "eval_loss" in warnings[0] and "lower is better" in warnings[0]


def test_early_stopping_without_evaluation_is_a_config_error(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), train_dataset=toy, processing_class=tokenizer,
                      callbacks=[EarlyStoppingCallback(2)])
    with pytest.raises(ConfigError, match="eval_strategy='epoch'"):
        trainer.train()
    assert trainer.state.global_step == 0


# ---- compute_metrics mistakes show at once -------------------------------------------------------------------------
def broken_metrics(eval_pred):
    logits, labels = eval_pred
    predictions = np.argmax(logits, axis=2)  # the bug: logits are (rows, classes)
    return {"accuracy": float((predictions == labels).mean())}


def test_a_broken_compute_metrics_fails_before_the_first_step(tmp_path, tokenizer):
    data = sentiment_dataset(tokenizer, rows=400)
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="epoch", num_train_epochs=3),
                      train_dataset=data, eval_dataset=data, processing_class=tokenizer,
                      compute_metrics=broken_metrics)
    with pytest.raises(ConfigError, match="compute_metrics=broken_metrics raised AxisError") as raised:
        trainer.train()
    assert isinstance(raised.value.__cause__, np.exceptions.AxisError)
    assert "(8, 2)" in str(raised.value)  # tried on 8 rows: shapes are named
    assert trainer.state.global_step == 0
    with pytest.raises(ConfigError, match="broken_metrics") as raised:  # the same report from evaluate()
        trainer.evaluate()
    assert "(400, 2)" in str(raised.value)


def test_compute_metrics_returning_a_number_names_the_function_and_the_fix(tmp_path, toy, tokenizer):
    def accuracy_only(eval_pred):
        logits, labels = eval_pred
        return float((logits.argmax(-1) == labels).mean())

    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), eval_dataset=toy, processing_class=tokenizer,
                      compute_metrics=accuracy_only)
    with pytest.raises(ConfigError, match=r"accuracy_only returned float .*not a dict.*'accuracy'"):
        trainer.evaluate()


def numpy_and_torch_metrics(eval_pred):
    """What tutorials' metrics return: NumPy and torch scalars, a 0-d array, a per-class array."""
    logits, labels = eval_pred
    correct = logits.argmax(-1) == labels
    return {"accuracy": np.float32(correct.mean()), "correct": np.int64(correct.sum()), "perfect": np.bool_(
        correct.all()), "mean_logit": torch.tensor(float(logits.mean())), "zero_d": np.array(0.5),
            "per_class": np.array([1.0, 0.5])}


def test_numpy_and_torch_metric_values_become_python_numbers_in_every_output(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="epoch", num_train_epochs=1,
                                                          logging_steps=1), train_dataset=toy, eval_dataset=toy,
                      processing_class=tokenizer, compute_metrics=numpy_and_torch_metrics)
    trainer.train()  # the log (JSON lines) takes them: a NumPy float32 used to stop the run at the first evaluation
    metrics = trainer.evaluate()
    assert {type(metrics[f"eval_{k}"]) for k in ("accuracy", "mean_logit", "zero_d")} == {float}
    assert type(metrics["eval_correct"]) is int and type(metrics["eval_perfect"]) is bool
    assert metrics["eval_per_class"] == [1.0, 0.5]
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(type(entry.get("eval_accuracy")) is float for entry in logged)
    assert type(trainer.predict(toy).metrics["test_accuracy"]) is float


def test_a_metric_that_cannot_be_logged_is_refused_before_training(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="epoch"), train_dataset=toy,
                      eval_dataset=toy, processing_class=tokenizer,
                      compute_metrics=lambda eval_pred: {"report": object()})
    with pytest.raises(ConfigError, match="'report': object .*cannot be logged: return numbers"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_columns_named_in_label_names_are_kept_for_a_custom_loss(tmp_path, toy, tokenizer):
    data = toy.rename_column("label", "target")
    target_loss = popping_loss("target")  # a label column the model does not take, named in label_names
    trainer = target_loss(model=tiny_bert(), args=quiet_args(tmp_path, label_names=["target"], max_steps=2),
                          train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2
    output = trainer.predict(data)
    assert output.label_ids.tolist() == data["target"]


def test_a_streaming_dataset_is_refused_with_what_to_pass_instead(tmp_path, toy, tokenizer):
    streaming = toy.to_iterable_dataset()
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2), train_dataset=streaming,
                      processing_class=tokenizer)
    with pytest.raises(ConfigError, match=r"train_dataset \(IterableDataset\) has no length or indexing.*"
                                          r"Pass a datasets.Dataset"):
        trainer.train()
    with pytest.raises(ConfigError, match=r"the evaluation dataset \(IterableDataset\) has no length"):
        trainer.evaluate(streaming)
    assert not (tmp_path / "run").exists()


def bootstrap_metrics(eval_pred):
    """Accuracy with a bootstrap resample: it draws from every global RNG, as users' metrics may."""
    logits, labels = eval_pred
    correct = logits.argmax(-1) == labels
    resample = np.random.randint(0, len(labels), len(labels))
    torch.rand(3)
    random.random()
    return {"accuracy": float(correct.mean()), "accuracy_bootstrap": float(correct[resample].mean())}


def test_the_check_before_training_is_invisible_to_the_run(tmp_path, tokenizer):
    """Same weights (dropout on, so the RNG stream matters), same log, same callback events as without it."""
    data = sentiment_dataset(tokenizer, rows=32)
    runs = []
    for metrics in (None, bootstrap_metrics):
        recorder = Recorder()
        trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path / str(bool(metrics)), max_steps=4,
                                                             logging_steps=2),
                          train_dataset=data, eval_dataset=data, processing_class=tokenizer,
                          compute_metrics=metrics, callbacks=[recorder])
        trainer.train()
        history = [{k: v for k, v in e.items() if not k.endswith(("_per_second", "runtime"))}
                   for e in trainer.state.log_history]
        runs.append((weights_of(trainer.model), history, recorder.events))
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]


# ---- a model that returns no loss ---------------------------------------------------------------------------------
class LogitsOnly(torch.nn.Module):
    def __init__(self, as_dict: bool):
        super().__init__()
        self.linear, self.as_dict = torch.nn.Linear(3, 2), as_dict

    def forward(self, features, labels=None):
        logits = self.linear(features)
        return {"logits": logits} if self.as_dict else (logits,)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_model_without_a_loss_names_its_class_and_the_fix(tmp_path, as_dict):
    rows = [{"features": torch.randn(3), "labels": i % 2} for i in range(16)]
    trainer = Trainer(model=LogitsOnly(as_dict), args=quiet_args(tmp_path, max_steps=2), train_dataset=rows)
    with pytest.raises(ModelError, match="LogitsOnly returned no loss although the batch has labels") as raised:
        trainer.train()
    assert "compute_loss_func" in str(raised.value) and "ForSequenceClassification" in str(raised.value)


# ---- warmup longer than the run ------------------------------------------------------------------------------------
def test_warmup_longer_than_the_run_is_said_once_with_both_numbers(tmp_path, toy, tokenizer, caplog):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=3, warmup_steps=500, logging_steps=1),
                      train_dataset=toy, processing_class=tokenizer)
    with caplog.at_level("WARNING", logger="finch"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "warmup_steps" in r.getMessage()]
    assert len(warnings) == 1 and "warmup_steps=500" in warnings[0] and "3 training steps" in warnings[0]
    quiet = Trainer(model=tiny_bert(), args=quiet_args(tmp_path / "short", max_steps=3, warmup_steps=2),
                    train_dataset=toy, processing_class=tokenizer)
    caplog.clear()
    with caplog.at_level("WARNING", logger="finch"):
        quiet.train()
    assert "warmup_steps" not in caplog.text


def test_model_init_that_takes_the_trial_is_called_with_none_outside_a_search(tmp_path, toy, tokenizer):
    """The tutorials' `def model_init(trial): return AutoModel...` (HF passes None when not searching)."""
    seen = []

    def model_init(trial):
        seen.append(trial)
        return tiny_bert()

    trainer = Trainer(model_init=model_init, args=TrainingArguments(output_dir=str(tmp_path), max_steps=1,
                                                                    disable_tqdm=True, bf16=False),
                      train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    assert seen == [None, None] and trainer.state.global_step == 1  # built in __init__, then again for train()


# ---- more of HF's API, as tutorials use it --------------------------------------------------------------------------
class LoggingTrainer(Trainer):
    """HF's signature for `log`, calling the parent with `start_time` as HF's subclasses do."""

    def log(self, logs, start_time=None):
        logs["custom"] = 1.0
        super().log(logs, start_time)


def test_a_log_override_with_hfs_signature_runs(tmp_path, toy, tokenizer):
    trainer = LoggingTrainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2, logging_steps=1),
                             train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    trainer.log({"mine": 3.0}, 0.0)
    assert all(entry.get("custom") == 1.0 for entry in trainer.state.log_history)
    assert trainer.state.log_history[-1]["mine"] == 3.0


@pytest.mark.parametrize("names", [{"include_for_metrics": ["inputs", "loss"]}, {"include_inputs_for_metrics": True}])
def test_include_for_metrics_gives_inputs_and_losses_in_dataset_order(tmp_path, toy, tokenizer, names):
    seen = {}

    def compute_metrics(prediction):
        seen.update(inputs=prediction.inputs, losses=prediction.losses)
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1, **names), train_dataset=toy,
                      eval_dataset=toy, processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.evaluate()
    inputs = seen["inputs"]
    assert inputs.shape[0] == len(toy)
    for row in (0, 5, len(toy) - 1):  # that example's ids, then its batch's padding (0) or -100 across batches, as HF
        ids = toy[row]["input_ids"]
        assert inputs[row, :len(ids)].tolist() == ids and np.isin(inputs[row, len(ids):], (0, -100)).all()
    if "include_for_metrics" in names:
        assert seen["losses"].shape == (len(toy),) and np.isfinite(seen["losses"]).all()
    else:
        assert seen["losses"] is None


def test_hf_only_argument_names_are_accepted_or_refused_with_the_reason():
    args = TrainingArguments(output_dir="o", do_train=True, do_eval=True, eval_accumulation_steps=4,
                             save_safetensors=True, logging_nan_inf_filter=False, average_tokens_across_devices=True)
    assert args.do_train is True and args.eval_accumulation_steps == 4  # readable, as scripts read them
    with pytest.raises(ConfigError, match=r"gradient_checkpointing=True\): finch does not support .* remove it"):
        TrainingArguments(output_dir="o", gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="save_safetensors=False"):
        TrainingArguments(output_dir="o", save_safetensors=False)
    with pytest.raises(TypeError, match="did you mean 'do_train'"):
        TrainingArguments(output_dir="o", do_trian=True)


@pytest.mark.parametrize("schedule, kwargs", [("inverse_sqrt", None), ("cosine_with_min_lr", {"min_lr": 1e-5}),
                                              ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
                                              ("warmup_stable_decay", {"num_decay_steps": 1})])
def test_more_of_hfs_schedules_train(tmp_path, toy, tokenizer, schedule, kwargs):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=3, logging_steps=1, warmup_steps=1,
                                                         lr_scheduler_type=schedule, lr_scheduler_kwargs=kwargs),
                      train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert len(rates) == 3 and max(rates) <= 1e-3


@pytest.mark.parametrize("overrides, message", [
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "HuggingFace's but finch does not implement it"),
    ({"lr_scheduler_type": "cosin"}, "did you mean 'cosine'"),
    ({"lr_scheduler_type": "warmup_stable_decay"}, "num_decay_steps"),
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "One of min_lr or min_lr_rate"),
    ({"optim": "adafactor"}, "optim='adafactor' is HuggingFace's"),
    ({"include_for_metrics": ["input"]}, "'input' is not one of 'inputs', 'loss'"),
])
def test_schedule_and_optimizer_mistakes_are_said_when_the_arguments_are_made(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        quiet_args(tmp_path, **overrides)


@pytest.mark.parametrize("config, overrides", [({"num_labels": 1}, {"class_weights": [1.0]}),
                                               ({"num_labels": 3, "problem_type": "multi_label_classification"},
                                                {"label_smoothing_factor": 0.1})])
def test_class_weights_and_label_smoothing_need_a_single_label_classifier(tmp_path, toy, tokenizer, config,
                                                                          overrides):
    model = tiny_bert(num_labels=config["num_labels"])
    model.config.problem_type = config.get("problem_type")
    trainer = Trainer(model=model, args=quiet_args(tmp_path, max_steps=1, **overrides), train_dataset=toy,
                      processing_class=tokenizer)
    with pytest.raises(ConfigError, match="applies to single-label classification"):
        trainer.train()


def test_run_glue_style_metrics_files_and_a_named_eval_dataset(tmp_path, toy, tokenizer, capsys):
    """HF's example scripts: train() metrics with the epoch, log_metrics, save_metrics, save_state; and
    evaluate(eval_dataset="name") picking one of the Trainer's eval datasets."""
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2), train_dataset=toy,
                      eval_dataset={"a": toy.select(range(10)), "b": toy.select(range(10, 30))},
                      processing_class=tokenizer)
    metrics = trainer.train().metrics
    assert {"train_loss", "train_runtime", "epoch"} <= set(metrics)
    trainer.log_metrics("train", metrics)
    assert "***** train metrics *****" in capsys.readouterr().out
    trainer.save_metrics("train", metrics)
    trainer.save_metrics("eval", {"eval_loss": 0.5})
    run = tmp_path / "run"
    assert json.loads((run / "train_results.json").read_text()) == metrics
    assert json.loads((run / "all_results.json").read_text()) == {**metrics, "eval_loss": 0.5}
    trainer.save_state()
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2
    named = trainer.evaluate(eval_dataset="b")
    assert named["eval_loss"] == trainer.evaluate(toy.select(range(10, 30)))["eval_loss"]
    with pytest.raises(ConfigError, match=r"eval_dataset='c'\): a name picks one of the Trainer's eval_dataset dict "
                                          r"\(\['a', 'b'\]\)"):
        trainer.evaluate(eval_dataset="c")


def test_save_strategy_best_saves_exactly_when_an_evaluation_sets_a_new_best(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="steps", eval_steps=1, max_steps=6,
                                                         save_strategy="best", save_total_limit=None),
                      train_dataset=toy, eval_dataset=toy.select(range(24)), processing_class=tokenizer)
    trainer.train()
    losses = [(entry["step"], entry["eval_loss"]) for entry in trainer.state.log_history if "eval_loss" in entry]
    improved, best = [], float("inf")
    for step, loss in losses:  # no metric_for_best_model: the loss, as HF
        if loss < best:
            improved, best = [*improved, step], loss
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert saved == improved and saved
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{improved[-1]}")
    with pytest.raises(ConfigError, match="save_strategy='best' saves when an evaluation sets a new best"):
        quiet_args(tmp_path, save_strategy="best")


def test_the_evaluation_on_start_is_a_baseline_never_the_best_model(tmp_path, toy, tokenizer):
    """HF's eval_on_start does not enter best-model tracking: were it the best, no checkpoint would hold it and
    load_best_model_at_end would have nothing to load. A learning rate of 0 keeps every evaluation equal to it."""
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=4,
                                                         save_strategy="steps", save_steps=2, eval_on_start=True,
                                                         load_best_model_at_end=True, learning_rate=0.0),
                      train_dataset=toy, eval_dataset=toy.select(range(24)), processing_class=tokenizer)
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e][:1] == [0]
    assert trainer.state.best_global_step == 2
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")


@pytest.mark.parametrize("limit, kept", [(1, ["checkpoint-2", "checkpoint-6"]), (2, ["checkpoint-2", "checkpoint-6"]),
                                         (3, ["checkpoint-2", "checkpoint-4", "checkpoint-6"])])
def test_save_total_limit_counts_the_best_checkpoint_as_hf_does(tmp_path, toy, tokenizer, limit, kept):
    """HF: with load_best_model_at_end the best is kept "alongside" the newest limit - 1 (limit=1: best and last)."""
    class FirstIsBest(TrainerCallback):  # the evaluation at step 2 is the best, every later one worse
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_score"] = -state.global_step

    args = quiet_args(tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, max_steps=6,
                      save_total_limit=limit, load_best_model_at_end=True, metric_for_best_model="score")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                      processing_class=tokenizer, callbacks=[FirstIsBest()])
    trainer.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == kept
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")


def test_hf_argument_parser_builds_finchs_training_arguments_as_hfs_example_scripts_do():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser((TrainingArguments,)).parse_args_into_dataclasses(
        ["--output_dir", "o", "--num_train_epochs", "2", "--learning_rate", "1e-4", "--report_to", "none"])
    assert isinstance(args, TrainingArguments) and args.num_train_epochs == 2.0 and args.learning_rate == 1e-4
    assert args.report_to == ["none"] and args.class_weights is None
    assert args.device.type in ("cpu", "cuda") and args.should_save and isinstance(args.to_sanitized_dict(), dict)
    with args.main_process_first(desc="dataset map"):
        pass


def test_an_hf_override_point_finch_does_not_call_is_refused_not_ignored(tmp_path, toy):
    class CustomStep(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            raise AssertionError("never called by finch")

    with pytest.raises(ConfigError, match=r"CustomStep overrides training_step, which HuggingFace's Trainer calls but "
                                          r"finch's does not.*override compute_loss"):
        CustomStep(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1), train_dataset=toy)


@pytest.mark.parametrize("mistake, message", [
    (lambda d: d.remove_columns(["input_ids", "token_type_ids", "attention_mask"]),
     r"train_dataset has no 'input_ids' column \(its columns: \['text', 'label'\]\): it is not tokenized"),
    (lambda d: d.cast_column("label", datasets.Value("string")),
     r"the labels \('label'\) are strings \('0', \.\.\.\), not class ids; encode them"),
    (lambda d: d.cast_column("label", datasets.Value("int64")).map(lambda e, i: {"label": i % 3}, with_indices=True),
     r"label 2 \(row 2; 32 row\(s\) in all\) is not a class of the model, which has num_labels=2 .* num_labels=3"),
    (lambda d: d.map(lambda e: {"input_ids": e["input_ids"] * 10, "attention_mask": e["attention_mask"] * 10,
                                "token_type_ids": e["token_type_ids"] * 10}),
     (r"train_dataset: row \d+ has \d+ tokens, but BertForSequenceClassification takes at most 64; tokenize with "
     r"truncation=True")),
])
def test_dataset_mistakes_are_named_before_the_first_step(tmp_path, toy, tokenizer, mistake, message):
    """What torch would report from inside the forward pass (IndexError: Target 2 is out of bounds...)."""
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1), train_dataset=mistake(toy),
                      processing_class=tokenizer)
    with pytest.raises(DataError, match=message):
        trainer.train()


def test_a_tokenizer_of_another_vocabulary_is_named(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(vocab_size=1000), args=quiet_args(tmp_path, max_steps=1), train_dataset=toy,
                      processing_class=tokenizer)
    with pytest.raises(DataError, match=r"token id \d+ is beyond the model's vocabulary \(1000 tokens\): the data "
                                        r"was tokenized with another model's tokenizer"):
        trainer.train()
