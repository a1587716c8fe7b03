"""The Trainer against a plain PyTorch loop, gradient accumulation, callbacks, evaluation order, saved models."""

import random

import numpy as np
import pytest
import torch
from conftest import sentiment_dataset, tiny_bert, weights_of
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup, pipeline

from finch import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from finch.data.metrics import classification_metrics
from finch.training.dropout import fast_dropout


def quiet_args(tmp_path, **overrides) -> TrainingArguments:
    values = {"output_dir": str(tmp_path / "run"), "bf16": False, "save_strategy": "no", "logging_steps": 1000,
                  "disable_tqdm": True, "learning_rate": 1e-3, "weight_decay": 0.01, "seed": 7}
    values.update(overrides)
    return TrainingArguments(**values)


def plain_pytorch_loop(model, dataset, tokenizer, steps, batch_size, lr, weight_decay, seed):
    """The tutorial's hand-written loop: AdamW without decay on biases/norms, linear schedule, clipping at 1.0."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    collator = DataCollatorWithPadding(tokenizer)
    rows = dataset.remove_columns(["text"]).rename_column("label", "labels")
    model.train()
    for step in range(steps):
        start = (step * batch_size) % len(rows)
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model


@pytest.mark.parametrize("fast", [False, None])
def test_same_weights_as_plain_pytorch_loop(tmp_path, toy, tokenizer, fast):
    """torch's dropout (fast_dropout=False), and finch's CPU dropout (the default) around the same plain loop."""
    reference = tiny_bert()
    with fast_dropout(reference, enabled=fast is None):
        plain_pytorch_loop(reference, toy, tokenizer, steps=10, batch_size=8, lr=1e-3, weight_decay=0.01, seed=7)
    args = quiet_args(tmp_path, max_steps=10, train_sampling_strategy="sequential", fast_dropout=fast)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    expected, got = weights_of(reference), weights_of(trainer.model)
    assert all(torch.equal(expected[k], got[k]) for k in expected), "finch diverged from the plain PyTorch loop"
    assert not torch.equal(weights_of(tiny_bert())["classifier.weight"], got["classifier.weight"])


@pytest.mark.parametrize("strategy", ["random", "sequential"])
def test_accumulation_matches_one_big_batch(tmp_path, tokenizer, strategy):
    # 42 rows: batches of 16 are 16, 16, 10; batches of 4 x 4 make steps of 4+4+4+4, 4+4+4+4, 4+4+2 examples.
    # Averaging per micro-batch would weight the last step's 2-row batch like a 4-row one; finch must not.
    data = sentiment_dataset(tokenizer, rows=42)
    runs = {}
    for batch_size, accumulation in ((16, 1), (4, 4)):
        args = quiet_args(tmp_path / f"{batch_size}", per_device_train_batch_size=batch_size,
                          gradient_accumulation_steps=accumulation, num_train_epochs=2, max_grad_norm=0.0,
                          train_sampling_strategy=strategy)
        trainer = Trainer(model=tiny_bert(dropout=0.0), args=args, train_dataset=data, processing_class=tokenizer)
        trainer.train()
        assert trainer.state.global_step == 6 and trainer.state.micro_step == {1: 6, 4: 22}[accumulation]
        runs[accumulation] = weights_of(trainer.model)
    for key in runs[1]:
        torch.testing.assert_close(runs[4][key], runs[1][key], rtol=1e-5, atol=1e-6, msg=key)


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda args, state, control, **kwargs: self.events.append(name)
        raise AttributeError(name)


def test_callback_events_fire_in_order(tmp_path, tokenizer):
    recorder = Recorder()
    data = sentiment_dataset(tokenizer, rows=16)
    args = quiet_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=2,
                      eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch")
    Trainer(model=tiny_bert(), args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer,
            callbacks=[recorder]).train()
    step = ["on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"]
    evaluation = ["on_prediction_step"] * 2 + ["on_log", "on_evaluate"]
    epoch = ["on_epoch_begin", *step, *step, "on_log", *evaluation, "on_save", "on_epoch_end"]
    assert recorder.events == ["on_init_end", "on_train_begin", *epoch, *epoch, "on_log", "on_train_end"]


def test_callback_can_stop_training(tmp_path, toy, tokenizer):
    class StopAtThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), train_dataset=toy, processing_class=tokenizer,
                      callbacks=[StopAtThree])
    trainer.train()
    assert trainer.state.global_step == 3


def test_early_stopping_stops_after_patience(tmp_path, toy, tokenizer):
    args = quiet_args(tmp_path, eval_strategy="steps", eval_steps=1, metric_for_best_model="score", max_steps=50)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                      processing_class=tokenizer, compute_metrics=lambda prediction: {"score": 0.5})
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=2))
    trainer.train()
    # evaluation 1 sets the best score; evaluations 2 and 3 do not improve on it: patience 2 is used up
    assert trainer.state.global_step == 3
    assert sum("eval_score" in entry for entry in trainer.state.log_history) == 3


def test_predictions_come_back_in_dataset_order(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, per_device_eval_batch_size=5),
                      processing_class=tokenizer)
    output = trainer.predict(toy)
    assert output.predictions.shape == (len(toy), 2)
    np.testing.assert_array_equal(output.label_ids, np.array(toy["label"]))
    trainer.model.eval()
    with torch.inference_mode():
        for index in (0, 17, len(toy) - 1):
            single = {k: torch.tensor([toy[index][k]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
            np.testing.assert_allclose(output.predictions[index], trainer.model(**single).logits[0].numpy(), atol=1e-5)
    assert set(output.metrics) >= {"test_loss", "test_runtime", "test_samples_per_second"}


def test_evaluate_on_a_dict_of_sets_prefixes_names(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), processing_class=tokenizer,
                      eval_dataset={"first": toy.select(range(10)), "second": toy.select(range(10, 30))},
                      compute_metrics=classification_metrics)
    metrics = trainer.evaluate()
    assert {"eval_first_loss", "eval_first_accuracy", "eval_second_loss", "eval_second_f1"} <= set(metrics)


def test_trains_to_learn_the_toy_task(tmp_path, tokenizer):
    data = sentiment_dataset(tokenizer, rows=400)
    split = data.train_test_split(test_size=0.25, seed=0)
    args = quiet_args(tmp_path, num_train_epochs=4, per_device_train_batch_size=16, learning_rate=3e-3,
                      eval_strategy="epoch")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=split["train"], eval_dataset=split["test"],
                      processing_class=tokenizer, compute_metrics=classification_metrics)
    result = trainer.train()
    metrics = trainer.evaluate()
    majority = max(np.mean(split["test"]["label"]), 1 - np.mean(split["test"]["label"]))
    assert metrics["eval_accuracy"] > majority + 0.1
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert losses[-1] < losses[0] and result.training_loss > 0


def test_saved_model_loads_in_pipeline_with_label_names(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2), train_dataset=toy,
                      processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    classify = pipeline("text-classification", model=str(tmp_path / "model"))
    prediction = classify("good great superb")[0]
    assert prediction["label"] in {"negative", "positive"}
    assert classify.model.config.label2id == {"negative": 0, "positive": 1}


def test_tokenizer_keyword_is_accepted_with_a_warning(tmp_path, toy, tokenizer):
    with pytest.warns(FutureWarning, match="processing_class"):
        trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path), train_dataset=toy, tokenizer=tokenizer)
    assert trainer.processing_class is tokenizer


def test_unused_columns_are_dropped_and_named(tmp_path, toy, tokenizer, caplog):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1), train_dataset=toy,
                      processing_class=tokenizer)
    with caplog.at_level("INFO", logger="finch"):
        trainer.train()
    assert "dropped columns the model does not take: text" in caplog.text


def test_custom_module_returning_a_dict(tmp_path):
    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1)

        def forward(self, features, labels=None):
            prediction = self.linear(features).squeeze(-1)
            loss = torch.nn.functional.mse_loss(prediction, labels) if labels is not None else None
            return {"loss": loss, "logits": prediction}

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 3, generator=generator)
    rows = [{"features": f, "labels": float(f @ torch.tensor([1.0, -2.0, 0.5]))} for f in features]
    trainer = Trainer(model=Regressor(), args=quiet_args(tmp_path, num_train_epochs=30, learning_rate=0.05,
                                                        lr_scheduler_type="constant"),
                      train_dataset=rows, eval_dataset=rows)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before / 10


def test_fp16_without_cuda_falls_back_with_a_warning(tmp_path, toy, tokenizer, caplog):
    with caplog.at_level("WARNING", logger="finch"):
        trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, bf16=None, fp16=True, max_steps=1),
                          train_dataset=toy, processing_class=tokenizer)
    assert "fp16=True needs CUDA" in caplog.text
    assert trainer.precision.dtype in (torch.bfloat16, None)
    trainer.train()


def test_jsonl_log_has_every_logged_dict(tmp_path, toy, tokenizer):
    import json

    args = quiet_args(tmp_path, max_steps=6, logging_steps=2, eval_strategy="steps", eval_steps=3)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                      processing_class=tokenizer)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [2, 4, 6]
    assert [line["step"] for line in lines if "eval_loss" in line] == [3, 6]
    assert lines == [{**entry} for entry in trainer.state.log_history]


def test_padding_multiple_rounds_batch_lengths(tmp_path, toy, tokenizer):
    from finch.data.batching import default_collator, padding_multiple

    assert padding_multiple(None, "cpu", compiled=False, bf16=False) is None
    assert padding_multiple(None, "cpu", compiled=False, bf16=True) == 8
    assert padding_multiple(None, "cuda", compiled=False, bf16=False) == 8
    assert padding_multiple(None, "cpu", compiled=True, bf16=False) == 64
    assert padding_multiple(16, "cuda", compiled=True, bf16=False) == 16
    rows = toy.remove_columns("text")
    odd = next(rows[i] for i in range(len(rows)) if len(rows[i]["input_ids"]) % 8)
    assert default_collator(tokenizer)([odd])["input_ids"].shape[1] % 8 != 0
    assert default_collator(tokenizer, 8)([odd])["input_ids"].shape[1] % 8 == 0
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, pad_to_multiple_of=8), processing_class=tokenizer)
    assert trainer.data_collator([odd])["input_ids"].shape[1] % 8 == 0
    # The tutorial passes its own DataCollatorWithPadding: rounded too, through a copy (the user's object is untouched)
    theirs = DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, pad_to_multiple_of=8), data_collator=theirs)
    assert trainer.data_collator([odd])["input_ids"].shape[1] % 8 == 0 and theirs.pad_to_multiple_of is None
    exact = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, pad_to_multiple_of=1), data_collator=theirs)
    assert exact.data_collator([odd])["input_ids"].shape[1] == len(odd["input_ids"])


@pytest.mark.slow
def test_torch_compile_trains_like_eager_and_saves_plain_names(tmp_path, toy, tokenizer):
    """The CUDA speed path's torch.compile, on the CPU: same parameters trained, checkpoint keys unprefixed."""
    results = {}
    for compiled in (False, True):
        trainer = Trainer(model=tiny_bert(dropout=0.0), processing_class=tokenizer, train_dataset=toy,
                          args=quiet_args(tmp_path / str(compiled), torch_compile=compiled, max_steps=4,
                                          save_strategy="steps", save_steps=4))
        trainer.train()
        results[compiled] = weights_of(trainer.model)
    assert all(torch.allclose(results[False][k], results[True][k], atol=1e-4) for k in results[False])
    import safetensors.torch

    saved = safetensors.torch.load_file(tmp_path / "True" / "run" / "checkpoint-4" / "model.safetensors")
    assert not [k for k in saved if "_orig_mod" in k]


