"""LoRA through peft with finch's guarantees: checkpoints hold the adapter (never the frozen base), exact resume,
the best model loaded back, save_model's adapter folder and merged model reloading to the same scores."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import quiet_args
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, TrainerCallback

from finch import Trainer
from finch.errors import ConfigError, ResumeError
from finch.runs.adapters import ADAPTER_WEIGHTS

peft = pytest.importorskip("peft")  # finch[peft]; the test extra installs it


def base_model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=37, num_labels=2))


def lora_model(adapter_seed=0, **config):
    """The same frozen base every time; the adapter's (and the new head's) initial weights from `adapter_seed`."""
    config = {"task_type": "SEQ_CLS", "r": 4, "target_modules": ["query", "value"], **config}
    base = base_model()
    torch.manual_seed(adapter_seed)
    return peft.get_peft_model(base, peft.LoraConfig(**config))


def rows(count=48, seed=0):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, 100, 12).tolist() for _ in range(count)]  # one length: no tokenizer to pad
    return Dataset.from_dict({"input_ids": ids, "label": [int(row[0] > 50) for row in ids]})


def adapter_of(model):
    return {key: value.clone() for key, value in peft.get_peft_model_state_dict(model).items()}


def args(tmp_path, **overrides):
    values = {"num_train_epochs": 3, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "save_strategy": "epoch",
              "eval_strategy": "epoch"}
    return quiet_args(tmp_path, **{**values, **overrides})


def test_checkpoints_hold_the_adapter_and_resume_exactly(tmp_path):
    data = rows()
    straight = lora_model()
    Trainer(model=straight, args=args(tmp_path / "straight"), train_dataset=data, eval_dataset=data).train()

    class StopAfterOneEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    first = lora_model()
    Trainer(model=first, args=args(tmp_path / "resumed"), train_dataset=data, eval_dataset=data,
            callbacks=[StopAfterOneEpoch()]).train()
    folder = tmp_path / "resumed" / "run" / "checkpoint-6"
    names = {path.name for path in folder.iterdir()}
    assert ADAPTER_WEIGHTS in names and "adapter_config.json" in names and "model.safetensors" not in names
    saved = safetensors.torch.load_file(str(folder / ADAPTER_WEIGHTS))
    assert not any("lora" not in key and "classifier" not in key for key in saved)  # the frozen base: never written
    assert ADAPTER_WEIGHTS in json.loads((folder / "manifest.json").read_text())["files"]

    resumed = lora_model(adapter_seed=1)  # other adapter weights at first: the checkpoint's replace them
    Trainer(model=resumed, args=args(tmp_path / "resumed"), train_dataset=data, eval_dataset=data).train(
        resume_from_checkpoint=True)
    expected, got = adapter_of(straight), adapter_of(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected), "the resumed adapter differs"


def test_best_model_is_loaded_back_and_save_model_reloads_to_the_same_scores(tmp_path):
    data = rows()
    model = lora_model()
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            snapshots[state.global_step] = adapter_of(model)

    class WorstLast(TrainerCallback):  # the first evaluation is "best" by this metric, so the best is not the last
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_order"] = state.global_step

    trainer = Trainer(model=model, args=args(tmp_path, load_best_model_at_end=True, metric_for_best_model="order",
                                             greater_is_better=False),
                      train_dataset=data, eval_dataset=data, callbacks=[WorstLast(), Snapshot()])
    trainer.train()
    assert trainer.state.best_global_step == 6
    assert all(torch.equal(value, snapshots[6][key]) for key, value in adapter_of(model).items())
    scores = trainer.predict(data).predictions

    trainer.save_model(str(tmp_path / "adapter"))
    saved = {path.name for path in (tmp_path / "adapter").iterdir()}
    assert ADAPTER_WEIGHTS in saved and "model.safetensors" not in saved
    reloaded = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "adapter"))  # the same base, fresh
    reloaded.eval()
    np.testing.assert_allclose(Trainer(model=reloaded, args=quiet_args(tmp_path / "r")).predict(data).predictions,
                               scores, rtol=1e-5, atol=1e-6)

    trainer.args.merge_adapters = True
    trainer.save_model(str(tmp_path / "merged"))
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged"))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    np.testing.assert_allclose(Trainer(model=merged, args=quiet_args(tmp_path / "m")).predict(data).predictions,
                               scores, rtol=1e-4, atol=1e-5)
    assert any("lora" in name for name, _ in model.named_parameters())  # the trained model is left as it was


def test_the_optimizer_holds_the_trainable_parameters_only(tmp_path):
    model = lora_model()
    trainer = Trainer(model=model, args=args(tmp_path, max_steps=1, save_strategy="no", eval_strategy="no"),
                      train_dataset=rows(16))
    trainer.train()
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(held) < sum(1 for _ in model.parameters()) / 2


def test_a_trained_parameter_left_out_of_the_adapter_is_refused_before_training(tmp_path):
    model = lora_model(task_type=None)  # no task type: peft does not save the classification head
    for parameter in model.base_model.model.classifier.parameters():
        parameter.requires_grad = True  # trained, but never saved: the reloaded model would score otherwise
    trainer = Trainer(model=model, args=args(tmp_path), train_dataset=rows(16))
    with pytest.raises(ConfigError, match="modules_to_save"):
        trainer.train()
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_adapter_is_refused(tmp_path):
    data = rows(16)
    Trainer(model=lora_model(), args=args(tmp_path, num_train_epochs=1, eval_strategy="no"),
            train_dataset=data).train()
    other = lora_model(r=8)
    trainer = Trainer(model=other, args=args(tmp_path, num_train_epochs=2, eval_strategy="no"), train_dataset=data)
    with pytest.raises(ResumeError):
        trainer.train(resume_from_checkpoint=True)


def test_every_input_of_the_wrapped_model_reaches_it(tmp_path):
    """peft's forward names few arguments (no token_type_ids); the columns kept are those of the model it wraps."""
    from finch.data import batching

    data = rows(8).add_column("token_type_ids", [[0] * 12] * 8).add_column("note", ["x"] * 8)
    kept, dropped = batching.prepare_dataset(data, lora_model(), remove_unused_columns=True)
    assert "token_type_ids" in kept.column_names and dropped == ["note"]


