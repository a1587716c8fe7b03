"""The best model as HF's Trainer keeps it: early stopping with or without a metric, save_strategy='best', the
evaluation on start as a baseline, save_total_limit counting the best checkpoint.
"""

import pytest
from conftest import quiet_args, sentiment_dataset, tiny_bert

from finch import EarlyStoppingCallback, Trainer, TrainerCallback
from finch.errors import ConfigError


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


def test_a_best_metric_that_is_always_nan_chooses_no_checkpoint_and_says_so(tmp_path, toy, tokenizer, caplog):
    """NaN compares false with everything: taken as the first best, it would never be beaten, and its checkpoint
    would be loaded at the end, silently."""
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=4,
                                                         save_strategy="steps", save_steps=2,
                                                         load_best_model_at_end=True, metric_for_best_model="f1"),
                      train_dataset=toy, eval_dataset=toy.select(range(16)), processing_class=tokenizer,
                      compute_metrics=lambda p: {"f1": float("nan")})
    with caplog.at_level("WARNING", logger="finch"):
        trainer.train()
    assert trainer.state.best_metric is None and trainer.state.best_model_checkpoint is None
    said = [r.getMessage() for r in caplog.records]
    assert sum("metric_for_best_model eval_f1 is nan at step" in m for m in said) == 2
    assert any("no evaluation gave a finite f1, so no best model was chosen; the last step's weights are kept" in m
               for m in said)


def test_evaluate_on_an_empty_set_is_a_data_error(tmp_path, toy, tokenizer):
    from finch.errors import DataError

    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), train_dataset=toy, processing_class=tokenizer)
    with pytest.raises(DataError, match=r"the evaluation set has no rows, so there is no loss or metric"):
        trainer.evaluate(toy.select([]))
    with pytest.raises(DataError, match=r"the evaluation set \(small\) has no rows"):
        trainer.evaluate({"small": toy.select([]), "big": toy})
