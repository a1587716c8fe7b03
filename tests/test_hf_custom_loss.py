"""HF tutorial code with its own loss: compute_loss overrides that pop or get the labels, columns kept for them,
class weights and label smoothing, and a model that returns no loss.
"""

import numpy as np
import pytest
import torch
from conftest import quiet_args, sentiment_dataset, tiny_bert, weights_of

from finch import Trainer
from finch.data.metrics import classification_metrics
from finch.errors import ConfigError, ModelError

CLASS_WEIGHTS = [1.0, 3.0]


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


def test_columns_named_in_label_names_are_kept_for_a_custom_loss(tmp_path, toy, tokenizer):
    data = toy.rename_column("label", "target")
    target_loss = popping_loss("target")  # a label column the model does not take, named in label_names
    trainer = target_loss(model=tiny_bert(), args=quiet_args(tmp_path, label_names=["target"], max_steps=2),
                          train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2
    output = trainer.predict(data)
    assert output.label_ids.tolist() == data["target"]


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
