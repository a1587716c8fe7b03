"""Shape buckets: a few padded lengths chosen from the data, padding under the mask, the same training."""

import numpy as np
import pytest
import torch
from conftest import quiet_args, sentiment_dataset, tiny_bert
from transformers import DataCollatorWithPadding

from finch import Trainer
from finch.data.buckets import BucketPadding, choose_buckets, padding_share


def test_buckets_are_few_cover_the_longest_and_keep_padding_small():
    lengths = np.clip(np.random.default_rng(0).normal(50, 20, 3000).astype(int), 5, 128)
    chosen = choose_buckets(lengths, multiple=8)
    assert len(chosen) <= 8 and chosen[-1] == -(-lengths.max() // 8) * 8 and all(b % 8 == 0 for b in chosen)
    assert padding_share(lengths, chosen) < 0.13 < padding_share(lengths, chosen[-1:])
    assert choose_buckets([10, 10, 11], multiple=8) == [16]  # one bucket is enough: padding already small
    assert choose_buckets([], multiple=8) == []


def test_bucket_padding_pads_every_sequence_tensor_with_its_own_value(tokenizer):
    collator = BucketPadding(DataCollatorWithPadding(tokenizer), [8, 16], pad_token_id=tokenizer.pad_token_id)
    features = [dict(tokenizer("a short one")), dict(tokenizer("a b c d e f g h i j"))]
    batch = collator([{**f, "labels": 1} for f in features])
    length = len(tokenizer("a b c d e f g h i j")["input_ids"])
    assert batch["input_ids"].shape[-1] == 16 > length
    assert (batch["input_ids"][:, length:] == tokenizer.pad_token_id).all()
    assert (batch["attention_mask"][:, length:] == 0).all() and batch["labels"].tolist() == [1, 1]
    token_labels = collator([{**f, "labels": [5] * len(f["input_ids"])} for f in features[1:]])
    assert (token_labels["labels"][:, length:] == -100).all() if "labels" in token_labels else True
    left = BucketPadding(lambda rows: {"input_ids": torch.ones(1, 3, dtype=torch.long)}, [8], 0, "left")
    assert left([{}])["input_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]


def test_training_in_buckets_learns_what_exact_lengths_learn(tmp_path, tokenizer):
    data = sentiment_dataset(tokenizer, rows=40)
    runs = {}
    for buckets in (False, True):
        trainer = Trainer(model=tiny_bert(dropout=0.0), args=quiet_args(tmp_path / str(buckets), shape_buckets=buckets,
                                                                       num_train_epochs=2, logging_steps=1),
                          train_dataset=data, eval_dataset=data, processing_class=tokenizer)
        trainer.train()
        loader = trainer.get_train_dataloader()
        shapes = {batch["input_ids"].shape[-1] for batch in loader}
        runs[buckets] = (trainer.state.log_history, {k: v.clone() for k, v in trainer.model.state_dict().items()},
                         trainer.evaluate()["eval_loss"], shapes)
    exact, bucketed = runs[False], runs[True]
    assert bucketed[3] <= set(trainer.data_collator.buckets) and len(bucketed[3]) < len(exact[3])
    losses = [[e["loss"] for e in run[0] if "loss" in e] for run in (exact, bucketed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for key, value in exact[1].items():
        torch.testing.assert_close(bucketed[1][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert bucketed[2] == pytest.approx(exact[2], rel=1e-5)


def test_resume_in_buckets_is_exact(tmp_path, tokenizer):
    from finch import TrainerCallback

    data = sentiment_dataset(tokenizer, rows=40)

    def run(folder, callbacks=(), resume=None):
        trainer = Trainer(model=tiny_bert(dropout=0.1), args=quiet_args(folder, shape_buckets=True, num_train_epochs=2,
                                                                        save_strategy="epoch"),
                          train_dataset=data, processing_class=tokenizer, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model.state_dict()

    class StopAfterOneEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    straight = run(tmp_path / "straight")
    run(tmp_path / "resumed", [StopAfterOneEpoch()])
    resumed = run(tmp_path / "resumed", resume=True)
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
