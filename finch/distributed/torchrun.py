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
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from finch.distributed import fsdp, launch
from finch.distributed.runtime import Launch, Runtime, choose_precision, set_seed
from finch.errors import ConfigError

logger = logging.getLogger("finch")


class DistributedRuntime(Runtime):
    """One rank of a `torch.distributed` process group (see `Runtime` for what each method promises)."""

    def __init__(self, device: torch.device, precision: Any, rank: int, local_rank: int, world_size: int,
                 fsdp_plan: fsdp.FsdpPlan | None = None) -> None:
        super().__init__(device, precision)
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.fsdp_plan = fsdp_plan
        self.sharded = fsdp_plan is not None

    @classmethod
    def start(cls, args: Any) -> DistributedRuntime:
        """Join (once per process) the process group torchrun describes; this rank's device and precision."""
        device = args.device  # this process's GPU (cuda:LOCAL_RANK), or the CPU: the arguments' one decision
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = args.ddp_backend or ("nccl" if cuda else "gloo")
            timeout = datetime.timedelta(seconds=args.ddp_timeout)
            store = _store_of_this_attempt(Launch.from_environment(), timeout)
            ranks = {} if store is None else {"rank": args.process_index, "world_size": args.world_size}
            dist.init_process_group(backend, timeout=timeout, device_id=device if cuda else None, store=store,
                                    **ranks)
            atexit.register(_leave_group)
        if dist.get_world_size() != args.world_size:  # a group made by the application itself, of another size
            logger.warning("the process group has %d ranks, WORLD_SIZE says %d: using the group's",
                           dist.get_world_size(), args.world_size)
        return cls(device, choose_precision(args.bf16, args.fp16, device, args.tf32), dist.get_rank(),
                   args.local_process_index, dist.get_world_size(), fsdp.read_fsdp(args.fsdp, args.fsdp_config)[0])

    def describe(self) -> str:
        return f"{self.device} | rank {self.rank} of {self.world_size} ({dist.get_backend()})"

    def seed_rank(self, seed: int, step: int = 0) -> None:
        if self.rank == 0 and step == 0:
            return  # rank 0 of a fresh run draws what one process would
        set_seed(int(np.random.SeedSequence([seed, self.rank, step]).generate_state(1)[0]))

    def shard(self, model: torch.nn.Module, args: Any) -> None:
        if self.fsdp_plan is None:
            return
        plan = self.fsdp_plan
        if not fsdp.is_sharded(model):  # decided on rank 0 (its machine gathers a full state), taken by all
            full_bytes = fsdp.state_bytes(model)
            self.sharded_checkpoints = self.on_main(lambda: fsdp.checkpoints_sharded(
                plan.state_dict_type, full_bytes, fsdp.available_memory()))
            if self.sharded_checkpoints and plan.state_dict_type is None and self.rank == 0:
                logger.warning("fsdp: the full state (%.1f GB) would take more than half of this machine's available "
                               "memory: checkpoints hold every rank's shards (torch.distributed.checkpoint); "
                               "fsdp_config={'state_dict_type': 'FULL_STATE_DICT'} to gather them", full_bytes / 1e9)
        fsdp.shard(model, plan, self.device)

    def full_state(self, model: torch.nn.Module, optimizer: Any) -> tuple[dict | None, dict | None]:
        if not (self.sharded and fsdp.is_sharded(model)):  # (evaluate or save_model before train() sharded it)
            return None, None
        return fsdp.full_state(model, optimizer)

    def gathered(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        if self.fsdp_plan is None or not fsdp.is_sharded(model):
            return contextlib.nullcontext()
        return fsdp.gathered(model, self.fsdp_plan)

    def wrap(self, model: torch.nn.Module, args: Any) -> torch.nn.Module:
        """DDP around `model` (rank 0's weights are broadcast to the others here); a sharded model as it is.

        `ddp_find_unused_parameters` unset: on when some parameters are frozen (a partly frozen model often leaves
        trainable ones out of the graph too), else off, which is faster."""
        if self.sharded:
            return model  # FSDP2 hooks are in the model itself
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
        if self.sharded:
            return fsdp.gradient_sync(module, sync)
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

    def on_writers(self, write: Callable[[], Any], every_node: bool) -> None:
        if not every_node:
            return self.on_main(write)
        failure: Exception | None = None
        if self.local_rank == 0:
            try:
                write()
            except Exception as error:  # noqa: BLE001 (raised below, and on every other rank)
                failure = error
        failures = self.all_gather(failure)  # also the barrier: every machine's copy is written when it returns
        if failure is not None:
            raise failure
        first = next((error for error in failures if error is not None), None)
        if first is not None:
            raise first

    def barrier(self) -> None:
        dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _store_of_this_attempt(launch: Launch, timeout: datetime.timedelta) -> dist.Store | None:
    """After a torchrun restart, the store the workers meet in, with this attempt's keys apart (None: torch's own).

    torchrun's agent keeps one store for every attempt of a launch, and the process group's keys (each rank's
    address) carry no attempt number, so a restarted worker may read the address a dead worker of the previous
    attempt left and fail with "Connection refused" (pytorch/pytorch#135712; seen here about one restart in two).
    Every rank of attempt n is restarted together, so `finch/attempt-<n>/` is the same prefix on all of them."""
    if not launch.restarted or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"finch/attempt-{launch.restarts}/", store)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- launching: `finch train --nproc-per-node N` --------------------------------------------------------------------
