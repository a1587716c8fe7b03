"""`finch train --nproc-per-node 2`: the CLI relaunches itself through torchrun; one writer per file. Two machines
simulated on this one: two torchrun agents (`--nnodes 2`, one process each) meeting at 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
from test_cli import FAST, reviews, write_csv
from test_distributed import RUN_TIMEOUT, environment

from finch.distributed.torchrun import launch_command, without_launch_flags
from finch.runs.folders import checkpoints, verify, world_size_of

# Imported first by every Python process started with this folder on PYTHONPATH: in a torchrun worker (RANK set) it
# records each file written, renamed, created or removed under FINCH_AUDIT_WATCH, one line per event, in
# FINCH_AUDIT_LOG-<rank>. Python's audit hooks see finch's writes without any hook in finch.
AUDIT = '''
import os, sys
_watch, _log = os.environ.get("FINCH_AUDIT_WATCH"), os.environ.get("FINCH_AUDIT_LOG")
if _watch and _log and "RANK" in os.environ:
    _file = open(_log + "-" + os.environ["RANK"], "a", buffering=1)
    _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _hook(event, args):
        if event == "open" and isinstance(args[2], int) and args[2] & _writing:
            path = args[0]
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            path = args[0]
        else:
            return
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(_watch):
            target = " -> " + os.fspath(args[1]) if event == "os.rename" else ""
            _file.write(event + " " + os.fspath(path) + target + "\\n")
    sys.addaudithook(_hook)
'''


def test_launch_command_passes_the_training_flags_through():
    argv = ["train", "--nproc-per-node", "2", "--train", "t.csv", "--max-restarts=3", "--learning-rate", "1e-3"]
    kept = without_launch_flags(argv)
    assert kept == ["train", "--train", "t.csv", "--learning-rate", "1e-3"]
    command = launch_command(kept, {"nproc_per_node": 2, "max_restarts": 3})
    assert command[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--max-restarts=3"]
    assert command[-7:] == ["-m", "finch.cli", *kept]
    nodes = launch_command(kept, {"nproc_per_node": 8, "nnodes": 2, "node_rank": 1, "rdzv_endpoint": "n0:29500",
                                  "rdzv_id": "job-7"})
    assert "--nnodes=2" in nodes and "--node-rank=1" in nodes and "--rdzv-endpoint=n0:29500" in nodes
    assert "--rdzv-id=job-7" in nodes


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("data")
    return ["--train", write_csv(folder / "train.csv", reviews(37)),
            "--validation", write_csv(folder / "dev.csv", reviews(9, offset=37))]


def train_options(model: str, data: list[str], out: Path) -> list[str]:
    return ["--model", model, *data, "--output-dir", str(out), "--per-device-train-batch-size", "4",
            "--logging-steps", "1", "--ddp-timeout", "90", *FAST]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, tiny_model_dir, data_files) -> tuple[Path, str]:
    """`finch train --nproc-per-node 2` on 37 rows: the run folder and the launcher's stdout."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    result = subprocess.run([sys.executable, "-m", "finch.cli", "train", "--nproc-per-node", "2",
                             *train_options(tiny_model_dir, data_files, out)], check=False, env=environment(),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out, result.stdout


@pytest.mark.slow
def test_finch_train_with_two_processes(one_node):
    out, stdout = one_node
    assert stdout.count("final metrics on the validation set") == 1, "rank 0 alone reports"
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [entry["step"] for entry in logged if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5], "37 rows in global batches of 8: 5 steps, each logged once"
    saved = checkpoints(out)
    assert saved and verify(saved[-1]) is None and world_size_of(saved[-1]) == 2
    assert json.loads((out / "metrics.json").read_text())["eval_samples_per_second"] > 0
    assert (out / "model" / "config.json").exists()