@pytest.mark.parametrize("method", ["dora", "p-tuning", "prompt-tuning"])
def test_other_peft_methods_train_and_resume_exactly(tmp_path, method):
    """DoRA's magnitudes, a P-tuning encoder, prompt tuning's embeddings: peft saves them in forms of its own (P-tuning
    only the encoder's output); checkpoints keep every trainable tensor too, so resuming is exact for each."""
    def build(adapter_seed=0):
        base = base_model()
        torch.manual_seed(adapter_seed)
        config = {"dora": lambda: peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"],
                                                  use_dora=True),
                  "p-tuning": lambda: peft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=4,
                                                               encoder_hidden_size=16),
                  "prompt-tuning": lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)}[method]()
        return peft.get_peft_model(base, config)

    class StopAfterOneEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    data = rows(32)
    settings = {"num_train_epochs": 2, "eval_strategy": "no"}
    straight = build()
    Trainer(model=straight, args=args(tmp_path / "straight", **settings), train_dataset=data).train()
    Trainer(model=build(), args=args(tmp_path / "resumed", **settings), train_dataset=data,
            callbacks=[StopAfterOneEpoch()]).train()
    resumed = build(adapter_seed=1)
    Trainer(model=resumed, args=args(tmp_path / "resumed", **settings), train_dataset=data).train(
        resume_from_checkpoint=True)
    expected = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.named_parameters() if p.requires_grad}
    assert expected.keys() == got.keys() and all(torch.equal(expected[n], got[n]) for n in expected)
