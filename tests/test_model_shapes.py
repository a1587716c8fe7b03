"""Every model shape HF's Trainer takes, with only the import changed: causal LMs (evaluation, preprocess_logits_for_
metrics, the loss over the step's target tokens), multiple choice, encoder-decoder generation (`Seq2SeqTrainer`), and
activation checkpointing. Tiny models from configs, synthetic data; HF's Trainer side by side where numbers compare.
"""

import numpy as np
import pytest
import torch
import transformers
from conftest import quiet_args
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForMultipleChoice,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    DataCollatorForMultipleChoice,
    DataCollatorForSeq2Seq,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from finch import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer
from finch.data import batching
from finch.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (folder / "vocab.txt").write_text("\n".join(words))
    return BertTokenizerFast(str(folder / "vocab.txt"))


def gpt2(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=2,
                        eos_token_id=3, pad_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(config)


def token_rows(count, low=5, high=30, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_dict({"input_ids": [rng.integers(5, 100, rng.integers(low, high)).tolist()
                                            for _ in range(count)]})


def test_causal_lm_evaluates_as_hf_does_and_preprocess_gets_the_logits(tmp_path, tokenizer):
    """DynamicCache crashed the evaluation; preprocess_logits_for_metrics got (logits, cache)."""
    data, seen = token_rows(24), []

    def argmax(logits, labels):
        seen.append(type(logits))
        return logits.argmax(-1)

    def accuracy(prediction):
        predictions, labels = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]
        return {"accuracy": float((predictions == labels)[labels != -100].mean())}

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    results = {}
    for name, trainer_class, args_class in (("finch", Trainer, None),
                                            ("hf", transformers.Trainer, transformers.TrainingArguments)):
        args = {"output_dir": str(tmp_path / name), "per_device_eval_batch_size": 5, "report_to": [], "use_cpu": True}
        trainer = trainer_class(model=gpt2(), args=args_class(**args) if args_class else quiet_args(tmp_path, **args),
                                data_collator=collator, eval_dataset=data, compute_metrics=accuracy,
                                preprocess_logits_for_metrics=argmax)
        results[name] = trainer.evaluate()
    assert set(seen) == {torch.Tensor}
    assert results["finch"]["eval_accuracy"] == pytest.approx(results["hf"]["eval_accuracy"])
    # the loss: the mean over every target token (whatever the batches). HF 5.25's is lower: it misses that GPT-2's
    # loss shifts labels (its loss_type is None) and divides each batch's sum by one token per row too many
    batch = collator([data[i] for i in range(len(data))])
    with torch.no_grad():
        logits = gpt2()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 100), batch["labels"][:, 1:].reshape(-1))
    assert results["finch"]["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)
    # predictions padded with -100 across batches of different lengths, as HF's
    output = Trainer(model=gpt2(), args=quiet_args(tmp_path, per_device_eval_batch_size=5),
                     data_collator=collator).predict(data)
    assert output.predictions.shape[:2] == output.label_ids.shape == (24, max(map(len, data["input_ids"])))
    assert output.predictions.shape[2] == 100 and (output.label_ids == -100).any()


def test_evaluate_without_compute_metrics_gathers_no_logits(tmp_path, tokenizer, monkeypatch):
    """HF's rule: without compute_metrics evaluate() keeps the loss only (a causal LM's logits are vocabulary-sized);
    predict() and prediction_loss_only say otherwise."""
    from finch.training import readback

    gathered = []
    real = readback.to_numpy
    monkeypatch.setattr(readback, "to_numpy", lambda value: gathered.append(value) or real(value))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=gpt2(), args=quiet_args(tmp_path), data_collator=collator)
    metrics = trainer.evaluate(token_rows(10))
    assert "eval_loss" in metrics
    assert not any(getattr(value, "ndim", 0) == 3 for value in gathered)
    assert trainer.predict(token_rows(10)).predictions.ndim == 3
    loss_only = Trainer(model=gpt2(), args=quiet_args(tmp_path, prediction_loss_only=True), data_collator=collator)
    output = loss_only.predict(token_rows(10))
    assert output.predictions is None and output.label_ids is None and "test_loss" in output.metrics  # as HF