def run_two_nodes(tmp_path: Path, model: str, data: list[str], outs: list[Path], *extra: str,
                  watch: Path) -> list[str]:
    """Two `finch train --nnodes 2 --nproc-per-node 1` agents on this machine, node i writing to `outs[i]`; each
    worker's writes under `watch` are recorded in tmp_path/writes-<rank>. Returns each agent's stdout."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "sitecustomize.py").write_text(AUDIT)
    env = environment()
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "audit"), env["PYTHONPATH"]]),
               FINCH_AUDIT_WATCH=str(watch), FINCH_AUDIT_LOG=str(tmp_path / "writes"))
    agents = [subprocess.Popen([sys.executable, "-m", "finch.cli", "train", "--nnodes", "2",
                                "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-endpoint",
                                f"127.0.0.1:{port}", "--rdzv-id", "nodes",
                                *train_options(model, data, outs[node]), *extra],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    try:
        results = [agent.communicate(timeout=RUN_TIMEOUT) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    for agent, (stdout, stderr) in zip(agents, results):
        assert agent.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return [stdout for stdout, _ in results]


def writes_of(tmp_path: Path, rank: int) -> list[str]:
    path = tmp_path / f"writes-{rank}"
    return path.read_text().splitlines() if path.exists() else []


def model_weights(folder: Path) -> dict:
    return safetensors.torch.load_file(str(folder / "model" / "model.safetensors"))


def assert_same_weights(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    assert all(found[name].equal(expected[name]) for name in expected), "not the 1-machine run's weights, bit for bit"


@pytest.mark.slow
def test_two_machines_write_through_rank_0_alone_and_equal_the_one_machine_run(tmp_path, tiny_model_dir, data_files,
                                                                             one_node):
    out = tmp_path / "run"
    stdouts = run_two_nodes(tmp_path, tiny_model_dir, data_files, [out, out], watch=out)
    assert sum(stdout.count("final metrics on the validation set") for stdout in stdouts) == 1
    assert writes_of(tmp_path, 1) == [], "rank 1 wrote into the shared run folder"
    written = writes_of(tmp_path, 0)
    assert any(line.endswith("/log.jsonl") for line in written)
    assert any(line.startswith("os.rename") and "/checkpoint-5" in line for line in written), written[-5:]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5], "each step logged once"
    assert verify(out / "checkpoint-5") is None and world_size_of(out / "checkpoint-5") == 2
    assert_same_weights(model_weights(out), model_weights(one_node[0]))


@pytest.mark.slow
def test_save_on_each_node_gives_each_machine_its_checkpoints_and_model_and_rank_0_the_logs(tmp_path, tiny_model_dir,
                                                                                          data_files, one_node):
    """Each simulated machine has its own folder (its own disk): both get the checkpoints and the model, bit for
    bit the same; the logs, metrics and options are written once, by rank 0."""
    outs = [tmp_path / "node0", tmp_path / "node1"]
    run_two_nodes(tmp_path, tiny_model_dir, data_files, outs, "--save-on-each-node", watch=tmp_path)
    for out in outs:
        assert [folder.name for folder in checkpoints(out)] == ["checkpoint-5"] and verify(out / "checkpoint-5") is None
        assert (out / "model" / "finch.json").exists(), "the model card beside each copy of the model"
        assert_same_weights(model_weights(out), model_weights(one_node[0]))
    logs = [out for out in outs if (out / "log.jsonl").exists()]
    assert len(logs) == 1 and (logs[0] / "metrics.json").exists() and (logs[0] / "finch_config.yaml").exists()
    other = outs[1 - outs.index(logs[0])]
    assert not (other / "metrics.json").exists() and not (other / "finch_config.yaml").exists()
    folders = [{Path(line.split()[1]).relative_to(tmp_path).parts[0] for line in writes_of(tmp_path, rank)
                if Path(line.split()[1]) != tmp_path} for rank in (0, 1)]  # (mkdir(parents=True) reaches tmp_path)
    assert sorted(map(sorted, folders)) == [["node0"], ["node1"]], "each machine wrote into its own folder only"
