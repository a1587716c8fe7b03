"""Batch order: training batches a pure function of (seed, epoch); evaluation batches by token budget."""

import numpy as np

from finch.data.batching import epoch_batches, eval_batches


def test_eval_batches_cover_every_example_once_within_the_first_batchs_token_budget():
    lengths = np.random.default_rng(0).integers(5, 120, size=1000).tolist()
    batches = eval_batches(len(lengths), 8, lengths)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    budget = 8 * max(lengths)
    assert len(batches[0]) == 8 and max(lengths[i] for i in batches[0]) == max(lengths)
    for batch in batches:
        assert len(batch) <= 64 and len(batch) * max(lengths[i] for i in batch) <= budget
    assert len(batches) < 1000 / 8  # short examples share batches: fewer forward calls than fixed batches of 8


def test_eval_batches_without_lengths_are_fixed_size_in_order():
    assert eval_batches(5, 2, None) == [[0, 1], [2, 3], [4]]


def test_training_batches_depend_only_on_seed_and_epoch():
    lengths = np.random.default_rng(1).integers(5, 120, size=403).tolist()
    first = epoch_batches(403, 8, seed=3, epoch=2, strategy="group_by_length", lengths=lengths)
    assert first == epoch_batches(403, 8, seed=3, epoch=2, strategy="group_by_length", lengths=lengths)
    assert first != epoch_batches(403, 8, seed=3, epoch=3, strategy="group_by_length", lengths=lengths)
    assert sorted(i for b in first for i in b) == list(range(403))
    assert max(lengths[i] for i in first[0]) == max(lengths)  # the longest batch first: an OOM shows at once


def test_a_users_collator_is_rounded_up_only_when_it_pads_to_each_batchs_longest(tokenizer):
    """finch rounds padding to a multiple (8 on CUDA and under bf16) through a copy of the user's collator; a
    collator asked for one exact length (`padding="max_length"`) or for no padding keeps what it was asked."""
    from transformers import DataCollatorWithPadding

    from finch.data.batching import with_padding_multiple

    rows = [dict(tokenizer("good movie")), dict(tokenizer("a rather long and winding review of a film"))]
    longest = with_padding_multiple(DataCollatorWithPadding(tokenizer), 16)
    assert longest(rows)["input_ids"].shape[1] == 16
    exact = with_padding_multiple(DataCollatorWithPadding(tokenizer, padding="max_length", max_length=20), 16)
    assert exact(rows)["input_ids"].shape[1] == 20
    chosen = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=4)
    assert with_padding_multiple(chosen, 16) is chosen
