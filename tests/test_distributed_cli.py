"""`finch train --nproc-per-node 2`: the CLI relaunches itself through torchrun; one writer per file."""

from __future__ import annotations

import json
import subprocess
import sys

from test_cli import FAST, reviews, write_csv
from test_distributed import RUN_TIMEOUT, environment

from finch.checkpoint import checkpoints, verify, world_size_of
from finch.distributed import launch_command, without_launch_flags


def test_launch_command_passes_the_training_flags_through():
    argv = ["train", "--nproc-per-node", "2", "--train", "t.csv", "--max-restarts=3", "--learning-rate", "1e-3"]
    kept = without_launch_flags(argv)
    assert kept == ["train", "--train", "t.csv", "--learning-rate", "1e-3"]
    command = launch_command(kept, {"nproc_per_node": 2, "max_restarts": 3})
    assert command[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--max-restarts=3"]
    assert command[-7:] == ["-m", "finch.cli", *kept]
    nodes = launch_command(kept, {"nproc_per_node": 8, "nnodes": 2, "node_rank": 1, "rdzv_endpoint": "n0:29500"})
    assert "--nnodes=2" in nodes and "--node-rank=1" in nodes and "--rdzv-endpoint=n0:29500" in nodes


def test_finch_train_with_two_processes(tmp_path, tiny_model_dir):
    train = write_csv(tmp_path / "train.csv", reviews(37))
    dev = write_csv(tmp_path / "dev.csv", reviews(9, offset=37))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "finch.cli", "train", "--nproc-per-node", "2", "--model",
                             tiny_model_dir, "--train", train, "--validation", dev, "--output-dir", str(out),
                             "--per-device-train-batch-size", "4", "--logging-steps", "1", "--ddp-timeout", "90",
                             *FAST], check=False, env=environment(), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("final metrics on the validation set") == 1, "rank 0 alone reports"
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [entry["step"] for entry in logged if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5], "37 rows in global batches of 8: 5 steps, each logged once"
    saved = checkpoints(out)
    assert saved and verify(saved[-1]) is None and world_size_of(saved[-1]) == 2
    assert json.loads((out / "metrics.json").read_text())["eval_samples_per_second"] > 0
    assert (out / "model" / "config.json").exists()