def test_causal_lm_loss_is_over_the_step_target_tokens(tmp_path, tokenizer):
    """Accumulation 4 x 2 gives the update 1 x 8 gives, and the logged loss is the mean over every target token of the
    step (shifted labels: a row's first token is no target), not a mean of micro-batch means."""
    data = token_rows(8, low=3, high=40, seed=3)  # very different lengths: means of means would differ
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    weights, losses = {}, {}
    for batch, accumulation in ((8, 1), (2, 4)):
        model = gpt2()
        trainer = Trainer(model=model, args=quiet_args(tmp_path / f"{batch}", per_device_train_batch_size=batch,
                                                       gradient_accumulation_steps=accumulation, max_steps=2,
                                                       logging_steps=1, train_sampling_strategy="sequential",
                                                       optim="sgd", learning_rate=0.5),  # linear in the gradient
                          data_collator=collator, train_dataset=data)
        trainer.train()
        weights[batch] = {name: p.detach().clone() for name, p in model.named_parameters()}
        losses[batch] = trainer.state.log_history[0]["loss"]
    for name, value in weights[8].items():
        torch.testing.assert_close(weights[2][name], value, rtol=1e-5, atol=1e-6, msg=name)
    model = gpt2()  # the first step's loss, by hand: every target token of the 8 rows, one mean
    batch = collator([data[i] for i in range(8)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 100), batch["labels"][:, 1:].reshape(-1),
                                                 ignore_index=-100)
    assert losses[2] == pytest.approx(expected.item(), rel=1e-5) == losses[8]


def test_items_of_a_causal_lm_are_counted_on_shifted_labels():
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    assert batching.count_items({"labels": labels}, ["labels"]) == 5
    assert batching.count_items({"labels": labels}, ["labels"], shift=True) == 3
    shifted = torch.tensor([[6, 7, -100, -100]])
    assert batching.count_items({"labels": labels, "shift_labels": shifted}, ["labels"], shift=True) == 2


def multiple_choice_rows(tokenizer, count, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        stem = " ".join(f"w{i}" for i in rng.integers(0, 95, 5))
        endings = [" ".join(f"w{i}" for i in rng.integers(0, 95, rng.integers(2, 12))) for _ in range(4)]
        rows.append({**tokenizer([stem] * 4, endings, truncation=True), "label": int(rng.integers(0, 4))})
    return Dataset.from_list(rows)


def test_multiple_choice_trains_and_predicts_one_score_per_choice(tmp_path, tokenizer):
    """ArrowNotImplementedError on the nested input ids; lengths now come from the padded shape."""
    data = multiple_choice_rows(tokenizer, 20)
    torch.manual_seed(0)
    model = BertForMultipleChoice(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=37))
    trainer = Trainer(model=model, args=quiet_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=4),
                      train_dataset=data, eval_dataset=data, data_collator=DataCollatorForMultipleChoice(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    trainer.train()
    output = trainer.predict(data)
    assert output.predictions.shape == (20, 4) and output.label_ids.tolist() == data["label"]
    assert 0 <= output.metrics["test_accuracy"] <= 1
    lengths = batching.example_lengths(data)
    assert lengths == [4 * max(map(len, row)) for row in data["input_ids"]]


def t5(seed=0):
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(vocab_size=100, d_model=32, d_ff=37, num_layers=2, num_heads=2, d_kv=16,
                                               decoder_start_token_id=0, pad_token_id=0, eos_token_id=3))


def seq2seq_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_dict({"input_ids": [rng.integers(5, 100, rng.integers(5, 20)).tolist() for _ in range(count)],
                              "labels": [rng.integers(5, 100, rng.integers(3, 9)).tolist() for _ in range(count)]})


def test_seq2seq_trainer_generates_what_hfs_generates(tmp_path, tokenizer):
    data, given = seq2seq_rows(12), []

    def metrics(prediction):
        given.append(prediction)
        return {"length": float(prediction.predictions.shape[1])}

    outputs = {}
    for name, trainer_class, args_class in (("finch", Seq2SeqTrainer, Seq2SeqTrainingArguments),
                                            ("hf", transformers.Seq2SeqTrainer, transformers.Seq2SeqTrainingArguments)):
        args = args_class(output_dir=str(tmp_path / name), per_device_eval_batch_size=5, report_to=[], use_cpu=True,
                          predict_with_generate=True, generation_max_length=7, generation_num_beams=2)
        model = t5()
        trainer = trainer_class(model=model, args=args, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                                compute_metrics=metrics, processing_class=tokenizer)
        outputs[name] = trainer.predict(data)
    finch_output, hf_output = outputs["finch"], outputs["hf"]
    np.testing.assert_array_equal(finch_output.predictions, hf_output.predictions)
    # labels: -100 where the collator padded a batch, the pad token beyond (as HF); which is which depends on the
    # batches (finch groups them by length), so compared with both read as padding, as compute_metrics reads them
    np.testing.assert_array_equal(*(np.where(output.label_ids == -100, 0, output.label_ids)
                                    for output in (finch_output, hf_output)))
    assert given[0].predictions.shape == given[1].predictions.shape


