"""Whether the step is captured as CUDA graphs, and why not: decided from the run's facts (faked here: no GPU is
needed), said once in the run header; a capture that raises falls back to the eager model, said once."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from conftest import quiet_args, tiny_bert

from finch import Trainer, TrainerCallback
from finch.training import graphs
from finch.training.callbacks import ProgressCallback
from finch.training.graphs import GraphPlan, decide

cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
FUSED = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True)
SGD = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
EVERY_CHECK_PASSES = {"wanted": True, "device": cuda, "torch_compile": True, "buckets": [32, 64, 128],
                      "overridden": [], "sharded": False, "optimizer": FUSED, "callbacks": [ProgressCallback()]}


class EditsTheModel(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        pass


@pytest.mark.parametrize(("change", "reason"), [
    ({}, "graphs on (3 buckets)"),
    ({"wanted": None}, "graphs off: not yet measured on this GPU (cuda_graphs=True turns them on)"),
    ({"wanted": False}, "graphs off: cuda_graphs=False"),
    ({"device": cpu}, "graphs off: the device is cpu (CUDA graphs need CUDA)"),
    ({"torch_compile": False}, "graphs off: torch_compile is off"),
    ({"buckets": None}, "graphs off: shape buckets are off"),
    ({"overridden": ["compute_loss"]}, "graphs off: Trainer.compute_loss is overridden"),
    ({"sharded": True}, "graphs off: FSDP"),
    ({"optimizer": SGD}, "graphs off: the optimizer (SGD) is neither fused nor capturable"),
    ({"callbacks": [ProgressCallback(), EditsTheModel()]}, "graphs off: callback EditsTheModel.on_step_end acts"),
])
def test_the_decision_says_on_or_why_not(change, reason):
    plan = decide(**{**EVERY_CHECK_PASSES, **change})
    assert plan.on == (reason.startswith("graphs on"))
    assert plan.describe().startswith(reason)


def test_what_counts_as_an_override_or_a_step_callback():
    class LossOfMyOwn(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    assert graphs.overridden_methods(LossOfMyOwn, Trainer) == ["compute_loss"]
    assert graphs.overridden_methods(Trainer, Trainer) == []

    class OnlyLogs(transformers.TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            pass

    assert graphs.step_callbacks([ProgressCallback(), transformers.PrinterCallback(), OnlyLogs()]) == []
    assert graphs.step_callbacks([EditsTheModel()]) == ["EditsTheModel.on_step_end"]


def test_the_run_header_says_why_the_step_is_not_captured(tmp_path, toy, tokenizer, caplog):
    trainer = Trainer(model=tiny_bert(), args=quiet_args(tmp_path, max_steps=1, cuda_graphs=True), train_dataset=toy,
                      processing_class=tokenizer)
    with caplog.at_level(logging.INFO, logger="finch"):
        trainer.train()
    assert caplog.text.count("graphs off: the device is cpu") == 1


class FailsToCapture(torch.nn.Module):
    """Stands for a compiled model whose capture raises (as inductor or cudagraph trees may)."""

    calls = 0

    def __call__(self, *args, **kwargs):
        FailsToCapture.calls += 1
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


@pytest.mark.slow
def test_a_failed_capture_falls_back_to_the_eager_model_once(tmp_path, toy, tokenizer, monkeypatch, caplog):
    eager = Trainer(model=tiny_bert(dropout=0.0), args=quiet_args(tmp_path / "eager", max_steps=4, shape_buckets=True),
                    train_dataset=toy, processing_class=tokenizer)
    eager.train()
    monkeypatch.setattr(graphs, "decide", lambda *args: GraphPlan(True, "2 buckets"))  # as on a GPU
    monkeypatch.setattr(graphs, "compile_model", lambda model, plan: FailsToCapture())
    captured = Trainer(model=tiny_bert(dropout=0.0), args=quiet_args(tmp_path / "graphs", max_steps=4,
                                                                     torch_compile=True),
                       train_dataset=toy, processing_class=tokenizer)
    with caplog.at_level(logging.INFO, logger="finch"):
        captured.train()
    assert "graphs on (2 buckets)" in caplog.text
    assert caplog.text.count("graphs off: capturing the step failed (RuntimeError: CUDA error") == 1
    assert FailsToCapture.calls == 1, "tried once, then eager for good"
    for (name, expected), got in zip(eager.model.state_dict().items(), captured.model.state_dict().values()):
        assert torch.equal(expected, got), name


class RaisesInBackward(torch.autograd.Function):
    """The identity forward; its backward raises as a capture of the backward may (recorded at the first backward)."""

    @staticmethod
    def forward(ctx, logits):
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


class BackwardFailsToCapture(torch.nn.Module):
    """Stands for a compiled model whose forward runs and whose backward's capture raises."""

    calls = 0

    def __init__(self, eager):
        super().__init__()
        self.eager = eager

    def forward(self, **inputs):
        BackwardFailsToCapture.calls += 1
        outputs = self.eager(**inputs)
        outputs["loss"] = RaisesInBackward.apply(outputs["loss"])
        return outputs


@pytest.mark.slow
def test_a_capture_that_fails_in_the_backward_falls_back_and_trains_that_batch_again(tmp_path, toy, tokenizer,
                                                                                     monkeypatch, caplog):
    values = {"max_steps": 4, "shape_buckets": True, "gradient_accumulation_steps": 2, "logging_steps": 1}
    eager = Trainer(model=tiny_bert(dropout=0.0), args=quiet_args(tmp_path / "eager", **values), train_dataset=toy,
                    processing_class=tokenizer)
    eager.train()
    monkeypatch.setattr(graphs, "decide", lambda *args: GraphPlan(True, "2 buckets"))  # as on a GPU
    monkeypatch.setattr(graphs, "compile_model", lambda model, plan: BackwardFailsToCapture(model))
    captured = Trainer(model=tiny_bert(dropout=0.0), args=quiet_args(tmp_path / "graphs", torch_compile=True, **values),
                       train_dataset=toy, processing_class=tokenizer)
    with caplog.at_level(logging.INFO, logger="finch"):
        captured.train()
    assert caplog.text.count("graphs off: capturing the step failed (RuntimeError: CUDA error") == 1
    assert BackwardFailsToCapture.calls == 1, "its backward raised once, then eager for good"
    losses = [entry["loss"] for entry in captured.state.log_history if "loss" in entry]
    assert losses == [entry["loss"] for entry in eager.state.log_history if "loss" in entry]
    for (name, expected), got in zip(eager.model.state_dict().items(), captured.model.state_dict().values()):
        assert torch.equal(expected, got), name
