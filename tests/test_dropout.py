"""finch's CPU dropout: the right distribution, seeded, exact gradients, SDPA's attention, swapped in and out."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from torch import nn

from finch import Trainer, TrainerCallback, TrainingArguments
from finch.dropout import FastDropout, dropout, fast_dropout, keep_mask, math_attention


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_is_one_minus_p_in_every_slice_of_the_draw(p):
    torch.manual_seed(0)
    kept = keep_mask(torch.Size([1_000_000]), p, torch.device("cpu"))
    # each 64-bit draw feeds 4 neighbouring elements; a biased slice (e.g. a sign bit that is never set) shows here
    rates = kept.view(-1, 4).float().mean(dim=0)
    assert torch.all((rates - (1 - p)).abs() < 0.004), rates  # 250,000 samples each: 0.004 is 4 to 7 sigma


def test_kept_values_are_scaled_and_gradients_follow_the_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 50, 32, requires_grad=True)
    y = dropout(x, 0.1)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.9)


def test_same_seed_same_mask_next_call_new_mask():
    shape = torch.Size([8, 16, 16])
    torch.manual_seed(3)
    first, second = keep_mask(shape, 0.3, torch.device("cpu")), keep_mask(shape, 0.3, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(keep_mask(shape, 0.3, torch.device("cpu")), first)
    assert not torch.equal(first, second)


def attention_inputs(mask_kind: str):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 7, 8, requires_grad=True) for _ in range(3))
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])[:, None, None, :]  # second row padded
    mask = valid if mask_kind == "bool" else torch.zeros(valid.shape).masked_fill(~valid, torch.finfo(torch.float).min)
    return q, k, v, mask


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_math_attention_without_dropout_equals_sdpa_values_and_gradients(mask_kind):
    q, k, v, mask = attention_inputs(mask_kind)
    ours = math_attention(q, k, v, mask, 8 ** -0.5, 0.0)
    (grad_q, grad_k, grad_v) = torch.autograd.grad(ours.square().sum(), (q, k, v))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected = torch.autograd.grad(reference.square().sum(), (q, k, v))
    assert torch.allclose(ours, reference, atol=1e-5)
    for got, want in zip((grad_q, grad_k, grad_v), expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_math_attention_drops_attention_probabilities():
    q, k, v, mask = attention_inputs("bool")
    torch.manual_seed(5)
    ours = math_attention(q, k, v, mask, 8 ** -0.5, 0.5)
    probs = (q @ k.transpose(-2, -1) * 8 ** -0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.manual_seed(5)
    expected = (probs * keep_mask(probs.shape, 0.5, probs.device) / 0.5) @ v
    assert torch.allclose(ours, expected, atol=1e-5)


def test_swaps_dropout_and_attention_then_restores_them():
    model = tiny_bert()
    count = sum(type(m) is nn.Dropout for m in model.modules())
    batch = {"input_ids": torch.randint(1000, 2000, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    batch["attention_mask"][1, 5:] = 0
    model.eval()
    before = model(**batch).logits
    with fast_dropout(model) as swapped:
        assert swapped == count and count > 0
        assert all(type(m) is not nn.Dropout for m in model.modules())
        assert model.config._attn_implementation == "finch_sdpa"
        assert torch.equal(model(**batch).logits, before)  # evaluation never reaches the new code
        model.train()
        torch.manual_seed(0)
        first = model(**batch).logits
        torch.manual_seed(0)
        assert torch.equal(model(**batch).logits, first)  # seeded
        assert not torch.equal(model(**batch).logits, first)  # and dropping out
    assert sum(type(m) is nn.Dropout for m in model.modules()) == count
    assert model.config._attn_implementation == "sdpa"
    with fast_dropout(model, enabled=False) as swapped:
        assert swapped == 0 and model.config._attn_implementation == "sdpa"


def test_training_attention_masks_padding_like_sdpa(monkeypatch):
    """With dropout ~0 the training path must give what evaluation (torch's SDPA) gives, padded rows included."""
    import finch.dropout

    calls = []
    monkeypatch.setattr(finch.dropout, "math_attention",
                        lambda *a: calls.append(1) or math_attention(*a))
    model = tiny_bert()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 1e-9 if module.p and "attention.self" in _name_of(model, module) else 0.0
    batch = {"input_ids": torch.randint(1000, 2000, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    batch["attention_mask"][1, 4:] = 0
    expected = model.eval()(**batch).logits
    with fast_dropout(model):
        got = model.train()(**batch).logits
    assert len(calls) == 2  # both layers went through finch's path
    assert torch.allclose(got, expected, atol=1e-5)


def _name_of(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def test_restores_the_model_when_training_raises():
    model = tiny_bert()
    with pytest.raises(RuntimeError), fast_dropout(model):
        raise RuntimeError("boom")
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


class SeeDropout(TrainerCallback):
    """Records the dropout class and attention function the model uses at each step."""

    def __init__(self):
        self.seen = set()

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.seen.add((type(model.bert.encoder.layer[0].output.dropout).__name__, model.config._attn_implementation))


@pytest.mark.parametrize("setting, expected", [(None, ("FastDropout", "finch_sdpa")), (False, ("Dropout", "sdpa"))])
def test_trainer_uses_fast_dropout_on_the_cpu_unless_turned_off(tmp_path, toy, tokenizer, setting, expected, caplog):
    seen = SeeDropout()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, bf16=False,
                             save_strategy="no", disable_tqdm=True, fast_dropout=setting)
    model = tiny_bert()
    with caplog.at_level("INFO", logger="finch"):
        Trainer(model=model, args=args, train_dataset=toy, processing_class=tokenizer, callbacks=[seen]).train()
    assert seen.seen == {expected}
    assert f"dropout {'fast (CPU)' if setting is None else 'torch'}" in caplog.text
    assert type(model.bert.encoder.layer[0].output.dropout) is nn.Dropout
    assert model.config._attn_implementation == "sdpa"
