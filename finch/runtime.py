"""Device, precision choice, seeding and RNG state (saved as JSON, never pickled)."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from finch.errors import ConfigError

logger = logging.getLogger("finch")


def choose_device(use_cpu: bool = False) -> torch.device:
    """CUDA when present (and not refused with `use_cpu`), else the CPU."""
    if not use_cpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512-bf16, where bf16 matmuls run about 1.7x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8  # Ampere and later
    return device.type == "cpu" and cpu_has_fast_bf16()


@dataclass(frozen=True)
class Precision:
    """What the loop runs in: `dtype` for autocast (None: fp32) and whether fp16 needs a gradient scaler."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def choose_precision(bf16: bool | None, fp16: bool | None, device: torch.device) -> Precision:
    """Resolve the user's `bf16` / `fp16` (True, False or unset) against the hardware.

    Unset both: bf16 where it is fast (CUDA Ampere+, CPUs with AMX/AVX-512-bf16), else fp32.
    `fp16=True` without CUDA (a common tutorial line) warns and falls back to bf16 where supported, else fp32.
    """
    if fp16:
        if device.type == "cuda":
            return Precision(torch.float16, "fp16=True")
        fallback = torch.bfloat16 if has_fast_bf16(device) else None
        logger.warning("fp16=True needs CUDA, which this machine lacks; running in %s instead.",
                       "bf16" if fallback else "fp32")
        return Precision(fallback, f"fp16=True without CUDA, so {'bf16' if fallback else 'fp32'}")
    if bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16=True but this GPU has no bf16 support; use fp16=True or leave both unset")
        return Precision(torch.bfloat16, "bf16=True")
    if bf16 is None and fp16 is None and has_fast_bf16(device):
        return Precision(torch.bfloat16, f"default: fast bf16 on this {device.type}; bf16=False turns it off")
    return Precision(None, "bf16=False" if bf16 is False else "default: no fast bf16 here")


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
