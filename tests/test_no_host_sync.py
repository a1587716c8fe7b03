"""The sync audit: between logging steps, the training step never reads a device tensor on the host.

On CUDA every such read (`.item()`, `bool()`, `float()`, `int()`, `.tolist()`, `.numpy()`, a copy to the CPU) makes
the host wait for the GPU, so the GPU idles while Python queues the next kernels. On the CPU there is no sync to
see, but the reads are the same calls: a `TorchFunctionMode` records them. Batches as the collator made them are
host tensors on CUDA too (counted before they are moved), so the audit tracks which tensors derive only from the
collator's output and ignores reads of those; `to_device` is made to copy, so that the batch "on the device" is a
tensor of its own, as on CUDA. The on-device paths CUDA takes are forced (the NaN/Inf guard through fused AdamW's
`found_inf`, which the CPU's fused kernel honours too). `.to("cpu")` is not recorded: on a CPU run it cannot be told
from the `.to(device)` that torch's optimizers and clipping call; `.cpu()` is.

Reads inside the model's own code (transformers') are not finch's to remove; they are listed apart, not asserted.
"""

from __future__ import annotations

import sys
import traceback
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import quiet_args, tiny_bert
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from finch import Trainer
from finch.training.nonfinite import NonFiniteGuard
from finch.training.readback import Readback

READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "__format__", "__repr__",
         "__array__"}


class HostReads(TorchFunctionMode):
    """Records every read of a device tensor on the host while `active`; tensors derived only from host tensors
    (the collator's batches) are host tensors themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.host = WeakIdKeyDictionary()
        self.active = False
        self.reads: list[tuple[str, str]] = []  # (what, where: the innermost frame outside torch)

    def mark_host(self, tensor: torch.Tensor) -> None:
        self.host[tensor] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        name = getattr(func, "__name__", str(func))
        if self.active and name in READS and tensors and not all(tensor in self.host for tensor in tensors):
            self.reads.append((name, _caller()))
        result = func(*args, **kwargs)
        if tensors and all(tensor in self.host for tensor in tensors):
            for value in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(value, torch.Tensor):
                    self.mark_host(value)
        return result


def _caller() -> str:
    """The innermost frame of the read outside torch (file:line), to say where it is."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} {frame.name}"
    return "?"


def _is_finch(where: str) -> bool:
    return "/finch/" in where and "/tests/" not in where


class AuditedTrainer(Trainer):
    """Audits the steps that neither log, evaluate nor save: `_train_step`, and `_log_evaluate_save` after it."""

    audit: HostReads
    quiet_steps: set[int]

    def _train_step(self, run, batches, shares, step):
        for batch in batches:
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    self.audit.mark_host(value)
        self.audit.active = self.state.global_step + 1 in self.quiet_steps
        try:
            super()._train_step(run, batches, shares, step)
        finally:
            self.audit.active = False

    def _log_evaluate_save(self, run, epoch_done, preemption):
        self.audit.active = self.state.global_step in self.quiet_steps
        try:
            super()._log_evaluate_save(run, epoch_done, preemption)
        finally:
            self.audit.active = False


