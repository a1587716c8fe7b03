"""Many processes under `torchrun`: the `Runtime` whose reductions, barriers and model wrapping are real.

torchrun starts one process per device and sets `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR` and
`MASTER_PORT`; `DistributedRuntime.start` joins the process group they describe (nccl on CUDA, gloo on the CPU,
unless `ddp_backend` says otherwise) and picks this process's device (`cuda:<LOCAL_RANK>`). The trainer then asks
it to wrap the model in DDP, to reduce the step's item count, loss and control flags, and to let rank 0 write.

Every collective here is called by every rank at the same point of the loop: the loop's decisions (log, evaluate,
save, stop) are first agreed (`any_rank`), so no rank ever waits in a collective that another has left.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from finch.runtime import Runtime, choose_precision, set_seed

logger = logging.getLogger("finch")


class DistributedRuntime(Runtime):
    """One rank of a `torch.distributed` process group (see `Runtime` for what each method promises)."""

    def __init__(self, device: torch.device, precision: Any, rank: int, local_rank: int, world_size: int) -> None:
        super().__init__(device, precision)
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size

    @classmethod
    def start(cls, args: Any) -> DistributedRuntime:
        """Join (once per process) the process group torchrun describes; this rank's device and precision."""
        cuda = torch.cuda.is_available() and not args.use_cpu
        device = torch.device("cuda", args.local_process_index) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = args.ddp_backend or ("nccl" if cuda else "gloo")
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.ddp_timeout),
                                    device_id=device if cuda else None)
            atexit.register(_leave_group)
        if dist.get_world_size() != args.world_size:  # a group made by the application itself, of another size
            logger.warning("the process group has %d ranks, WORLD_SIZE says %d: using the group's",
                           dist.get_world_size(), args.world_size)
        return cls(device, choose_precision(args.bf16, args.fp16, device), dist.get_rank(),
                   args.local_process_index, dist.get_world_size())

    def describe(self) -> str:
        return f"{self.device} | rank {self.rank} of {self.world_size} ({dist.get_backend()})"

    def seed_rank(self, seed: int, step: int = 0) -> None:
        if self.rank == 0 and step == 0:
            return  # rank 0 of a fresh run draws what one process would
        set_seed(int(np.random.SeedSequence([seed, self.rank, step]).generate_state(1)[0]))

    def wrap(self, model: torch.nn.Module, args: Any) -> torch.nn.Module:
        """DDP around `model` (rank 0's weights are broadcast to the others here).

        `ddp_find_unused_parameters` unset: on when some parameters are frozen (a partly frozen model often leaves
        trainable ones out of the graph too), else off, which is faster."""
        find_unused = args.ddp_find_unused_parameters
        if find_unused is None:
            find_unused = any(not parameter.requires_grad for parameter in model.parameters())
        options: dict[str, Any] = {"find_unused_parameters": find_unused}
        if args.ddp_bucket_cap_mb is not None:
            options["bucket_cap_mb"] = args.ddp_bucket_cap_mb
        if self.device.type == "cuda":
            options["device_ids"] = [self.device.index]
        return DistributedDataParallel(model, **options)

    def no_sync(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        module = getattr(model, "_orig_mod", model)  # torch.compile's wrapper around DDP
        if sync or not isinstance(module, DistributedDataParallel):
            return contextlib.nullcontext()
        return module.no_sync()

    def sum_ints(self, *values: int) -> tuple[int, ...]:
        tensor = torch.tensor(values, dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(tensor)
        return tuple(int(v) for v in tensor.tolist())

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        failed = (~flag).to(torch.int32)
        dist.all_reduce(failed)
        return failed == 0

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        return tuple(total > 0 for total in self.sum_ints(*(int(bool(flag)) for flag in flags)))

    def all_gather(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def on_main(self, decide: Callable[[], Any]) -> Any:
        outcome: list[Any] = [None]
        if self.rank == 0:
            try:
                outcome[0] = ("ok", decide())
            except Exception as error:
                outcome[0] = ("error", error)
                dist.broadcast_object_list(outcome, src=0)
                raise
        dist.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            raise value
        return value

    def barrier(self) -> None:
        dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
