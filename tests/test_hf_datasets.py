"""Datasets as tutorial code passes them: a streaming dataset refused with what to pass instead, dataset mistakes
and a tokenizer of another vocabulary named before the first step.
"""

import datasets
import pytest
from conftest import quiet_args, tiny_bert

from finch import Trainer
from finch.errors import ConfigError, DataError


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


class TextRows:
    """A torch-style dataset of raw rows (no column names): what a hand-written Dataset class returns."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


@pytest.mark.parametrize("raw", [lambda d: d.select_columns(["text", "label"]),
                                 lambda d: [{"text": row["text"], "label": row["label"]} for row in d],
                                 lambda d: TextRows([{"text": row["text"], "label": row["label"]} for row in d])],
                         ids=["datasets.Dataset", "list of dicts", "torch Dataset"])
@pytest.mark.parametrize("where", ["train", "eval"])
def test_raw_text_is_refused_before_training_naming_the_set_its_columns_the_models_inputs_and_the_fix(
        tmp_path, toy, tokenizer, raw, where):
    """Before: the collator's or the model's ValueError from inside the first batch (lists and torch datasets)."""
    sets = {"train_dataset": raw(toy) if where == "train" else toy,
            "eval_dataset": raw(toy) if where == "eval" else toy}
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1, eval_strategy="steps", eval_steps=1),
                      processing_class=tokenizer, **sets)
    named = "train_dataset" if where == "train" else "the evaluation dataset"
    with pytest.raises(DataError, match=rf"{named} has no 'input_ids' column \(its columns: \['text', 'label'\]\): it "
                                        rf"is not tokenized, and BertForSequenceClassification reads input_ids.*"
                                        rf"dataset.map\(lambda batch: tokenizer\(batch\['text'\].*batched=True\)"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_data_collator_that_tokenizes_gets_the_raw_text(tmp_path, toy, tokenizer):
    """A collator of the user's own with remove_unused_columns=False may tokenize each batch: no refusal; its rows
    have the label column as HF passes it (`label`, not renamed `labels`: a KeyError before)."""
    import torch

    def tokenize(rows):
        batch = tokenizer([row["text"] for row in rows], padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([row["label"] for row in rows])  # as HF passes it: not renamed
        return batch

    raw = toy.select_columns(["text", "label"])
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=2, remove_unused_columns=False),
                      train_dataset=raw, eval_dataset=raw, data_collator=tokenize, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2 and "eval_loss" in trainer.evaluate()


@pytest.mark.parametrize("given, message", [
    (lambda d: datasets.DatasetDict(train=d, test=d),
     (r"train_dataset is a DatasetDict of 2 split\(s\) \['train', 'test'\], not one dataset: pass one split, e.g. "
     r"train_dataset=dataset\['train'\]")),
    (lambda d: d.to_pandas(), (r"train_dataset is a pandas DataFrame: make it a dataset first, "
                              r"datasets.Dataset.from_pandas"))])
def test_a_dataset_dict_or_a_data_frame_as_train_dataset_is_refused_with_the_fix(tmp_path, toy, tokenizer, given,
                                                                                 message):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1), train_dataset=given(toy),
                      processing_class=tokenizer)
    with pytest.raises(ConfigError, match=message):
        trainer.train()