def test_an_evaluation_is_reused_only_for_the_same_weights_data_and_settings(tmp_path, toy, tokenizer):
    """`evaluate(reuse_unchanged=True)` (finch train's final evaluation) returns the last evaluation's metrics while
    nothing it depends on has changed: no second pass, no compute_metrics call, yet logged again. Anything that
    writes a weight, another dataset or another batch size makes a real pass; plain `evaluate()` always does, as
    HF's does."""
    calls = []

    def score(prediction):
        calls.append(len(prediction.label_ids))
        return {"mean_logit": float(np.mean(prediction.predictions))}

    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=4),
                      train_dataset=toy, eval_dataset=toy.select(range(8)), processing_class=tokenizer,
                      compute_metrics=score)
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]
    passes = len(calls)

    reused = trainer.evaluate(reuse_unchanged=True)
    assert len(calls) == passes
    assert {key: last[key] for key in reused} == reused  # the same numbers, eval_runtime included
    assert [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1] == {**reused, "step": 4}

    again = trainer.evaluate()  # HF's behaviour: a second pass, which gives the same numbers
    assert len(calls) == passes + 1
    assert again["eval_loss"] == pytest.approx(reused["eval_loss"], rel=1e-6)
    assert again["eval_mean_logit"] == pytest.approx(reused["eval_mean_logit"], rel=1e-6)

    def changes(step):
        before = len(calls)
        metrics = step()
        assert len(calls) == before + 1, "an evaluation was reused although what it depends on changed"
        return metrics

    with torch.no_grad():
        trainer.model.classifier.weight.add_(0.5)
    moved = changes(lambda: trainer.evaluate(reuse_unchanged=True))
    assert moved["eval_mean_logit"] != pytest.approx(reused["eval_mean_logit"], rel=1e-6)
    trainer.model.load_state_dict(tiny_bert(seed=1).state_dict())
    changes(lambda: trainer.evaluate(reuse_unchanged=True))
    changes(lambda: trainer.evaluate(toy.select(range(6)), reuse_unchanged=True))
    changes(lambda: trainer.evaluate(reuse_unchanged=True))  # back to the trainer's set
    trainer.args.per_device_eval_batch_size = 3
    changes(lambda: trainer.evaluate(reuse_unchanged=True))
    before = len(calls)
    trainer.evaluate(reuse_unchanged=True)
    assert len(calls) == before  # unchanged since the previous call: reused


