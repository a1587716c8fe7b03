"""HuggingFace's hyperparameter-search tutorial (transformers' docs/source/en/hpo_train.md, and the text-classification
notebook's `hyperparameter_search(n_trials=..., direction="maximize")` then `setattr(trainer.args, ...)`), written as
they show it with only the import changed to finch, on a tiny saved BERT and tiny data."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import NEGATIVE, POSITIVE
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from transformers.trainer_utils import BestRun

from finch import Trainer, TrainingArguments, load_metric

pytestmark = pytest.mark.usefixtures("one_thread")


def raw_datasets(rows: int = 96) -> datasets.DatasetDict:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(POSITIVE + NEGATIVE, rng.integers(2, 12))) for _ in range(rows)]
    labels = [int(sum(word in POSITIVE for word in text.split()) * 2 > len(text.split())) for text in texts]
    dataset = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return dataset.train_test_split(test_size=0.25, seed=0)


def logged_evaluations(run_folder: str) -> list[dict]:
    lines = (Path(run_folder) / "log.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "eval_accuracy" in entry]


def test_the_docs_search_runs_with_the_import_changed(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_name_or_path = tiny_model_dir
    # ---- the tutorial's code, as the docs show it -------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)

    def tokenize_function(examples):
        return tokenizer(examples["text"], truncation=True)

    tokenized_datasets = raw_datasets().map(tokenize_function, batched=True)
    small_train_dataset = tokenized_datasets["train"].shuffle(seed=42)
    small_eval_dataset = tokenized_datasets["test"]
    data_collator = DataCollatorWithPadding(tokenizer=tokenizer)
    metric = load_metric("accuracy")  # the docs' evaluate.load("accuracy"), offline

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        predictions = np.argmax(logits, axis=-1)
        return metric.compute(predictions=predictions, references=labels)

    def optuna_hp_space(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [16, 32, 64, 128]),
        }

    def model_init(trial):
        return AutoModelForSequenceClassification.from_pretrained(model_name_or_path, num_labels=2)

    def compute_objective(metrics):
        return metrics["eval_accuracy"]

    training_args = TrainingArguments(output_dir="hp-search", eval_strategy="epoch", num_train_epochs=2,
                                      report_to="none")
    trainer = Trainer(
        model=None,
        args=training_args,
        train_dataset=small_train_dataset,
        eval_dataset=small_eval_dataset,
        compute_metrics=compute_metrics,
        tokenizer=tokenizer,
        model_init=model_init,
        data_collator=data_collator,
    )
    best_trial = trainer.hyperparameter_search(
        direction="maximize",
        backend="optuna",
        hp_space=optuna_hp_space,
        n_trials=6,  # the docs say 20; 6 keeps the test short
        compute_objective=compute_objective,
    )
    # -------------------------------------------------------------------------------------------------------------
    assert isinstance(best_trial, BestRun) and best_trial._fields == ("run_id", "objective", "hyperparameters",
                                                                      "run_summary")
    assert best_trial.run_id.isdigit() and best_trial.run_summary == f"hp-search/run-{best_trial.run_id}"
    assert set(best_trial.hyperparameters) == {"learning_rate", "per_device_train_batch_size"}
    assert 1e-6 <= best_trial.hyperparameters["learning_rate"] <= 1e-4
    assert best_trial.hyperparameters["per_device_train_batch_size"] in (16, 32, 64, 128)
    # each trial's objective is its last evaluation's accuracy; the best is the greatest of them
    finals = {
        folder.name: logged_evaluations(folder)[-1]["eval_accuracy"] for folder in Path("hp-search").glob("run-*")
    }
    assert len(finals) == 6 and all(0.0 <= accuracy <= 1.0 for accuracy in finals.values())
    assert best_trial.objective == finals[f"run-{best_trial.run_id}"] == max(finals.values())
    saved = json.loads((Path(best_trial.run_summary) / "training_args.json").read_text())
    assert saved["learning_rate"] == best_trial.hyperparameters["learning_rate"]  # the trial trained with its values


@pytest.mark.slow
def test_the_notebook_search_then_training_with_the_best_values(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded_dataset = raw_datasets().map(lambda examples: tokenizer(examples["text"], truncation=True), batched=True)
    metric = load_metric("glue", "sst2")

    # ---- the notebook's code: HF's default space and objective (the sum of the metrics) ---------------------------
    def model_init():
        return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.argmax(predictions, axis=1)
        return metric.compute(predictions=predictions, references=labels)

    args = TrainingArguments("tiny-finetuned-sst2", eval_strategy="epoch", save_strategy="epoch", learning_rate=2e-5,
                             per_device_train_batch_size=16, per_device_eval_batch_size=16, num_train_epochs=5,
                             weight_decay=0.01, load_best_model_at_end=True, metric_for_best_model="accuracy")
    trainer = Trainer(model_init=model_init, args=args, train_dataset=encoded_dataset["train"],
                      eval_dataset=encoded_dataset["test"], tokenizer=tokenizer, compute_metrics=compute_metrics)
    best_run = trainer.hyperparameter_search(n_trials=2, direction="maximize")
    for n, v in best_run.hyperparameters.items():
        setattr(trainer.args, n, v)
    trainer.train()
    # -------------------------------------------------------------------------------------------------------------
    assert isinstance(best_run, BestRun)
    assert set(best_run.hyperparameters) == {"learning_rate", "num_train_epochs", "seed", "per_device_train_batch_size"}
    evaluations = logged_evaluations(best_run.run_summary)
    assert best_run.objective == evaluations[-1]["eval_accuracy"]  # HF's objective: accuracy is the only metric
    assert trainer.args.learning_rate == best_run.hyperparameters["learning_rate"]
    assert trainer.state.num_train_epochs == best_run.hyperparameters["num_train_epochs"]  # trained with the best
