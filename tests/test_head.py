"""`finch train` starts a new classification head from the class means of the data: not at zero (the encoder would get
no gradient on the first step), not at random (the label order would change the model)."""

import datasets
import pytest
import torch

from finch.cli.head import discriminant, start_new_head
from finch.data.tasks import Task
from tests.conftest import tiny_bert

NEW = {"missing_keys": ["classifier.weight", "classifier.bias"]}


def clusters(classes=3, rows=40, width=16, seed=0):
    """Features in `classes` well-separated clusters (with a large shared offset and one noisy dimension)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, width, generator=g, dtype=torch.float64) * 3 + 10
    labels = torch.arange(rows) % classes
    features = centers[labels] + torch.randn(rows, width, generator=g, dtype=torch.float64)
    features[:, 0] += torch.randn(rows, generator=g, dtype=torch.float64) * 100  # a dimension that only adds noise
    return features, torch.nn.functional.one_hot(labels, classes).double(), labels


def test_the_discriminant_head_tells_the_classes_apart_at_the_initializers_size():
    features, targets, labels = clusters()
    weight, bias = discriminant(features, targets, multilabel=False, scale=0.02)
    assert weight.pow(2).mean().sqrt().item() == pytest.approx(0.02)
    assert ((features @ weight.T + bias).argmax(1) == labels).float().mean() == 1.0
    assert weight[:, 0].abs().max() < weight[:, 1:].abs().max() / 20  # the noisy dimension is divided by its variance


def test_swapping_two_classes_swaps_their_rows_and_nothing_else():
    features, targets, _ = clusters()
    weight, bias = discriminant(features, targets, multilabel=False, scale=0.02)
    order = [2, 0, 1]
    weight2, bias2 = discriminant(features, targets[:, order], multilabel=False, scale=0.02)
    torch.testing.assert_close(weight2, weight[order])
    torch.testing.assert_close(bias2, bias[order])


def test_a_class_without_rows_gets_a_zero_row():
    features, targets, _ = clusters()
    targets = torch.cat([targets, torch.zeros(len(targets), 1, dtype=torch.float64)], 1)
    weight, bias = discriminant(features, targets, multilabel=False, scale=0.02)
    assert weight[3].abs().max() == 0 and bias[3] == 0
    assert weight[:3].abs().max() > 0


def test_multilabel_rows_point_from_all_rows_to_each_labels_rows():
    features, targets, _ = clusters(classes=2)
    both = targets.clone()
    both[::4] = 1.0  # some rows have both labels
    weight, bias = discriminant(features, both, multilabel=True, scale=0.02)
    logits = features @ weight.T + bias
    assert (logits[targets[:, 1] == 1, 1] > logits[targets[:, 1] == 1, 0]).float().mean() > 0.9


def tokenized(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, masks = [], []
    for i, label in enumerate(labels):
        length = 5 + i % 7
        # each class's rows share a few tokens, so the pretrained (here: random) encoder's features differ by class
        row = [101, 1000 + 50 * label, 1001 + 50 * label] + torch.randint(2000, 3000, (length,), generator=g).tolist()
        ids.append(row + [102])
        masks.append([1] * (length + 4))
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels})


def test_a_new_head_starts_from_the_data_and_the_encoder_learns_from_the_first_step():
    model = tiny_bert(num_labels=3)
    train = tokenized([0, 1, 2, 2, 1, 0, 1, 2] * 6)
    state = torch.random.get_rng_state()
    said = start_new_head(model, NEW, Task("multiclass", ["a", "b", "c"]), train, pad_id=0)
    assert said == "the new classification head starts from the class means of 48 training rows"
    assert torch.equal(torch.random.get_rng_state(), state)  # no draw: the rest of the run draws what it drew before
    assert model.training  # its mode is put back
    weight = model.classifier.weight.detach()
    assert weight.pow(2).mean().sqrt().item() == pytest.approx(model.config.initializer_range, rel=1e-4)
    # from the first step, the encoder's last layer gets a gradient (from a zero head it gets none)
    model.eval()
    model(input_ids=torch.tensor([ids[:6] for ids in train["input_ids"][:8]]),
          labels=torch.tensor(train["labels"][:8])).loss.backward()
    assert model.bert.pooler.dense.weight.grad.abs().max() > 0
    # and the head's first guess is already better than chance on the rows it was started from
    with torch.no_grad():
        guesses = [model(input_ids=torch.tensor([row["input_ids"]])).logits.argmax().item() for row in train]
    assert sum(g == y for g, y in zip(guesses, train["labels"], strict=True)) / len(train) > 0.6


def test_the_same_rows_with_swapped_label_ids_give_swapped_rows():
    labels = [0, 1, 1, 0, 1, 0, 0, 1] * 5
    first, second = tiny_bert(num_labels=2), tiny_bert(num_labels=2)
    task = Task("binary", ["no", "yes"])
    train = tokenized(labels)
    start_new_head(first, NEW, task, train, pad_id=0)
    start_new_head(second, NEW, task, train.map(lambda row: {"labels": 1 - row["labels"]}), pad_id=0)
    torch.testing.assert_close(second.classifier.weight[[1, 0]], first.classifier.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(second.classifier.bias[[1, 0]], first.classifier.bias, atol=1e-6, rtol=1e-5)


def test_a_loaded_head_and_a_regression_head_are_kept_as_they_are():
    model = tiny_bert(num_labels=2)
    before = model.classifier.weight.detach().clone()
    assert start_new_head(model, {"missing_keys": []}, Task("binary", ["a", "b"]), tokenized([0, 1] * 4), 0) is None
    assert torch.equal(model.classifier.weight, before)
    regression = tiny_bert(num_labels=1)
    before = regression.classifier.weight.detach().clone()
    assert start_new_head(regression, NEW, Task("regression"), tokenized([0, 1] * 4), 0) is None
    assert torch.equal(regression.classifier.weight, before)
