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
