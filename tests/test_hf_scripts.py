"""What HF's scripts and course code use beyond the tutorial's calls: `transformers.TrainingArguments` handed to
finch's Trainer, the Trainer methods scripts call (`create_model_card`, the dataloaders, `prediction_step`), the
logged learning rate, and errors that say what happened (an empty training set, a broken `compute_metrics`)."""

import math

import pytest
import torch
from conftest import quiet_args, tiny_bert

from finch import Trainer, TrainingArguments
from finch.errors import ConfigError, DataError


def test_hfs_training_arguments_given_to_finchs_trainer_are_converted_from_what_the_user_set(tmp_path, toy, tokenizer):
    """The HF course builds TrainingArguments in one cell and the Trainer in another: a user who changes only the
    Trainer import passes transformers' arguments. Their settings carry over; HF's unset bf16/fp16 (False) leave
    finch's precision choice alone; an HF option finch does not do is refused with its reason."""
    import transformers

    hf_args = transformers.TrainingArguments(str(tmp_path / "run"), eval_strategy="epoch", learning_rate=3e-4,
                                             num_train_epochs=1, weight_decay=0.01, per_device_train_batch_size=4,
                                             lr_scheduler_type="cosine", report_to="none", disable_tqdm=True)
    with pytest.warns(UserWarning, match="converted to finch's TrainingArguments"):
        trainer = Trainer(model=tiny_bert(), args=hf_args, train_dataset=toy, eval_dataset=toy.select(range(8)),
                          processing_class=tokenizer)
    args = trainer.args
    assert isinstance(args, TrainingArguments)
    assert (args.output_dir, args.eval_strategy, args.learning_rate, args.num_train_epochs, args.weight_decay,
            args.per_device_train_batch_size, args.lr_scheduler_type) == (
        str(tmp_path / "run"), "epoch", 3e-4, 1, 0.01, 4, "cosine")
    assert args.bf16 is None and args.fp16 is None
    trainer.train()
    assert [entry["epoch"] for entry in trainer.state.log_history if "eval_loss" in entry] == [1.0]

    with pytest.raises(ConfigError, match="transformers.TrainingArguments.*neftune_noise_alpha=5.*NEFTune"):
        Trainer(model=tiny_bert(), args=transformers.TrainingArguments(str(tmp_path / "gc"), report_to="none",
                                                                       neftune_noise_alpha=5))
    converted = Trainer(model=tiny_bert(), args=transformers.TrainingArguments(
        str(tmp_path / "gc"), report_to="none", gradient_checkpointing=True)).args
    assert converted.activation_checkpointing is True
    with pytest.raises(ConfigError, match="takes finch's TrainingArguments, not dict"):
        Trainer(model=tiny_bert(), args={"output_dir": "x"})


def test_the_hf_trainer_methods_scripts_call_work_and_the_missing_ones_say_so(tmp_path, toy, tokenizer):
    """run_glue.py ends with create_model_card; other scripts read the dataloaders, num_examples, prediction_step
    and TrainingArguments.get_warmup_steps. An HF method finch does not have is named as such."""
    args = quiet_args(tmp_path, eval_strategy="epoch", num_train_epochs=1, per_device_train_batch_size=8,
                      per_device_eval_batch_size=4, warmup_steps=0.25)
    eval_set = toy.select(range(10))
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=eval_set,
                      processing_class=tokenizer)
    train_loader = trainer.get_train_dataloader()
    assert trainer.num_examples(train_loader) == len(toy)
    assert sum(len(batch["labels"]) for batch in train_loader) == len(toy)
    trainer.train()
    assert args.get_warmup_steps(trainer.state.max_steps) == math.ceil(0.25 * trainer.state.max_steps)

    eval_loader = trainer.get_eval_dataloader()
    assert trainer.num_examples(eval_loader) == 10 and sum(len(b["labels"]) for b in eval_loader) == 10
    losses, items = [], 0
    trainer.model.eval()  # as HF's evaluation loop does before its prediction_step calls
    for batch in eval_loader:
        loss, logits, labels = trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
        assert logits.shape == (len(labels), 2) and torch.equal(labels, batch["labels"])
        losses.append(loss.item() * len(labels))
        items += len(labels)
    assert sum(losses) / items == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-5)
    batch = next(iter(eval_loader))
    assert trainer.prediction_step(trainer.model, batch, prediction_loss_only=True)[1:] == (None, None)
    assert sum(len(b["labels"]) for b in trainer.get_test_dataloader(toy.select(range(3)))) == 3

    trainer.create_model_card(model_name="tiny-sentiment", language="en", dataset_args="default")
    card = (tmp_path / "run" / "README.md").read_text()
    assert "# tiny-sentiment" in card and "## Evaluation results" in card and "loss" in card

    with pytest.raises(AttributeError, match="transformers.Trainer.create_accelerator_and_postprocess is not part"):
        trainer.create_accelerator_and_postprocess()
    with pytest.raises(AttributeError, match="transformers.TrainingArguments.set_training is not part"):
        args.set_training(learning_rate=1e-4)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'$"):
        assert trainer.no_such_thing is None


def test_an_empty_train_dataset_is_named_as_empty(tmp_path, toy, tokenizer):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, dataloader_drop_last=False),
                      train_dataset=toy.select([]), processing_class=tokenizer)
    with pytest.raises(DataError, match="train_dataset has no rows"):
        trainer.train()


def test_the_logged_learning_rate_is_the_one_each_step_used_as_hf_logs_it(tmp_path, toy, tokenizer):
    """Linear decay from 1e-3 over 4 steps: the steps use 1e-3, 7.5e-4, 5e-4, 2.5e-4 (HF 5.24 logs these; the rate
    after the schedule's step would be shifted by one and end at 0)."""
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=4, logging_steps=1, learning_rate=1e-3),
                      train_dataset=toy, processing_class=tokenizer)
    trainer.train()
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_a_broken_compute_metrics_is_explained_by_where_it_failed(tmp_path, toy, tokenizer):
    def broken(prediction):
        raise KeyError("f1")

    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2),
                      train_dataset=toy, eval_dataset=toy.select(range(10)), processing_class=tokenizer,
                      compute_metrics=broken)
    with pytest.raises(ConfigError, match="compute_metrics=.*broken raised KeyError") as error:
        trainer.evaluate()
    assert "before training" not in str(error.value) and "label_ids shape (10,)" in str(error.value)
    with pytest.raises(ConfigError, match="finch tries it on 8 evaluation rows before training"):
        trainer.train()