LAUNCH_FLAGS = {"--nproc-per-node": "nproc_per_node", "--nnodes": "nnodes", "--node-rank": "node_rank",
                "--rdzv-endpoint": "rdzv_endpoint", "--rdzv-id": "rdzv_id", "--rdzv-timeout": "rdzv_timeout",
                "--max-restarts": "max_restarts"}
RDZV_TIMEOUT = 600  # seconds the machines wait for each other (torchrun's c10d join_timeout default)


def launched_by_torchrun() -> bool:
    """Whether this process is a rank that torchrun started (then `finch train` trains, it does not relaunch)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_command(command_args: list[str], flags: dict[str, Any]) -> list[str]:
    """The `torch.distributed.run` command that runs `python -m finch.cli <command_args>` once per process.

    `command_args` are the CLI's own arguments with the launch flags removed (`without_launch_flags`). One node
    without `--rdzv-endpoint` uses torchrun's `--standalone` (a free local port); several nodes meet at the
    endpoint (c10d rendezvous), each started with its own `--node-rank`, and with `--rdzv-id`, the job's id that
    tells a restarted worker (`--max-restarts`) which checkpoints are this launch's (`--standalone` makes one)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={flags['nproc_per_node']}"]
    nodes = int(flags.get("nnodes") or 1)
    if nodes == 1 and not flags.get("rdzv_endpoint"):
        command.append("--standalone")
    else:
        if not flags.get("rdzv_endpoint"):
            raise ConfigError(f"--nnodes {nodes} needs --rdzv-endpoint HOST:PORT, the address of node 0 that every "
                              f"node can reach (e.g. --rdzv-endpoint node0:29500)")
        command += [f"--nnodes={nodes}", f"--node-rank={flags.get('node_rank') or 0}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={flags['rdzv_endpoint']}"]
        if flags.get("rdzv_id"):
            command.append(f"--rdzv-id={flags['rdzv_id']}")
        command.append(f"--rdzv-conf=join_timeout={rendezvous_timeout(flags)}")
    if flags.get("max_restarts"):
        command.append(f"--max-restarts={flags['max_restarts']}")
    return [*command, "-m", "finch.cli", *command_args]


def check_launch_flags_need_processes(flags: dict[str, Any]) -> None:
    """Raise `ConfigError` for launch flags given without --nproc-per-node: the command would train as one process
    here, the other machines' flags ignored, and a user who meant several machines would not know."""
    if flags.get("nproc_per_node") or launched_by_torchrun():
        return
    given = [flag for flag, name in LAUNCH_FLAGS.items() if flags.get(name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} given without --nproc-per-node: they describe a launch through "
                          f"torchrun, and without it this command trains as one process. Add --nproc-per-node N "
                          f"(processes on this machine, e.g. --nproc-per-node 1 for one per machine), or drop them")


def rendezvous_timeout(flags: dict[str, Any]) -> int:
    return int(flags.get("rdzv_timeout") or RDZV_TIMEOUT)


def waiting_line(flags: dict[str, Any], command_name: str) -> str:
    """What a machine of a several-machine launch waits for, said before it waits (minutes, maybe, in silence)."""
    nodes, rank = int(flags["nnodes"]), int(flags.get("node_rank") or 0)
    others = ", ".join(str(other) for other in range(nodes) if other != rank)
    return (f"finch {command_name}: waiting for all {nodes} machines at {flags['rdzv_endpoint']} (this is node "
            f"{rank}); giving up after {rendezvous_timeout(flags)} s (--rdzv-timeout). Start the same command on each "
            f"other machine with --node-rank {others} (the same --nnodes and --rdzv-endpoint)")


def without_launch_flags(argv: list[str]) -> list[str]:
    """`argv` with the launch flags and their values taken out (`--flag value` and `--flag=value`)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in LAUNCH_FLAGS:
            skip = True
        elif item.split("=", 1)[0] not in LAUNCH_FLAGS:
            kept.append(item)
    return kept


def relaunch(argv: list[str], flags: dict[str, Any], command_name: str) -> int:
    """Run the same CLI command once per process through torchrun's agent, in this process; finch's exit code.

    The launch flags are checked first, and a rendezvous port held by something else is refused, so a mistake
    shows once, here, without torchrun's traceback (see `finch.distributed.launch`)."""
    launch.check_launch_flags(flags)
    command = launch_command(without_launch_flags(argv), flags)
    if flags.get("rdzv_endpoint"):
        launch.check_rendezvous_port(flags["rdzv_endpoint"])
    if int(flags.get("nnodes") or 1) > 1:
        print(waiting_line(flags, command_name), file=sys.stderr, flush=True)
    logger.info("launching: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    return launch.launch(command, command_name)
