"""Data and model fingerprints: content, not size or object identity; computable before the model is loaded."""

import time

import datasets
import numpy as np
import torch
from conftest import tiny_bert
from transformers import AutoConfig, AutoModelForSequenceClassification

from finch.runs.fingerprint import config_fingerprint, data_fingerprint, model_fingerprint


def test_data_fingerprint_follows_the_examples_not_the_size(toy):
    same = data_fingerprint(toy)
    assert data_fingerprint(toy.select(range(len(toy)))) == same  # a new Dataset object with the same rows
    assert data_fingerprint(toy.rename_column("label", "labels")) == same  # what prepare_dataset does
    assert data_fingerprint(toy.remove_columns(["text"])) == same  # only token ids and labels count
    flipped = toy.map(lambda row, index: {"label": 1 - row["label"] if index == 7 else row["label"]},
                      with_indices=True)
    assert data_fingerprint(flipped) != same, "one label changed, same size"
    assert data_fingerprint(toy.select(list(reversed(range(len(toy)))))) != same, "same rows, another order"
    rows = [{"input_ids": torch.tensor(ids), "labels": label} for ids, label in zip(toy["input_ids"], toy["label"])]
    assert data_fingerprint(rows) == data_fingerprint(rows[:])
    assert data_fingerprint(rows[:-1]) != data_fingerprint(rows)


def test_data_fingerprint_takes_milliseconds_on_an_mrpc_sized_set():
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 30000, rng.integers(20, 100)).tolist() for _ in range(3700)]  # MRPC train: 3.7k pairs
    data = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                                       "label": rng.integers(0, 2, len(ids)).tolist()})
    started = time.perf_counter()
    data_fingerprint(data)
    assert time.perf_counter() - started < 0.5


def test_model_fingerprint_before_loading_equals_the_loaded_models(tiny_model_dir, toy, tokenizer):
    labels = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    before = config_fingerprint(AutoConfig.from_pretrained(tiny_model_dir, **labels),
                                AutoModelForSequenceClassification)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, **labels)
    assert model_fingerprint(model) == before
    model(**tokenizer(["good"], return_tensors="pt"), labels=torch.tensor([1]))  # sets config.problem_type
    model.save_pretrained(tiny_model_dir + "-copy")  # sets config.architectures
    assert model_fingerprint(model) == before
    assert model_fingerprint(tiny_bert()) == model_fingerprint(tiny_bert(seed=5)), "weights are not the architecture"
    assert model_fingerprint(tiny_bert(dropout=0.2)) != model_fingerprint(tiny_bert())
    assert model_fingerprint(tiny_bert(num_labels=3)) != model_fingerprint(tiny_bert())
    assert model_fingerprint(torch.nn.Linear(2, 3)) != model_fingerprint(torch.nn.Linear(3, 2))
