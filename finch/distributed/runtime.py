"""The seam between one process and many (`Runtime`), device and precision choice, seeding and RNG state (saved
as JSON, never pickled). The trainer asks the runtime, never `torch.distributed` or `torch.cuda`, about devices,
ranks and reductions, so the loop reads the same for one process and for many."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finch.errors import ConfigError

logger = logging.getLogger("finch")


def choose_device(use_cpu: bool = False) -> torch.device:
    """CUDA when present (and not refused with `use_cpu`), else the CPU."""
    if not use_cpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


BF16_SPEEDUP_NEEDED = 1.2  # bf16 autocast is the CPU default only where it measures at least this much faster


def cpu_flags() -> str:
    """/proc/cpuinfo's text ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_bf16_flags() -> bool:
    """True when the CPU advertises bf16 matmul instructions (AMX or AVX-512-bf16)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def time_linear(dtype: torch.dtype | None, calls: int = 3) -> float:
    """Seconds per call of one autocast linear layer the size of a small encoder's MLP (512 tokens, 384 -> 1536),
    casts included, as the training step pays them."""
    x, w = torch.randn(512, 384), torch.randn(1536, 384)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        started = time.perf_counter()
        for _ in range(calls):
            torch.nn.functional.linear(x, w)
        return (time.perf_counter() - started) / calls


def measure_bf16_speedup(rounds: int = 9) -> float:
    """fp32's time over bf16's, each the fastest of `rounds` rounds taken in turns: a busy machine slows some
    rounds of either, not the best of each (3 rounds apiece read 0.47x to 1.36x on a loaded 2-core machine)."""
    time_linear(None), time_linear(torch.bfloat16)  # warm-up: oneDNN builds its kernels on the first call
    fp32 = bf16 = float("inf")
    for _ in range(rounds):
        fp32, bf16 = min(fp32, time_linear(None)), min(bf16, time_linear(torch.bfloat16))
    return fp32 / bf16


@cache
def cpu_bf16_speedup() -> float:
    """How much faster bf16 autocast runs than fp32 on this CPU (0.0 where it has no bf16 instructions).

    Measured, because the flags do not say it: AVX-512-bf16 with AMX or on a Zen 4 ran MiniLM's step about 1.7x
    fp32, while a Xeon advertising AVX-512-bf16 without AMX ran the same layer at 0.56x fp32 (2026-12-07), which made
    bf16 a slower default there. Measured once per machine (about 0.2 s) and kept in `$FINCH_CACHE/cpu_bf16.json`
    keyed by the CPU, its flags, torch's version and thread count, so every run on a machine makes the same choice
    (`FINCH_CACHE=off`: measured in each process)."""
    if not cpu_bf16_flags():
        return 0.0
    pairs = (line.partition(":") for line in cpu_flags().splitlines())
    lines = {name.strip(): value.strip() for name, _, value in pairs}
    key = (f"{lines.get('model name', '')} | {hashlib.sha256(lines.get('flags', '').encode()).hexdigest()[:16]} | "
           f"torch {torch.__version__} | {torch.get_num_threads()} threads")
    store = None if os.environ.get("FINCH_CACHE") == "off" else \
        Path(os.environ.get("FINCH_CACHE") or Path.home() / ".cache" / "finch") / "cpu_bf16.json"
    known = _read_json(store)
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    speedup = measure_bf16_speedup()
    if store is not None:
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            temporary = store.with_name(f".{store.name}.{os.getpid()}")
            temporary.write_text(json.dumps({**known, key: speedup}, indent=1))
            os.replace(temporary, store)
        except OSError:
            pass  # a read-only home: measured again next time
    return speedup


def _read_json(path: Path | None) -> dict:
    try:
        found = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class Hardware:
    """The facts about a device that decide precision: its kind, fast bf16, and TF32 (Ampere or later GPUs)."""

    kind: str
    fast_bf16: bool
    tf32: bool
    bf16_speedup: float | None = None  # measured on this CPU, where it has bf16 instructions

    @classmethod
    def of(cls, device: torch.device) -> Hardware:
        if device.type == "cuda":
            ampere = torch.cuda.get_device_capability(device)[0] >= 8
            return cls("cuda", ampere, ampere)
        if device.type == "cpu" and cpu_bf16_flags():
            speedup = cpu_bf16_speedup()
            return cls("cpu", speedup >= BF16_SPEEDUP_NEEDED, False, speedup)
        return cls(device.type, False, False)


@dataclass(frozen=True)
class Precision:
    """What the loop runs in: `dtype` for autocast (None: fp32), whether fp16 needs a gradient scaler, and what
    torch's TF32 switches are set to (`tf32`; None leaves them as they are)."""

    dtype: torch.dtype | None
    reason: str
    tf32: bool | None = None

    @property
    def name(self) -> str:
        if self.dtype is None and self.tf32:
            return "tf32"
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def apply(self) -> None:
        """Set torch's process-wide TF32 switches (matmuls and cuDNN) when this precision decides them, as HF's
        `tf32=True` does."""
        if self.tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32