def test_seq2seq_trainer_trains_and_evaluates_with_generation(tmp_path, tokenizer):
    data = seq2seq_rows(16)
    model = t5()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), predict_with_generate=True,
                                    generation_max_length=6, num_train_epochs=1, per_device_train_batch_size=4,
                                    eval_strategy="epoch", save_strategy="no", disable_tqdm=True, bf16=False)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
                             compute_metrics=lambda p: {"width": float(p.predictions.shape[1])})
    trainer.train()
    assert trainer.state.log_history[-2]["eval_width"] == 20  # padded to the generation config's max_length, as HF
    assert trainer.evaluate(max_new_tokens=30)["eval_width"] == 31


def test_activation_checkpointing_trains_the_same_weights(tmp_path, tokenizer):
    """activation_checkpointing (and HF's older gradient_checkpointing) recomputes activations: same update."""
    data = token_rows(8)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    weights = {}
    for checkpointing in (False, True):
        model = gpt2()
        with pytest.warns(FutureWarning) if checkpointing else _nothing():
            args = quiet_args(tmp_path / str(checkpointing), max_steps=2, per_device_train_batch_size=4,
                              **({"gradient_checkpointing": True} if checkpointing else {}))
        Trainer(model=model, args=args, data_collator=collator, train_dataset=data).train()
        assert model.is_gradient_checkpointing == checkpointing
        weights[checkpointing] = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, msg=name)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_step_without_any_target_token_trains_on_and_evaluation_says_nan(tmp_path, tokenizer):
    """Rows whose labels are all -100 (a masked-LM batch in which nothing was masked): HF steps on with a zero loss;
    finch divided by zero. An evaluation without any target token has a NaN loss, as HF's."""
    data = token_rows(8).map(lambda row, i: {"labels": [-100] * len(row["input_ids"]) if i % 2 else row["input_ids"]},
                             with_indices=True)
    collator = DataCollatorForSeq2Seq(tokenizer)  # pads the labels with -100
    trainer = Trainer(model=gpt2(), args=quiet_args(tmp_path, per_device_train_batch_size=1, logging_steps=1,
                                                    train_sampling_strategy="sequential"),
                      data_collator=collator, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 24 and losses[1::2] == [0.0] * 12 and all(loss > 0 for loss in losses[::2])
    nothing = data.filter(lambda row, i: i % 2 == 1, with_indices=True)
    assert np.isnan(trainer.evaluate(nothing)["eval_loss"])


def test_compute_metrics_that_needs_the_whole_evaluation_set_passes_the_check_before_training(tmp_path, tokenizer):
    """finch tries compute_metrics on 8 rows before training; a function that reads the whole evaluation set itself
    (HF runs it) is then tried on all of it instead of being refused."""
    data = token_rows(12)

    def count_all(prediction):
        assert len(prediction.predictions) == len(data), "needs the whole set"
        return {"rows": len(data)}

    trainer = Trainer(model=gpt2(), args=quiet_args(tmp_path, max_steps=1),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), train_dataset=data,
                      eval_dataset=data, compute_metrics=count_all)
    trainer.train()
    assert trainer.evaluate()["eval_rows"] == 12

    def broken(prediction):
        raise KeyError("accuracy")

    trainer = Trainer(model=gpt2(), args=quiet_args(tmp_path / "b", max_steps=1),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), train_dataset=data,
                      eval_dataset=data, compute_metrics=broken)
    with pytest.raises(ConfigError, match="compute_metrics=.*broken raised KeyError"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_seq2seq_labels_are_as_wide_as_the_generation_under_finchs_rounding(tmp_path, tokenizer):
    """bf16 on the CPU pads batches to a multiple of 8; the labels given to compute_metrics stay as wide as the
    generated ids (the generation config's max_length), as HF gives them."""
    from transformers import GenerationConfig

    data = seq2seq_rows(8)
    model = t5()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True, bf16=True, use_cpu=True,
                                    generation_config=GenerationConfig(max_length=12, decoder_start_token_id=0,
                                                                       pad_token_id=0, eos_token_id=3),
                                    per_device_eval_batch_size=4, disable_tqdm=True)
    output = Seq2SeqTrainer(model=model, args=args, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                            processing_class=tokenizer).predict(data)
    assert output.predictions.shape == output.label_ids.shape == (8, 12)
