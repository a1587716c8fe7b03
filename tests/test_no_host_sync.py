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

import pytest
import torch
from conftest import quiet_args, tiny_bert
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from finch import Trainer
from finch.training.nonfinite import NonFiniteGuard

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
