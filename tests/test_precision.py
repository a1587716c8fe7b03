"""Precision chosen from the user's bf16 / fp16 / tf32 and the hardware's facts (`Hardware`), and TF32 applied."""

import json
import logging

import pytest
import torch

from finch.distributed.runtime import Hardware, choose_precision

GPU = Hardware("cuda", fast_bf16=True, tf32=True)  # Ampere or later
OLD_GPU = Hardware("cuda", fast_bf16=False, tf32=False)  # Volta/Turing
BF16_CPU = Hardware("cpu", fast_bf16=True, tf32=False)  # AMX / AVX-512-bf16
CPU = Hardware("cpu", fast_bf16=False, tf32=False)
cuda, cpu = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize(("hardware", "device", "name", "dtype", "tf32"), [
    (GPU, cuda, "tf32", None, True),  # fp32 weights, TF32 matmuls: measured faster than bf16 autocast
    (OLD_GPU, cuda, "fp32", None, None),
    (BF16_CPU, cpu, "bf16", torch.bfloat16, None),
    (CPU, cpu, "fp32", None, None),
])
def test_the_default_follows_the_hardware(hardware, device, name, dtype, tf32):
    precision = choose_precision(None, None, device, hardware=hardware)
    assert (precision.name, precision.dtype, precision.tf32) == (name, dtype, tf32)
    assert not precision.needs_scaler


def test_the_users_choices_win_over_the_default():
    assert choose_precision(None, None, cuda, tf32=False, hardware=GPU).name == "fp32"
    assert choose_precision(None, None, cuda, tf32=False, hardware=GPU).tf32 is False  # switched off, not left
    assert choose_precision(False, None, cuda, hardware=GPU).name == "fp32"  # bf16=False alone: plain fp32
    fp16 = choose_precision(None, True, cuda, hardware=GPU)
    assert (fp16.dtype, fp16.needs_scaler, fp16.tf32) == (torch.float16, True, None)
    assert choose_precision(None, True, cuda, tf32=True, hardware=GPU).tf32 is True  # fp16 and TF32 together
    assert choose_precision(False, None, cpu, hardware=BF16_CPU).name == "fp32"
    assert choose_precision(True, None, cpu, hardware=CPU).dtype == torch.bfloat16  # asked: emulated, but asked


@pytest.mark.parametrize("hardware", [CPU, OLD_GPU])
def test_tf32_without_an_ampere_gpu_warns_and_changes_nothing(hardware, caplog):
    device = cuda if hardware.kind == "cuda" else cpu
    with caplog.at_level(logging.WARNING, logger="finch"):
        precision = choose_precision(None, None, device, tf32=True, hardware=hardware)
    assert precision.tf32 is None and precision.name == "fp32"
    assert "tf32=True needs an Ampere or newer GPU" in caplog.text


def test_fp16_without_cuda_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="finch"):
        assert choose_precision(None, True, cpu, hardware=BF16_CPU).dtype == torch.bfloat16
        assert choose_precision(None, True, cpu, hardware=CPU).dtype is None
    assert caplog.text.count("fp16=True needs CUDA") == 2


def test_apply_sets_torchs_tf32_switches_only_when_decided():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        choose_precision(None, None, cuda, hardware=GPU).apply()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        choose_precision(None, None, cpu, hardware=CPU).apply()  # undecided: left as they are
        assert torch.backends.cuda.matmul.allow_tf32
        choose_precision(None, None, cuda, tf32=False, hardware=GPU).apply()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_hf_tf32_argument_is_taken_and_checked(tmp_path):
    from finch import TrainingArguments
    from finch.errors import ConfigError

    assert TrainingArguments(output_dir=str(tmp_path), tf32=True).tf32 is True
    with pytest.raises(ConfigError):
        TrainingArguments(output_dir=str(tmp_path), tf32="fast")


@pytest.mark.parametrize(("speedup", "name"), [(0.56, "fp32"), (1.7, "bf16")])
def test_a_cpu_with_bf16_instructions_gets_bf16_only_where_it_measures_faster(monkeypatch, speedup, name):
    """AVX-512-bf16 without AMX ran bf16 autocast at about half fp32's speed: the flags alone must not decide."""
    from finch.distributed import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: True)
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: speedup)
    precision = choose_precision(None, None, cpu)
    assert precision.name == name
    assert f"bf16 measured {speedup:.2f}x fp32" in precision.reason  # the header says why


def test_the_cpu_measurement_is_kept_per_machine(monkeypatch, tmp_path):
    """Measured once and kept: every run on a machine makes the same choice, even when a busy moment would have
    read the timing differently."""
    from finch.distributed import runtime

    monkeypatch.setenv("FINCH_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: True)
    timings = iter([0.5, 2.0])
    monkeypatch.setattr(runtime, "measure_bf16_speedup", lambda: next(timings))
    runtime.cpu_bf16_speedup.cache_clear()
    try:
        assert runtime.cpu_bf16_speedup() == 0.5
        runtime.cpu_bf16_speedup.cache_clear()
        assert runtime.cpu_bf16_speedup() == 0.5, "a second process reads the first one's measurement"
        assert list(json.loads((tmp_path / "cpu_bf16.json").read_text()).values()) == [0.5]
        monkeypatch.setenv("FINCH_CACHE", "off")
        runtime.cpu_bf16_speedup.cache_clear()
        assert runtime.cpu_bf16_speedup() == 2.0
    finally:
        runtime.cpu_bf16_speedup.cache_clear()


def test_the_cpu_measurement_times_the_two_precisions():
    from finch.distributed.runtime import measure_bf16_speedup, time_linear

    assert 0 < time_linear(None, calls=1) < 1
    assert 0 < time_linear(torch.bfloat16, calls=1) < 1
    assert 0 < measure_bf16_speedup(rounds=1) < 100
