"""What evaluation gives tutorial code, as HF's Trainer does: evaluate() with the epoch, compute_metrics tried
before the first step, metric values as Python numbers, inputs and losses for metrics, run_glue's metrics files.
"""

import json
import logging
import random

import numpy as np
import pytest
import torch
from conftest import quiet_args, sentiment_dataset, tiny_bert, weights_of
from test_trainer import Recorder

from finch import Trainer
from finch.data.metrics import classification_metrics
from finch.errors import ConfigError


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
    """What tutorials' metrics return: NumPy and torch scalars, a 0-d array, a one-element array, a per-class array."""
    logits, labels = eval_pred
    correct = logits.argmax(-1) == labels
    return {"accuracy": np.float32(correct.mean()), "correct": np.int64(correct.sum()), "perfect": np.bool_(
        correct.all()), "mean_logit": torch.tensor(float(logits.mean())), "zero_d": np.array(0.5),
            "one_element": np.array([0.25]), "per_class": np.array([1.0, 0.5])}


def test_numpy_and_torch_metric_values_become_python_numbers_in_every_output(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="epoch", num_train_epochs=1,
                                                          logging_steps=1), train_dataset=toy, eval_dataset=toy,
                      processing_class=tokenizer, compute_metrics=numpy_and_torch_metrics)
    trainer.train()  # the log (JSON lines) takes them: a NumPy float32 used to stop the run at the first evaluation
    metrics = trainer.evaluate()
    assert {type(metrics[f"eval_{k}"]) for k in ("accuracy", "mean_logit", "zero_d")} == {float}
    assert type(metrics["eval_correct"]) is int and type(metrics["eval_perfect"]) is bool
    assert metrics["eval_one_element"] == 0.25
    assert metrics["eval_per_class"] == [1.0, 0.5]  # logged as a list, as HF's denumpify_detensorize gives it
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(type(entry.get("eval_accuracy")) is float for entry in logged)
    assert type(trainer.predict(toy).metrics["test_accuracy"]) is float


def test_a_metric_that_cannot_be_logged_is_refused_before_training(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="epoch"), train_dataset=toy,
                      eval_dataset=toy, processing_class=tokenizer,
                      compute_metrics=lambda eval_pred: {"accuracy": 0.5, "report": object()})
    with pytest.raises(ConfigError, match="'report': object .*cannot be logged: return numbers"):
        trainer.train()
    assert trainer.state.global_step == 0 and not (tmp_path / "run" / "log.jsonl").exists()


@pytest.mark.parametrize("value, logged, described", [
    ("0.91", "0.91", "str '0.91'"), (None, None, "NoneType None"), ([0.9, 0.8], [0.9, 0.8], "list of 2 items"),
    (np.array([0.9, 0.8]), [0.9, 0.8], "of shape (2,)"), (torch.tensor([0.5, 0.25]), [0.5, 0.25], "of shape (2,)")])
def test_a_metric_that_is_not_one_number_is_logged_as_hf_logs_it_with_one_warning_naming_it(tmp_path, toy, tokenizer,
                                                                                          caplog, value, logged,
                                                                                          described):
    """HF's Trainer logs text, lists and None as they are (tutorial code returning per-class scores runs): so does
    finch, and says once, before training, that trackers, curves and the best model's choice will not see them."""
    args = quiet_args(tmp_path, eval_strategy="epoch", num_train_epochs=2)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy, processing_class=tokenizer,
                      compute_metrics=lambda eval_pred: {"accuracy": 0.5, "report": value})
    with caplog.at_level(logging.WARNING, logger="finch"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "not one number each" in r.getMessage()]
    assert len(warnings) == 1 and "'report'" in warnings[0] and described in warnings[0], warnings
    assert "'accuracy'" not in warnings[0]
    evaluations = [entry for entry in trainer.state.log_history if "eval_report" in entry]
    assert len(evaluations) == 2 and all(entry["eval_report"] == logged for entry in evaluations)


def test_a_best_model_metric_that_is_not_a_number_is_a_clear_error(tmp_path, toy, tokenizer):
    args = quiet_args(tmp_path, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                      metric_for_best_model="report")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy, processing_class=tokenizer,
                      compute_metrics=lambda eval_pred: {"accuracy": 0.5, "report": [0.9, 0.8]})
    with pytest.raises(ConfigError, match=r"metric_for_best_model='report' is list \[0.9, 0.8\], not a number.*"
                                          r"choose another metric \(eval_accuracy, eval_loss\)"):
        trainer.train()
    assert trainer.state.global_step == 0  # said before training (on the rows compute_metrics is tried on)


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