def test_steps_trained_after_the_last_evaluation_are_never_hidden_by_reuse(tmp_path, toy, tokenizer):
    """Evaluated at step 3 of 4: the weights of step 4 are new, although torch's fused AdamW wrote them without
    advancing any version counter."""
    calls = []
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, eval_strategy="steps", eval_steps=3, max_steps=4),
                      train_dataset=toy, eval_dataset=toy.select(range(8)), processing_class=tokenizer,
                      compute_metrics=lambda prediction: calls.append(1) or {"n": len(prediction.label_ids)})
    trainer.train()
    assert trainer.optimizer.defaults["fused"]
    assert [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry] == [3]
    before = len(calls)
    final = trainer.evaluate(reuse_unchanged=True)
    assert len(calls) == before + 1
    assert final["eval_loss"] == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-6)


def test_compute_loss_is_the_same_before_and_after_train_with_class_weights(tmp_path, tokenizer):
    """`compute_loss` depends on the arguments and the training set, never on whether `train()` has run: with
    class_weights, the loss of a batch before training is the weighted cross-entropy, as it is after."""
    dataset = sentiment_dataset(tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path), class_weights=[1.0, 4.0], max_steps=1, bf16=False,
                             save_strategy="no", report_to="none", learning_rate=0.0, disable_tqdm=True)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([{k: dataset[i][k] for k in ("input_ids", "attention_mask", "label")}
                                   for i in range(8)])
    batch["labels"] = batch.pop("label") if "label" in batch else batch["labels"]
    trainer.model.eval()

    def losses():
        with torch.no_grad():
            logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            expected = torch.nn.functional.cross_entropy(logits.float(), batch["labels"],
                                                         weight=torch.tensor([1.0, 4.0]))
            return float(trainer.compute_loss(trainer.model, dict(batch))), float(expected)

    before, expected = losses()
    assert before == pytest.approx(expected, rel=1e-6)
    trainer.train()  # learning_rate 0: the weights stay, so the loss must too
    trainer.model.eval()
    assert losses()[0] == pytest.approx(before, rel=1e-6)


