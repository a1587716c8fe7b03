"""Trackers through their real libraries: an MLflow SQLite store, a W&B offline run folder, TensorBoard event files.

Each test trains a tiny BERT for a few steps and reads back what the tracker stored; resume tests train 4 steps
saving at 2, resume from 2 and check that every step is stored once (MLflow, TensorBoard and log.jsonl in one test:
the trainings are most of the time).
"""

import json
import logging
import struct
import time
from pathlib import Path

import pytest
from conftest import sentiment_dataset, tiny_bert

from finch import MLflowCallback, TensorBoardCallback, Trainer, TrainingArguments, WandbCallback
from finch.errors import ConfigError
from finch.observers.trackers import flatten, grouped_key
from finch.training.callbacks import JsonlLoggerCallback, reporters


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite store for the module: creating its tables takes seconds."""
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def data(tokenizer):
    return sentiment_dataset(tokenizer, rows=32)


def make_trainer(tmp_path, data, tokenizer, report_to, callbacks=None, **overrides):
    values = {"output_dir": str(tmp_path / "run"), "bf16": False, "max_steps": 4, "logging_steps": 1,
              "save_strategy": "steps", "save_steps": 2, "per_device_train_batch_size": 8, "disable_tqdm": True,
              "eval_strategy": "steps", "eval_steps": 2, "report_to": report_to, "seed": 3}
    values.update(overrides)
    return Trainer(model=tiny_bert(), args=TrainingArguments(**values), train_dataset=data,
                   eval_dataset=data.select(range(8)), processing_class=tokenizer, callbacks=callbacks)


def only(trainer, kind):
    found = [callback for callback in trainer.callback_handler.callbacks if type(callback) is kind]
    assert len(found) == 1, found
    return found[0]


def jsonl_steps(folder: Path, key: str) -> list[int]:
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if key in line]


# ---- choosing trackers -----------------------------------------------------------------------------------------------
def test_report_to_picks_trackers_and_all_means_every_installed_one(monkeypatch):
    import finch.observers.trackers

    assert [type(c) for c in reporters(["none"])] == [JsonlLoggerCallback]
    assert [type(c) for c in reporters(["tensorboard", "mlflow"])] == [JsonlLoggerCallback, MLflowCallback,
                                                                       TensorBoardCallback]
    monkeypatch.setattr(finch.observers.trackers, "installed_trackers", lambda: ["wandb", "tensorboard"])
    assert [type(c) for c in reporters(["all"])] == [JsonlLoggerCallback, WandbCallback, TensorBoardCallback]


def test_a_tracker_not_installed_is_a_config_error_naming_the_pip_command(monkeypatch, tmp_path, data, tokenizer):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'finch\[mlflow\]'"):
        make_trainer(tmp_path, data, tokenizer, "mlflow")
    with pytest.raises(ConfigError, match=r"pip install 'finch\[mlflow\]'"):
        make_trainer(tmp_path, data, tokenizer, "none", callbacks=[MLflowCallback])


def test_report_to_none_with_a_tracker_is_refused():
    with pytest.raises(ConfigError, match="names 'none' with trackers"):
        TrainingArguments(report_to=["none", "mlflow"])
    with pytest.raises(ConfigError, match="report_to='comet'"):
        TrainingArguments(report_to="comet")


def test_parameters_are_flattened_and_keys_grouped():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": "x"}) == {"a.b": 1, "a.c.d": None,
                                                                               "e": "[1, 2]", "f": "x"}
    assert [grouped_key(k) for k in ("loss", "eval_accuracy", "test_f1", "x/y")] == [
        "train/loss", "eval/accuracy", "test/f1", "x/y"]


# ---- MLflow ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resumed_run_has_every_step_once_in_mlflow_tensorboard_and_log_jsonl(mlflow_uri, monkeypatch, tmp_path, data,
                                                                                tokenizer):
    pytest.importorskip("tensorboard")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "finch-resume")
    monkeypatch.setenv("MLFLOW_TAGS", '{"team": "nlp"}')
    trainer = make_trainer(tmp_path, data, tokenizer, ["mlflow", "tensorboard"], run_name="first", learning_rate=1e-3)
    trainer.train()
    run_id = only(trainer, MLflowCallback).run["run_id"]
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["MLflowCallback"]["run_id"] == run_id

    resumed = make_trainer(tmp_path, data, tokenizer, ["mlflow", "tensorboard"], run_name="first", learning_rate=1e-3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert only(resumed, MLflowCallback).run["run_id"] == run_id
    only(resumed, TensorBoardCallback).close()

    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first" and run.data.tags["team"] == "nlp"
    assert client.get_experiment(run.info.experiment_id).name == "finch-resume"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["model.hidden_size"] == "32"
    for key in ("loss", "learning_rate", "grad_norm"):
        assert [point.step for point in client.get_metric_history(run_id, key)] == [1, 2, 3, 4], key
    assert [point.step for point in client.get_metric_history(run_id, "eval_loss")] == [2, 4]
    assert jsonl_steps(tmp_path / "run", "loss") == [1, 2, 3, 4]
    assert jsonl_steps(tmp_path / "run", "eval_loss") == [2, 4]
    assert jsonl_steps(tmp_path / "run", "train_runtime") == [4]
    events = EventAccumulator(str(tmp_path / "run" / "runs"))  # TensorBoard: the events after step 2 purged
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [event.step for event in events.Scalars("eval/loss")] == [2, 4]
    assert [event.step for event in events.Scalars("train/train_runtime")] == [4]


def test_mlflow_failure_is_one_warning_and_training_finishes(monkeypatch, tmp_path, data, tokenizer, caplog):
    pytest.importorskip("mlflow")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where MLflow wants a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocked}/mlflow.db")
    trainer = make_trainer(tmp_path, data, tokenizer, "mlflow", eval_strategy="no", save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="finch"):
        output = trainer.train()
    assert output.global_step == 4
    warnings = [r.getMessage() for r in caplog.records if "MLflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on without MLflow" in warnings[0], warnings
    assert jsonl_steps(tmp_path / "run", "loss") == [1, 2, 3, 4]


def test_an_mlflow_server_that_does_not_answer_is_one_warning_within_seconds(monkeypatch, tmp_path, data, tokenizer,
                                                                            caplog):
    """MLflow's client retries a refused connection for about 4 minutes, in silence, before the first step."""
    import socket
    import time

    pytest.importorskip("mlflow")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://me:secret@127.0.0.1:{port}/")
    trainer = make_trainer(tmp_path, data, tokenizer, "mlflow", eval_strategy="no", save_strategy="no")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finch"):
        output = trainer.train()
    assert time.monotonic() - started < 30 and output.global_step == 4
    warnings = [r.getMessage() for r in caplog.records if "MLflow failed" in r.getMessage()]
    assert len(warnings) == 1 and f"no tracking server answers at http://me:***@127.0.0.1:{port}/" in warnings[0]
    assert "secret" not in warnings[0]


