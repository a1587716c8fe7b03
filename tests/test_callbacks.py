"""The progress printed during training: lines when stdout is not a terminal, the bar when it is; removing
callbacks as HF's code does."""

import logging
import re
import sys

import pytest
import transformers.integrations as hf_integrations
import transformers.trainer_callback as hf_callbacks
from conftest import sentiment_dataset, tiny_bert

from finch import EarlyStoppingCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from finch.observers.trackers import TensorBoardCallback
from finch.state import TrainerState
from finch.training.callbacks import format_log_line


def quiet_args(tmp_path, **overrides) -> TrainingArguments:
    values = {"output_dir": str(tmp_path / "run"), "bf16": False, "save_strategy": "no", "logging_steps": 1000,
              "disable_tqdm": True, "seed": 7}
    values.update(overrides)
    return TrainingArguments(**values)


def test_eta_counts_only_the_steps_this_run_has_done():
    state = TrainerState(global_step=60, max_steps=100)
    line = format_log_line({"loss": 0.5}, state, elapsed=10.0, started_step=50)  # resumed at 50: 10 steps in 10 s
    assert "loss 0.5" in line and "elapsed 10s" in line and "eta 40s" in line


def test_evaluate_outside_training_prints_just_the_metrics():
    line = format_log_line({"eval_loss": 0.25, "eval_accuracy": 0.875, "epoch": 3.0}, TrainerState(), elapsed=None)
    assert line == "eval_loss 0.25 | eval_accuracy 0.875"


def progress_of(trainer) -> ProgressCallback:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback))


def test_finch_eval_prints_no_step_epoch_or_eta(tmp_path, toy, tokenizer, capsys):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), eval_dataset=toy, processing_class=tokenizer)
    trainer.evaluate()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("eval_loss ")
    assert not printed[0].startswith("step") and " epoch " not in printed[0] and "eta" not in printed[0]


def test_off_a_terminal_a_progress_line_comes_at_least_every_heartbeat(tmp_path, toy, tokenizer, capsys):
    runs = {}
    for heartbeat in (30.0, 0.0):
        trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path / str(heartbeat), max_steps=3),
                          train_dataset=toy, processing_class=tokenizer)
        progress_of(trainer).heartbeat_seconds = heartbeat
        trainer.train()
        runs[heartbeat] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    # logging_steps=1000: with the default 30 s a 3-step run prints only its final summary line
    assert [line.split(" | ")[0] for line in runs[30.0]] == ["step 3/3"]
    heartbeats = [line for line in runs[0.0] if "train_runtime" not in line]
    assert [line.split(" | ")[0] for line in heartbeats] == ["step 1/3", "step 2/3", "step 3/3"]
    assert all("elapsed" in line and "epoch" in line and "loss" not in line for line in heartbeats)
    assert "eta" in heartbeats[0]


def test_the_bar_is_closed_before_loading_the_best_model(tmp_path, tokenizer, capsys):
    """The bar is drawn once, and the best-model message ('Loading the best model ...', or 'The best model ... is
    the last step's' when there is nothing to load) starts a line of its own after it."""
    data = sentiment_dataset(tokenizer, rows=16)
    args = quiet_args(tmp_path, num_train_epochs=2, eval_strategy="epoch", save_strategy="epoch",
                      load_best_model_at_end=True)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=data, eval_dataset=data,
                      processing_class=tokenizer)
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(ProgressCallback(use_bar=True))
    handler = logging.StreamHandler(sys.stderr)  # the bar's stream: their order on screen is the order here
    logger = logging.getLogger("finch")
    logger.addHandler(handler)
    try:
        trainer.train()
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    message = re.search(r"(Loading the|The) best model \(", err)
    before, after = err[:message.start()], err[message.end():]
    assert before.endswith("\n")  # on a line of its own
    assert "4/4" in before and "4/4" not in after  # the finished bar was drawn before the message, not again


@pytest.mark.parametrize(("hf_callback", "finch_class"), [
    (hf_callbacks.ProgressCallback, ProgressCallback),
    (hf_callbacks.PrinterCallback, ProgressCallback),  # HF's replacement for the bar; finch's prints lines too
    (hf_callbacks.ProgressCallback(), ProgressCallback),  # an instance of HF's class stands for it too
    (hf_callbacks.EarlyStoppingCallback, EarlyStoppingCallback),
    (hf_integrations.TensorBoardCallback, TensorBoardCallback)])
@pytest.mark.parametrize("method", ["pop_callback", "remove_callback"])
def test_removing_one_of_hfs_callbacks_removes_finchs_counterpart(tmp_path, hf_callback, finch_class, method):
    """HF's code removes its built-in callbacks by their class (`trainer.remove_callback(ProgressCallback)` to drop
    the bar): in finch that removes the callback doing the same job, not nothing."""
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, report_to=["tensorboard"]),
                      callbacks=[EarlyStoppingCallback()])
    ours = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, finch_class))
    removed = getattr(trainer, method)(hf_callback)
    assert ours not in trainer.callback_handler.callbacks
    assert method == "remove_callback" or removed is ours


@pytest.mark.parametrize(("callback", "said"), [
    (hf_callbacks.DefaultFlowCallback, ("transformers.trainer_callback.DefaultFlowCallback (finch has none: its "
                                        "training loop decides when to log, evaluate and save")),
    (hf_integrations.MLflowCallback, "nor finch's MLflowCallback"),
    (type("MyCallback", (TrainerCallback,), {}), "no callback of class test_callbacks.MyCallback in this Trainer"),
    (TrainerCallback(), "TrainerCallback (this very instance) in this Trainer")])
def test_removing_a_callback_the_trainer_does_not_have_warns_and_names_those_it_has(tmp_path, caplog, callback, said):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path))
    before = list(trainer.callback_handler.callbacks)
    assert trainer.pop_callback(callback) is None
    assert trainer.callback_handler.callbacks == before
    assert said in caplog.text and "nothing was removed" in caplog.text
    assert "its callbacks are: ProgressCallback, JsonlLoggerCallback" in caplog.text


class StepCounter(TrainerCallback):
    def __init__(self):
        self.ends = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.ends += 1

    def on_step_ends(self, args, state, control, **kwargs):  # misspelt: no such event
        raise AssertionError("never called")


def test_a_misspelt_event_method_is_a_warning_naming_the_closest_event(tmp_path, toy, tokenizer, caplog):
    counter = StepCounter()
    with caplog.at_level(logging.WARNING, logger="finch"):
        trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2), train_dataset=toy,
                          processing_class=tokenizer, callbacks=[counter])
    said = [r.getMessage() for r in caplog.records if "on_step_ends" in r.getMessage()]
    assert len(said) == 1 and "StepCounter.on_step_ends" in said[0] and "did you mean on_step_end?" in said[0]
    trainer.train()
    assert counter.ends == 2  # the real event still fires; the misspelt method never does


def test_events_are_hfs_method_names_and_an_unknown_event_cannot_be_fired(tmp_path):
    from finch.events import Event
    from finch.training.callbacks import CallbackHandler

    hf_events = {name for name in dir(hf_callbacks.TrainerCallback) if name.startswith("on_")}
    assert {event.value for event in Event} == hf_events
    handler = CallbackHandler([StepCounter()])
    with pytest.raises(ValueError, match="on_step_ends"):
        handler.fire("on_step_ends", quiet_args(tmp_path), TrainerState(), None)