class StopEpochAt(TrainerCallback):
    """Ends the epoch after optimizer step `step` (HF's `should_epoch_stop`)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_epoch_stop = True


def test_an_epoch_cut_short_by_a_callback_is_followed_by_a_whole_epoch(tmp_path, toy, tokenizer):
    """`should_epoch_stop` ends the epoch; the next epoch trains from its own first step (it used to start at a
    negative offset into its plan)."""
    args = quiet_args(tmp_path, num_train_epochs=2, per_device_train_batch_size=8)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer,
                      callbacks=[StopEpochAt(2)])
    per_epoch = trainer.state.steps_per_epoch or -(-len(toy) // 8)
    trainer.train()
    assert trainer.state.global_step == 2 + per_epoch


def test_arguments_made_before_the_launcher_placed_the_process_take_the_runtimes_placement(tmp_path, toy, tokenizer,
                                                                                         monkeypatch):
    """One world size: what the runtime finds when the Trainer starts, also for arguments made earlier under
    other RANK / WORLD_SIZE values (a fork-based launcher sets them after the parent made its arguments)."""
    for name, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    args = quiet_args(tmp_path, max_steps=1)
    assert (args.world_size, args.process_index, args.should_save) == (2, 1, False)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    assert trainer.args.world_size == trainer.runtime.world_size == 1 and trainer.args.should_save


def test_balanced_class_weights_without_a_training_set_leave_evaluation_unweighted(tmp_path, toy, tokenizer):
    args = quiet_args(tmp_path, class_weights="balanced")
    trainer = Trainer(model=tiny_bert(), args=args, processing_class=tokenizer)
    assert trainer._class_weights() is None and "eval_loss" in trainer.evaluate(toy)


def test_python_api_mistakes_are_named_before_training_not_left_to_a_traceback_or_ignored(tmp_path, toy, tokenizer):
    """Each was an AttributeError, a FileExistsError, or silently nothing (a callback never called, labels that
    never reach compute_metrics)."""
    from conftest import quiet_args

    from finch.errors import ConfigError, OutputError

    with pytest.raises(ConfigError, match=r"takes a model object, not str 'some/folder': load it first, e.g. model = "
                                          r"AutoModelForSequenceClassification.from_pretrained\('some/folder'"):
        Trainer(model="some/folder", args=quiet_args(tmp_path), processing_class=tokenizer)
    for not_a_callback in (42, lambda *args: None):
        with pytest.raises(ConfigError, match=r"callbacks: .* is not a callback: it has none of the event methods"):
            Trainer(model=tiny_bert(), args=quiet_args(tmp_path), train_dataset=toy, processing_class=tokenizer,
                    callbacks=[not_a_callback])
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1, label_names=["target"]),
                      train_dataset=toy, processing_class=tokenizer)
    with pytest.raises(ConfigError, match=r"label_names=\['target'\]: \['target'\] is no column of train_dataset"):
        trainer.train()
    assert trainer.state.global_step == 0
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(OutputError, match="a file of that name exists; the model is a folder"):
        trainer.save_model(str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "mine"


def test_an_optimizer_made_for_another_model_is_refused_before_a_step(tmp_path, toy, tokenizer):
    """It trained the other model's parameters: the model passed as model= and saved never changed, silently."""
    from conftest import quiet_args

    from finch.errors import ConfigError

    model = tiny_bert()
    before = weights_of(model)
    trainer = Trainer(model=model, args=quiet_args(tmp_path, max_steps=2), train_dataset=toy,
                      processing_class=tokenizer, optimizers=(torch.optim.SGD(tiny_bert().parameters(), lr=0.1), None))
    with pytest.raises(ConfigError, match=r"optimizers=\(SGD, \.\.\.\) holds none of the model's parameters"):
        trainer.train()
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items())
    with pytest.raises(ConfigError, match=r"give a pair \(optimizer, lr_scheduler\)"):
        Trainer(model=model, args=quiet_args(tmp_path), processing_class=tokenizer, optimizers=(None,))
    own = Trainer(model=model, args=quiet_args(tmp_path, max_steps=1), train_dataset=toy, processing_class=tokenizer,
                  optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    assert own.train().global_step == 1