def test_mlflow_long_parameters_are_cut_and_nested_runs_have_their_parent(mlflow_uri, monkeypatch, tmp_path, data,
                                                                          tokenizer):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "finch-search")
    client = MlflowClient(tracking_uri=mlflow_uri)
    parent = client.create_run(client.get_experiment_by_name("finch-search").experiment_id
                               if client.get_experiment_by_name("finch-search")
                               else client.create_experiment("finch-search"), run_name="study")
    callback = MLflowCallback(parent_run_id=parent.info.run_id)
    trainer = make_trainer(tmp_path, data, tokenizer, "none", callbacks=[callback], max_steps=1, eval_strategy="no",
                           save_strategy="no", run_name="x" * 9000)
    trainer.train()
    run = client.get_run(callback.run["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert 5000 < len(run.data.params["run_name"]) <= 6000 and run.data.params["run_name"].endswith("...")
    assert [point.step for point in client.get_metric_history(run.info.run_id, "loss")] == [1]


# ---- W&B -------------------------------------------------------------------------------------------------------------
def wandb_history(folder: Path) -> list[dict]:
    """The history rows of a W&B offline run folder (`run-<id>.wandb`: LevelDB-style log records of protobufs)."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(folder.glob("run-*.wandb")):
        content, records, position, pending = path.read_bytes(), [], 7, b""  # 7: ":W&B", magic, version
        while position + 7 <= len(content):
            block_left = 32768 - position % 32768
            if block_left < 7:  # a block's tail too short for a header is padding
                position += block_left
                continue
            length, kind = struct.unpack("<HB", content[position + 4:position + 7])
            pending += content[position + 7:position + 7 + length]
            position += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                records.append(pending)
                pending = b""
            elif kind == 0:
                break
        for data in records:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_run_resumes_its_id(monkeypatch, tmp_path, data, tokenizer):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_PROJECT", "finch-test")
    trainer = make_trainer(tmp_path, data, tokenizer, "wandb", run_name="wb")
    trainer.train()
    callback = only(trainer, WandbCallback)
    run_id = callback.run["run_id"]
    callback.close()
    resumed = make_trainer(tmp_path, data, tokenizer, "wandb", run_name="wb")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    only(resumed, WandbCallback).close()

    folders = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    # W&B names a run's folder offline-run-<time>-<id>, adding "-1" when both runs start within one second
    assert len(folders) == 2 and all(folder.name.split("-")[3] == run_id for folder in folders)
    # finish() can return before W&B's writer process has written the last records: read until they are there
    deadline = time.monotonic() + 20
    while len(second := wandb_history(folders[1])) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    first = wandb_history(folders[0])
    assert [row["_step"] for row in first if "train/loss" in row] == [1, 2, 3, 4]
    assert [row["_step"] for row in first if "eval/loss" in row] == [2, 4]
    assert [row["_step"] for row in second if "train/loss" in row] == [3, 4]  # the resumed run starts after step 2


def test_only_global_rank_zero_talks_to_a_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    from finch.state import TrainerControl, TrainerState

    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="tensorboard")
    callback, state = TensorBoardCallback(), TrainerState(is_world_process_zero=False, global_step=1)
    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"loss": 0.5})
    callback.on_train_end(args, state, TrainerControl())
    assert callback.run is None and not (tmp_path / "run").exists()


def a_file(root: Path) -> Path:
    (root / "events").write_text("mine")
    return root / "events"


def in_a_checkpoint(root: Path) -> Path:
    checkpoint = root / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "manifest.json").write_text("{}")
    return checkpoint / "tb"


@pytest.mark.parametrize("make, said", [(a_file, "is a file, not a folder"),
                                        (in_a_checkpoint, "is inside the checkpoint")])
def test_a_tensorboard_dir_that_cannot_be_written_is_refused_with_the_arguments(tmp_path, make, said):
    """Found when the arguments are made, not after the weights load as a warning that the run goes on without
    TensorBoard; a checkpoint's folder is never written to after its save."""
    folder = make(tmp_path)
    with pytest.raises(ConfigError, match=said):
        TrainingArguments(output_dir=str(tmp_path / "out"), report_to="tensorboard", tensorboard_dir=str(folder))
    TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", tensorboard_dir=str(folder))  # unused
    assert not folder.is_dir()


def test_a_misspelt_or_capitalised_tracker_gets_its_name():
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        TrainingArguments(output_dir="out", report_to="TensorBoard")
    with pytest.raises(ConfigError, match="did you mean 'mlflow'"):
        TrainingArguments(output_dir="out", report_to=["mlfow"])
