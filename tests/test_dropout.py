"""finch's CPU dropout: the right distribution, seeded, exact gradients, SDPA's attention, swapped in and out."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from finch import Trainer, TrainerCallback, TrainingArguments
from finch.training.dropout import FastDropout, dropout, fast_dropout, keep_mask, math_attention


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
    import finch.training.dropout

    calls = []
    monkeypatch.setattr(finch.training.dropout, "math_attention",
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


def record_training_forwards(model: nn.Module) -> set:
    """(dropout class, attention implementation) seen by the first dropout module in each training forward."""
    seen = set()
    module = next(m for m in model.modules() if type(m) is nn.Dropout)
    module.register_forward_pre_hook(
        lambda module, inputs: seen.add((type(module).__name__, model.config._attn_implementation))
        if module.training else None)
    return seen


@pytest.mark.parametrize("setting, expected", [(None, ("FastDropout", "finch_sdpa")), (False, ("Dropout", "sdpa"))])
def test_trainer_uses_fast_dropout_on_the_cpu_unless_turned_off(tmp_path, toy, tokenizer, setting, expected, caplog):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, bf16=False,
                             save_strategy="no", disable_tqdm=True, fast_dropout=setting)
    model = tiny_bert()
    seen = record_training_forwards(model)
    with caplog.at_level("INFO", logger="finch"):
        Trainer(model=model, args=args, train_dataset=toy, processing_class=tokenizer).train()
    assert seen == {expected}
    assert f"dropout {'fast (CPU)' if setting is None else 'torch'}" in caplog.text
    assert type(model.bert.encoder.layer[0].output.dropout) is nn.Dropout
    assert model.config._attn_implementation == "sdpa"


TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
ENCODERS = {
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**TINY)),
    "distilbert": lambda: DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)),
    "deberta-v2": lambda: DebertaV2ForSequenceClassification(DebertaV2Config(**TINY)),  # its own attention
    "electra": lambda: ElectraForSequenceClassification(ElectraConfig(embedding_size=16, **TINY)),
}


class SeesTheModel(TrainerCallback):
    """Records the dropout classes and attention implementation callbacks see, event by event."""

    def __init__(self):
        self.seen = set()

    def _record(self, event, model):
        classes = frozenset(type(m).__name__ for m in model.modules() if isinstance(m, nn.Dropout))
        self.seen.add((event, classes, model.config._attn_implementation))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._record("on_step_end", model)

    def on_log(self, args, state, control, model=None, **kwargs):
        self._record("on_log", model)

    def on_save(self, args, state, control, model=None, **kwargs):
        self._record("on_save", model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ENCODERS)
def test_other_encoders_train_with_it_and_saving_and_callbacks_see_the_model_as_built(
        tmp_path, toy, tokenizer, name, caplog, monkeypatch):
    import finch.training.dropout

    attention_calls = []
    monkeypatch.setattr(finch.training.dropout, "math_attention",
                        lambda *a: attention_calls.append(1) or math_attention(*a))
    torch.manual_seed(0)
    model = ENCODERS[name]()
    original = model.config._attn_implementation
    forwards, watcher = record_training_forwards(model), SeesTheModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                             bf16=False, learning_rate=1e-3, save_strategy="steps", save_steps=3, logging_steps=1,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=toy, processing_class=tokenizer, callbacks=[watcher])
    with caplog.at_level("INFO", logger="finch"):
        result = trainer.train()
    trainer.save_model(str(tmp_path / "model"))

    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    swapped_attention = original == "sdpa"
    assert forwards == {("FastDropout", "finch_sdpa" if swapped_attention else original)}
    assert bool(attention_calls) == swapped_attention  # finch's attention ran, or the header says it did not:
    assert "dropout fast (CPU)" in caplog.text
    assert ("keeps torch's dropout" in caplog.text) == (not swapped_attention)
    # outside forward/backward the model is as built: callbacks, checkpoints and the saved model see it so
    assert {(classes, attention) for _, classes, attention in watcher.seen} == {(frozenset({"Dropout"}), original)}
    assert {event for event, _, _ in watcher.seen} == {"on_step_end", "on_log", "on_save"}
    for folder in (tmp_path / "run" / "checkpoint-3", tmp_path / "model"):
        config = (folder / "config.json").read_text()
        assert "finch" not in config
        reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
        assert reloaded.config._attn_implementation == original
        assert all(type(m) is nn.Dropout for m in reloaded.modules() if isinstance(m, nn.Dropout))
