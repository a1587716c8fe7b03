"""Every example runs with --quick and prints sane results; the hand-written loop equals the Trainer bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path, *flags: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--output-dir",
                           str(tmp_path / name), *flags], capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith(f"RESULT {name} "))
    return json.loads(line.split(" ", 2)[2])


def sane(result: dict) -> None:
    assert 0.5 <= result["accuracy"] <= 1 and 0 <= result["f1"] <= 1


@pytest.mark.slow
def test_manual_loop_equals_trainer_bit_for_bit(tmp_path, mrpc_dir):
    trainer = run_example("trainer_mrpc", tmp_path, "--fp32", "--data", str(mrpc_dir))
    manual = run_example("manual_loop", tmp_path, "--fp32", "--data", str(mrpc_dir))
    sane(trainer)
    assert trainer["steps"] == manual["steps"] == 25
    assert (trainer["accuracy"], trainer["f1"]) == (manual["accuracy"], manual["f1"])
    a = safetensors.torch.load_file(Path(trainer["model"]) / "model.safetensors")
    b = safetensors.torch.load_file(Path(manual["model"]) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_early_stopping_example_stops_early_and_keeps_the_best(tmp_path, mrpc_dir):
    result = run_example("early_stopping", tmp_path, "--data", str(mrpc_dir))
    sane(result)
    assert result["stopped_at"] < result["max_steps"]
    assert result["final_f1"] == pytest.approx(result["best_f1"])  # the best checkpoint was loaded at the end


@pytest.mark.slow
def test_class_imbalance_example_weights_the_minority_class(tmp_path, mrpc_dir):
    result = run_example("class_imbalance", tmp_path, "--data", str(mrpc_dir))
    sane(result)
    minority, majority = result["class_weights"]
    assert minority > 1 > majority


@pytest.mark.slow
def test_freeze_base_example_trains_only_the_head(tmp_path, mrpc_dir):
    result = run_example("freeze_base", tmp_path, "--data", str(mrpc_dir))
    sane(result)
    assert result["encoder_unchanged"] and result["trainable"] == 384 * 2 + 2


@pytest.mark.slow
def test_pipeline_example_returns_label_names(tmp_path, mrpc_dir):
    result = run_example("pipeline_inference", tmp_path, "--data", str(mrpc_dir))
    assert set(result["labels"]) <= {"equivalent", "not_equivalent"} and len(result["labels"]) == 2
    assert all(0.5 <= score <= 1 for score in result["scores"])


@pytest.mark.slow
def test_custom_module_example_learns(tmp_path, mrpc_dir):
    result = run_example("custom_model", tmp_path, "--data", str(mrpc_dir))
    sane(result)
