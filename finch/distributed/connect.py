"""Which runtime a run gets: chosen here, outside both, so the single-process `Runtime` knows nothing of its
distributed subclass (Lightning Fabric's connector plays this part for its strategies)."""

from __future__ import annotations

import logging
from typing import Any

from finch.distributed.runtime import Runtime, choose_device, choose_precision
from finch.distributed.torchrun import DistributedRuntime

logger = logging.getLogger("finch")


def runtime_for(args: Any) -> Runtime:
    """The runtime `args` ask for: distributed when launched by torchrun with WORLD_SIZE > 1, else one process."""
    if args.world_size > 1:
        return DistributedRuntime.start(args)
    if args.fsdp:
        logger.warning("fsdp=%r with one process: nothing to shard, the model is trained whole", args.fsdp)
    device = choose_device(args.use_cpu)
    return Runtime(device, choose_precision(args.bf16, args.fp16, device, args.tf32))
