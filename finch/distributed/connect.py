"""Which runtime a run gets: chosen here, outside both, so the single-process `Runtime` knows nothing of its
distributed subclass (Lightning Fabric's connector plays this part for its strategies)."""

from __future__ import annotations

import logging
from typing import Any

from finch.distributed.runtime import Launch, Runtime, choose_device, choose_precision
from finch.distributed.torchrun import DistributedRuntime

logger = logging.getLogger("finch")


def runtime_for(args: Any) -> Runtime:
    """The runtime `args` ask for: distributed when launched by torchrun with WORLD_SIZE > 1, else one process.

    Where the launcher placed this process is read here, when the run starts, and given to `args`: arguments made
    before a fork-based launcher set RANK and WORLD_SIZE (a notebook launcher, a worker handed its parent's
    arguments) then say what the runtime does, and the world size has one source."""
    args.place(Launch.from_environment())
    if args.world_size > 1:
        return DistributedRuntime.start(args)
    if args.fsdp:
        logger.warning("fsdp=%r with one process: nothing to shard, the model is trained whole", args.fsdp)
    device = choose_device(args.use_cpu)
    return Runtime(device, choose_precision(args.bf16, args.fp16, device, args.tf32))