def speedup_note(hardware: Hardware) -> str:
    """`" (bf16 measured 0.56x fp32)"` on a CPU whose bf16 instructions were timed, else nothing."""
    return "" if hardware.bf16_speedup is None else f" (bf16 measured {hardware.bf16_speedup:.2f}x fp32)"


def choose_precision(bf16: bool | None, fp16: bool | None, device: torch.device, tf32: bool | None = None,
                     hardware: Hardware | None = None) -> Precision:
    """Resolve the user's `bf16` / `fp16` / `tf32` (True, False or unset) against the hardware.

    All unset: on CUDA (Ampere and later) fp32 weights with TF32 tensor-core matmuls, no autocast: at fine-tuning
    sizes autocast's casts cost more than bf16 saves (BERT-base on MRPC, H200: TF32 2.5x faster than bf16 autocast
    at batch 32, 1.9x at batch 128; benchmarks/throughput.py). On CPUs where bf16 autocast measures faster than fp32
    (`cpu_bf16_speedup`: about 1.7x with AMX or on a Zen 4), bf16 autocast. Else fp32. `fp16=True` without CUDA
    (a common tutorial line) warns and falls back to bf16 where that is fast, else fp32. `tf32=True` without an
    Ampere GPU warns and changes nothing.
    """
    hardware = hardware or Hardware.of(device)
    if tf32 and not hardware.tf32:
        logger.warning("tf32=True needs an Ampere or newer GPU, which this run does not use (%s); ignored.", device)
        tf32 = None
    if fp16:
        if hardware.kind == "cuda":
            return Precision(torch.float16, "fp16=True", tf32)
        fallback = torch.bfloat16 if hardware.fast_bf16 else None
        logger.warning("fp16=True needs CUDA, which this machine lacks; running in %s instead.",
                       "bf16" if fallback else "fp32")
        return Precision(fallback, f"fp16=True without CUDA, so {'bf16' if fallback else 'fp32'}", tf32)
    if bf16:
        if hardware.kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16=True but this GPU has no bf16 support; use fp16=True or leave both unset")
        return Precision(torch.bfloat16, "bf16=True", tf32)
    if bf16 is None and fp16 is None:
        if hardware.kind == "cuda" and hardware.tf32 and tf32 is None:
            return Precision(None, "default on this GPU: fp32 weights, TF32 matmuls; bf16=True or tf32=False to "
                                   "change", True)
        if hardware.kind != "cuda" and hardware.fast_bf16:
            return Precision(torch.bfloat16, f"default: fast bf16 on this {device.type}{speedup_note(hardware)}; "
                                             "bf16=False turns it off", tf32)
    reason = ("bf16=False" if bf16 is False else "tf32=True" if tf32
              else f"default: no fast bf16 here{speedup_note(hardware)}")
    return Precision(None, reason, tf32)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as JSON-able values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def check_rng_state(state: Any) -> None:
    """Raise `ValueError` or `TypeError` unless `set_rng_state(state)` would succeed; sets nothing (each state is
    tried on a generator of its own)."""
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= state.keys():
        raise TypeError("not an object with the python, numpy and torch generators' states")
    py_version, py_internal, py_gauss = state["python"]
    random.Random().setstate((py_version, tuple(py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.RandomState().set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.Generator().set_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if not isinstance(state.get("cuda", []), list):
        raise TypeError("its cuda states are not a list")


@dataclass(frozen=True)
class Launch:
    """The torchrun launch this process belongs to, from the environment torchrun gives its workers.

    Attributes:
        id: torchrun's rendezvous id (`--rdzv-id`; a fresh one for every `--standalone` launch), kept across the
            restarts of one launch and recorded in its checkpoints. None outside torchrun; `"none"` is torchrun's
            default for launches without `--rdzv-id`, shared by all of them.
        restarts: how many times torchrun restarted the worker group after a failure (`--max-restarts`).
        rank, local_rank, world_size: this process's place, as the launcher set it (`RANK`, `LOCAL_RANK`,
            `WORLD_SIZE`; 0, 0 and 1 without one). `TrainingArguments` reads them once, through this; a started
            `Runtime` has them from its process group.
    """

    id: str | None = None
    restarts: int = 0
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Launch:
        env = os.environ
        return cls(env.get("TORCHELASTIC_RUN_ID"), int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
                   int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1")))

    @property
    def restarted(self) -> bool:
        return self.restarts > 0


class Runtime:
    """What differs between one process and many: device, precision, rank and world, reductions, `no_sync`,
    model wrapping, barriers, and which rank writes. This is the single-process form: every method is the identity
    or does nothing, and nothing here touches `torch.distributed` (see `finch.distributed.torchrun.DistributedRuntime`).

    Args:
        device: where the model and batches live.
        precision: the autocast dtype and whether a gradient scaler is needed.
    """

    rank = 0
    local_rank = 0
    world_size = 1
    sharded = False  # FSDP2: each rank holds a shard of every parameter (finch.distributed.fsdp)
    sharded_checkpoints = False  # FSDP2: checkpoints hold every rank's shards, never the gathered whole

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.device, self.precision = device, precision
        self.launch = Launch.from_environment()  # torchrun's launch id and restarts (also with one process)

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes the run's artifacts (checkpoints, logs, models): rank 0."""
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_rank == 0

    def describe(self) -> str:
        return str(self.device)

    def seed_rank(self, seed: int, step: int = 0) -> None:
        """Give this rank its own random stream for dropout (rank 0, and one process, keep the one they have)."""

    def shard(self, model: torch.nn.Module, args: Any) -> None:
        """Shard `model` in place across the ranks (FSDP2), before the optimizer sees its parameters."""

    def full_state(self, model: torch.nn.Module, optimizer: Any) -> tuple[dict | None, dict | None]:
        """What a checkpoint saves of the model and the optimizer, on the rank that writes: (None, None) where it
        saves the objects as they are; under FSDP2 full state dicts gathered from the shards (every rank calls)."""
        return None, None

    def gathered(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Inside, each rank holds the whole model, so ranks may run different numbers of forwards (evaluation)."""
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module, args: Any) -> torch.nn.Module:
        """The module the training forward runs on (DDP in many processes); its parameters are `model`'s."""
        return model

    def no_sync(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Around a micro-step's forward and backward: gradients are reduced across ranks only when `sync`."""
        return contextlib.nullcontext()

    def sum_ints(self, *values: int) -> tuple[int, ...]:
        """Each value summed over all ranks (a host sync in many processes)."""
        return values

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all ranks (in place in many processes); no host sync."""
        return tensor

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """A device boolean that is True where it is True on every rank; no host sync."""
        return flag

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag, whether any rank has it set: one collective for all of them."""
        return tuple(bool(flag) for flag in flags)

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable, from finch's own processes), in rank order."""
        return [value]

    def on_main(self, decide: Callable[[], Any]) -> Any:
        """`decide()` run on rank 0 and its result (or the user error it raised) given to every rank, so that all
        ranks take the same decision from files that only rank 0 may see the same way (a shared folder)."""
        return decide()

    def on_writers(self, write: Callable[[], Any], every_node: bool) -> None:
        """`write()` run by the process that writes checkpoints and models, and every rank goes on once it is done
        (or raises its error): rank 0, or with `every_node` (`save_on_each_node`) the first process of each
        machine, each writing to its own disk."""
        self.on_main(write)

    def barrier(self) -> None:
        """Wait until every rank gets here."""