def copying_to_device(batch, device):
    """`to_device` as on CUDA: the batch on the device is other tensors than the host's."""
    return {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def audited_run(tmp_path, toy, tokenizer, monkeypatch, trainer_class=AuditedTrainer, **overrides):
    monkeypatch.setattr(NonFiniteGuard, "supports_on_device", staticmethod(lambda optimizer, device: True))
    monkeypatch.setattr("finch.training.trainer.to_device", copying_to_device)
    values = {"max_steps": 12, "logging_steps": 5, "eval_strategy": "steps", "eval_steps": 10,
              "save_strategy": "steps", "save_steps": 10, "gradient_accumulation_steps": 2,
              "per_device_train_batch_size": 4, "fast_dropout": False}
    args = quiet_args(tmp_path, **{**values, **overrides})
    trainer = trainer_class(model=tiny_bert(), args=args, train_dataset=toy, eval_dataset=toy.select(range(16)),
                            processing_class=tokenizer)
    trainer.audit, trainer.quiet_steps = HostReads(), {step for step in range(1, 13) if step not in (5, 10, 12)}
    with trainer.audit:
        trainer.train()
    assert trainer.state.global_step == 12
    return trainer.audit.reads


@pytest.mark.slow
def test_no_host_reads_between_logging_steps(tmp_path, toy, tokenizer, monkeypatch):
    reads = audited_run(tmp_path, toy, tokenizer, monkeypatch)
    ours = [read for read in reads if _is_finch(read[1])]
    assert ours == [], f"host syncs in the training step: {sorted(set(ours))}"
    theirs = sorted({where for _, where in reads})
    print("reads in the model's own code (not finch's):", *theirs, sep="\n  ", file=sys.stderr)


@pytest.mark.slow
def test_the_audit_catches_an_item_in_the_step(tmp_path, toy, tokenizer, monkeypatch):
    """The audit would fail on a sync added to the step: here a loss read with `.item()` each micro-batch."""

    class Syncing(AuditedTrainer):
        def _forward_backward(self, run, batch, step_items, counts):
            loss = super()._forward_backward(run, batch, step_items, counts)
            self.last = loss.item()
            return loss

    reads = audited_run(tmp_path, toy, tokenizer, monkeypatch, trainer_class=Syncing)
    assert [where for name, where in reads if name == "item" and "_forward_backward" in where], reads


# Evaluation: each batch's outputs reach the host LAG batches after their copies are queued (finch.training.readback).


def host_copy(tensor):
    """The CPU stand-in for a pinned, non-blocking copy: a host tensor of its own."""
    return torch.empty_like(tensor, device="cpu").copy_(tensor)


class Fence:
    """The CPU stand-in for a CUDA event: says when it is waited on."""

    made: ClassVar[list[Fence]] = []
    waited: ClassVar[list[int]] = []

    def __init__(self) -> None:
        self.number = len(Fence.made)
        Fence.made.append(self)

    def synchronize(self) -> None:
        Fence.waited.append(self.number)


class DeferredOnCpu(Trainer):
    """Evaluation as on CUDA: outputs copied to host tensors of their own, read LAG batches later."""

    def _readback(self):
        return Readback(deferred=True, copy=host_copy, fence=Fence)


def test_a_batch_is_read_only_lag_batches_after_its_copy():
    Fence.made, Fence.waited = [], []
    readback = Readback(deferred=True, copy=host_copy, fence=Fence, lag=2)
    for batch in range(5):
        readback.put(readback.stage((torch.full((2,), float(batch)), None)))
        assert Fence.waited == list(range(max(0, batch + 1 - 2)))  # the newest two are still in flight
    results = readback.results()
    assert Fence.waited == [0, 1, 2, 3, 4]
    assert [float(logits[0]) for logits, _ in results] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(labels is None for _, labels in results)


def _eval_reads(trainer_class, tmp_path, toy, tokenizer, monkeypatch):
    """The host reads of device tensors while `evaluate()` runs; those of the lagged read-back itself left out."""
    audit = HostReads()
    monkeypatch.setattr("finch.training.evaluation.to_device", copying_to_device)
    Fence.made, Fence.waited = [], []
    lagged = Readback._read_oldest

    def read_oldest(self):  # the one place a deferred read-back reads: after its fence, LAG batches late
        audit.active = False
        try:
            lagged(self)
        finally:
            audit.active = True

    monkeypatch.setattr(Readback, "_read_oldest", read_oldest)
    args = quiet_args(tmp_path, per_device_eval_batch_size=4, include_for_metrics=["inputs", "loss"])
    trainer = trainer_class(model=tiny_bert(), args=args, eval_dataset=toy.select(range(24)),
                            processing_class=tokenizer, compute_metrics=lambda p: {"rows": float(len(p.label_ids))})
    collate = trainer.data_collator

    def marking(features):  # the collator's batches are host tensors on CUDA too
        batch = collate(features)
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                audit.mark_host(value)
        return batch

    trainer.data_collator = marking
    make_loader = trainer._loader

    def unaudited_loader(dataset, batches):  # the loader's own host work (its seed, collating) is not the loop's
        loader = make_loader(dataset, batches)

        def batches_of():
            iterator = iter(loader)
            while True:
                audit.active = False
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                finally:
                    audit.active = True
                yield batch

        return batches_of()

    trainer._loader = unaudited_loader
    with audit:
        audit.active = True
        metrics = trainer.evaluate()
        audit.active = False
    assert metrics["eval_rows"] == 24.0
    # the weights' digest (is this the last evaluation's model?) is read once per evaluation, not per batch
    return [read for read in audit.reads if _is_finch(read[1]) and "weights_digest" not in read[1]]


@pytest.mark.slow
def test_evaluation_reads_no_batch_on_the_host_until_lag_batches_later(tmp_path, toy, tokenizer, monkeypatch):
    ours = _eval_reads(DeferredOnCpu, tmp_path, toy, tokenizer, monkeypatch)
    assert ours == [], f"host syncs in the evaluation loop: {sorted(set(ours))}"
    assert len(Fence.made) >= 3 and Fence.waited == list(range(len(Fence.made)))


@pytest.mark.slow
def test_the_evaluation_audit_catches_a_read_per_batch(tmp_path, toy, tokenizer, monkeypatch):
    """The CPU's read-back reads each batch at once: the audit sees it (so it would see a sync put back)."""
    ours = _eval_reads(Trainer, tmp_path, toy, tokenizer, monkeypatch)
    assert any("readback.py" in where for _, where in ours), ours


def test_deferred_evaluation_gives_what_the_immediate_one_gives(tmp_path, toy, tokenizer):
    def run(trainer_class):
        args = quiet_args(tmp_path, per_device_eval_batch_size=4, include_for_metrics=["inputs", "loss"])
        seen = {}

        def metrics(prediction):
            seen.update(inputs=prediction.inputs, losses=prediction.losses)
            return {"positive": float((prediction.predictions.argmax(-1) == 1).mean())}

        trainer = trainer_class(model=tiny_bert(), args=args, eval_dataset=toy.select(range(30)),
                                processing_class=tokenizer, compute_metrics=metrics)
        evaluated = trainer.evaluate()
        predicted = trainer.predict(toy.select(range(30)))
        return evaluated, predicted, seen

    (eager_metrics, eager, eager_seen), (late_metrics, late, late_seen) = run(Trainer), run(DeferredOnCpu)
    drop = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    assert {k: v for k, v in late_metrics.items() if k not in drop} == \
           {k: v for k, v in eager_metrics.items() if k not in drop}
    assert np.array_equal(late.predictions, eager.predictions) and np.array_equal(late.label_ids, eager.label_ids)
    assert np.array_equal(late_seen["inputs"], eager_seen["inputs"])
    assert np.array_equal(late_seen["losses"], eager_seen["losses"])
    assert late.metrics["test_loss"] == eager.metrics["test_loss"]
