"""push_to_hub: real training runs against a recording stand-in for `huggingface_hub.HfApi` (the network boundary,
tests/hub_standin.py, is the only thing replaced)."""

import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_dataset, tiny_bert
from hub_standin import Recorder

from finch import Trainer, TrainerCallback, TrainingArguments
from finch.cli.commands import main
from finch.errors import ConfigError

SECRET = "hf_SeCrEtToKeN0123456789abcdefXYZ"
TRAINING_STATE = {"optimizer.pt", "scheduler.json", "scaler.json", "rng_state.json", "trainer_state.json",
                  "manifest.json"}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The hub reachable as far as finch can tell (the suite runs with HF_HUB_OFFLINE=1), no token stored anywhere
    (HF_TOKEN unset, the token file a missing path), and the stand-in installed."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return Recorder().install(monkeypatch)


class WaitAtSaves(TrainerCallback):
    """Waits at each save for its uploads, then marks the save in the recorder's events: the events then say which
    uploads each save made (none is replaced by the next save's, as a slow hub could)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder, self.trainer = recorder, None

    def on_save(self, args, state, control, **kwargs):
        self.trainer.hub.wait()
        self.recorder.events.append(("saved", state.global_step))


def train(tmp_path, tokenizer, recorder, wait=True, **overrides):
    data = sentiment_dataset(tokenizer, rows=48)
    values = {"output_dir": str(tmp_path / "run"), "bf16": False, "max_steps": 6, "logging_steps": 2,
              "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2,
              "per_device_train_batch_size": 8, "disable_tqdm": True, "learning_rate": 2e-3, "seed": 3,
              "push_to_hub": True, "hub_model_id": "someone/tiny", "hub_token": SECRET}
    waiter = WaitAtSaves(recorder)
    trainer = Trainer(model=tiny_bert(), args=TrainingArguments(**{**values, **overrides}), train_dataset=data,
                      eval_dataset=data.select(range(16)), processing_class=tokenizer,
                      callbacks=[waiter] if wait else [])
    waiter.trainer = trainer
    trainer.train()
    return trainer


def model_files(tokenizer, tmp_path) -> set[str]:
    """What a model upload holds: the saved model and tokenizer, the arguments and the model card."""
    folder = tmp_path / "expected-model"
    tiny_bert().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {p.name for p in folder.iterdir()} | {"training_args.json", "README.md"}


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint", "all_checkpoints"])
def test_each_strategy_uploads_exactly_the_expected_files_at_each_save(online, tmp_path, tokenizer, strategy):
    trainer = train(tmp_path, tokenizer, online, hub_strategy=strategy, save_total_limit=1)
    model = model_files(tokenizer, tmp_path)
    checkpoint = model - {"README.md"} | TRAINING_STATE
    expected = []  # in order: the uploads of the saves at 2, 4 and 6, each save marked after them; the final upload
    for step in (2, 4, 6):
        if strategy != "end":
            expected.append(("upload", "", f"Training in progress, step {step}"))
        if strategy in ("checkpoint", "all_checkpoints"):
            place = "last-checkpoint" if strategy == "checkpoint" else f"checkpoint-{step}"
            expected.append(("upload", place, f"Training in progress, step {step}, checkpoint"))
        expected.append(("saved", step))
    expected.append(("upload", "", "End of training"))
    assert online.events == expected
    assert online.calls[0] == ("create_repo", {"repo_id": "someone/tiny", "private": None, "exist_ok": True})
    for upload in online.uploads:
        assert upload.repo_id == "someone/tiny" and not upload.failed
        if upload.path_in_repo:  # a checkpoint strategy's checkpoint folder: the whole checkpoint, training state too
            assert upload.names == {f"{upload.path_in_repo}/{name}" for name in checkpoint}
        elif upload.message == "End of training":  # output_dir's files, never its checkpoint folders
            assert upload.names == model | {"log.jsonl"}
        else:
            assert upload.names == model
        card = upload.files.get("README.md", b"").decode()
        if card:  # valid hub metadata, the metrics and the arguments
            assert yaml.safe_load(card.split("---")[1])["tags"] == ["finch"]
            assert "## Evaluation results" in card and "| loss |" in card and "| learning_rate | 0.002 |" in card
            assert "hub_token" not in card
    final, last_evaluation = online.uploads[-1], [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    card = final.files["README.md"].decode()
    assert f"| loss | {last_evaluation['eval_loss']:.4g} |" in card and f"At step {last_evaluation['step']}:" in card
    assert f"| hub_strategy | {strategy} |" in card or strategy == "every_save"  # the default is not listed
    assert trainer.state.global_step == 6
    run = Path(trainer.args.output_dir)
    assert not (run / ".hub-uploads").exists()  # staged copies are gone once sent
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-6"]  # rotation unaffected by the uploads


def test_a_failed_upload_mid_training_is_a_warning_and_is_retried_at_the_end(online, tmp_path, tokenizer, caplog):
    # the first attempt of every upload at step 2 fails (the model and checkpoint-2)
    online.fail = lambda upload: "step 2" in upload.message and not any(
        u.message == upload.message and u.path_in_repo == upload.path_in_repo for u in online.uploads)
    stale = tmp_path / "run" / ".hub-uploads" / "checkpoint-99-model"  # left by a killed run: cleared at the start
    stale.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="finch"):
        trainer = train(tmp_path, tokenizer, online, hub_strategy="all_checkpoints")
    assert trainer.state.global_step == 6  # training went on
    warnings = [r.getMessage() for r in caplog.records if "hub: upload" in r.getMessage()]
    assert len(warnings) == 2 and all("retried at the end" in w and "503" in w for w in warnings)
    attempts = [(u.path_in_repo, u.message, u.failed) for u in online.uploads]
    assert attempts[:2] == [("", "Training in progress, step 2", True),
                            ("checkpoint-2", "Training in progress, step 2, checkpoint", True)]
    # at the end: checkpoint-2 again (nothing else holds it), not the step-2 model (the final upload is newer)
    assert attempts[-2:] == [("checkpoint-2", "Training in progress, step 2, checkpoint", False),
                             ("", "End of training", False)]
    assert sum(1 for u in online.uploads if u.path_in_repo == "" and "step 2" in u.message) == 1
    retried = online.uploads[-2]
    assert "checkpoint-2/optimizer.pt" in retried.names
    assert not (Path(trainer.args.output_dir) / ".hub-uploads").exists()


def test_the_final_upload_failing_is_a_warning_but_an_explicit_push_raises(online, tmp_path, tokenizer, caplog):
    from huggingface_hub.errors import HfHubHTTPError

    online.fail = lambda upload: True
    with caplog.at_level(logging.WARNING, logger="finch"):
        trainer = train(tmp_path, tokenizer, online, hub_strategy="end")
    assert any("the upload at the end of training failed" in r.getMessage() for r in caplog.records)
    assert (Path(trainer.args.output_dir) / "model.safetensors").exists()  # the model is saved locally all the same
    with pytest.raises(HfHubHTTPError):
        trainer.push_to_hub()


def test_push_to_hub_returns_commit_info_or_its_future(online, tmp_path, tokenizer):
    data = sentiment_dataset(tokenizer, rows=16)
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), bf16=False, max_steps=2, save_strategy="no",
                             disable_tqdm=True, hub_model_id="tiny-repo", hub_private_repo=True, hub_revision="exp")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()  # push_to_hub=False: nothing is uploaded, no repo is created
    assert online.calls == []
    online.tokens.clear()
    info = trainer.push_to_hub(commit_message="first", token=SECRET, license="mit", tags=["demo"])
    assert info.commit_message == "first" and info.oid
    assert online.tokens == [SECRET]  # the token reaches HfApi, and nothing else
    assert online.calls[:2] == [("create_repo", {"repo_id": "tiny-repo", "private": True, "exist_ok": True}),
                                ("create_branch", {"repo_id": "someone/tiny-repo", "branch": "exp"})]
    upload = online.uploads[-1]
    assert upload.revision == "exp" and upload.repo_id == "someone/tiny-repo"
    card = yaml.safe_load(upload.files["README.md"].decode().split("---")[1])
    assert card["license"] == "mit" and card["tags"] == ["finch", "demo"]
    future = trainer.push_to_hub(commit_message="second", blocking=False, token=SECRET)
    assert isinstance(future, Future) and future.result(timeout=30).commit_message == "second"
    with pytest.raises(TypeError, match="unknown model card fields"):
        trainer.push_to_hub(token=SECRET, colour="blue")


def test_a_waiting_upload_is_replaced_by_a_newer_one(online, tmp_path, tokenizer):
    """A slow hub builds no backlog: while step 2's model upload is in flight, step 4's waits, and step 6's takes
    its place; every checkpoint of all_checkpoints is still sent (each has its own folder in the repository)."""
    online.gate = threading.Event()
    released = threading.Timer(1.0, online.gate.set)
    saves = []

    class ReleaseAtTheEnd(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saves.append(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            released.start()

    data = sentiment_dataset(tokenizer, rows=48)
    args = TrainingArguments(output_dir=str(tmp_path / "slow"), bf16=False, max_steps=6, save_strategy="steps",
                             save_steps=2, per_device_train_batch_size=8, disable_tqdm=True, push_to_hub=True,
                             hub_model_id="someone/slow", hub_token=SECRET, hub_strategy="all_checkpoints")
    Trainer(model=tiny_bert(), args=args, train_dataset=data, processing_class=tokenizer,
            callbacks=[ReleaseAtTheEnd()]).train()
    sent = [(u.path_in_repo, u.message) for u in online.uploads]
    assert saves == [2, 4, 6]
    assert sent == [("", "Training in progress, step 2"),
                    ("checkpoint-2", "Training in progress, step 2, checkpoint"),
                    ("checkpoint-4", "Training in progress, step 4, checkpoint"),
                    ("", "Training in progress, step 6"),
                    ("checkpoint-6", "Training in progress, step 6, checkpoint"),
                    ("", "End of training")]


def test_offline_or_no_token_is_a_config_error_when_the_trainer_is_built(online, monkeypatch, tmp_path, tokenizer):
    data = sentiment_dataset(tokenizer, rows=16)

    def build(**values):
        args = TrainingArguments(output_dir=str(tmp_path / "o"), push_to_hub=True, hub_model_id="someone/x", **values)
        return Trainer(model=tiny_bert(), args=args, train_dataset=data, processing_class=tokenizer)

    with pytest.raises(ConfigError, match="needs a HuggingFace token"):
        build()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=1: the hub cannot be reached"):
        build(hub_token=SECRET)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", SECRET)  # HF's own token lookup is used when hub_token is unset
    assert build().hub.repo_id == "someone/x"
    assert online.calls == [("create_repo", {"repo_id": "someone/x", "private": None, "exist_ok": True})]
    assert not (tmp_path / "o").exists()  # nothing written by a refused or an untrained Trainer
    with pytest.raises(ConfigError, match="hub_strategy='sometimes' is not one of"):
        TrainingArguments(hub_strategy="sometimes")


@pytest.mark.slow
def test_finch_train_push_to_hub_never_writes_the_token(online, monkeypatch, tmp_path, tiny_model_dir, capsys,
                                                         caplog):
    """The token on the command line: uploaded where it should be, and in no file of the run (arguments, logs,
    finch_config.yaml, checkpoints, the model card, the report, TensorBoard, MLflow and W&B), nor in the output."""
    from test_cli import FAST, reviews, write_csv

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    train_file = write_csv(tmp_path / "train.csv", reviews(48))
    out = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        code = main(["train", "--model", tiny_model_dir, "--train", train_file, "--output-dir", str(out), *FAST,
                     "--push-to-hub", "--hub-model-id", "someone/cli-run", "--hub-token", SECRET,
                     "--hub-strategy", "checkpoint", "--report-to", "tensorboard", "mlflow", "wandb"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert online.tokens and set(online.tokens) == {SECRET}
    assert [u.path_in_repo for u in online.succeeded()][-1] == "" and "last-checkpoint" in \
        {u.path_in_repo for u in online.uploads}
    searched = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "finch_config.yaml" for p in searched) and any(p.name == "mlflow.db" for p in searched)
    assert any("wandb" in p.parts for p in searched) and any("events.out.tfevents" in p.name for p in searched)
    holding = [str(p) for p in searched if SECRET.encode() in p.read_bytes()]
    assert holding == []
    assert all(SECRET.encode() not in content for u in online.uploads for content in u.files.values())
    assert SECRET not in printed.out + printed.err + caplog.text
    assert json.loads((out / "training_args.json").read_text())["hub_token"] == "<redacted>"


def test_finch_train_offline_push_is_refused_before_the_data_is_read(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["train", "--train", str(tmp_path / "missing.csv"), "--output-dir", str(tmp_path / "o"),
                 "--push-to-hub", "--hub-model-id", "someone/x"])
    assert code == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1" in err and "missing.csv" not in err  # the hub is checked before the data


@pytest.mark.slow
def test_only_rank_zero_uploads(tmp_path):
    out = tmp_path / "ranks"
    root = str(Path(__file__).resolve().parents[1])
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(Path(__file__).parent / "hub_worker.py"), str(out)], env=environment,
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = (json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert second == {"calls": [], "push_result": None, "global_step": 4}
    assert first["global_step"] == 4 and first["push_result"] is not None
    # the saves at steps 2 and 4, the end of train(), then the worker's own push_to_hub()
    assert first["calls"] == [["create_repo", {"repo_id": "someone/ranks", "private": None, "exist_ok": True}],
                              *[["upload_folder", {"path_in_repo": "", "message": message, "failed": False}]
                                for message in ("Training in progress, step 2", "Training in progress, step 4",
                                                "End of training", "again")]]


@pytest.mark.parametrize("name", ["me/my model", "../../etc", "me/x/y", "me/x."])
def test_a_hub_model_id_the_hub_refuses_is_said_before_the_data_is_read(online, tmp_path, capsys, name):
    code = main(["train", "--train", str(tmp_path / "missing.csv"), "--output-dir", str(tmp_path / "o"),
                 "--push-to-hub", "--hub-model-id", name, "--hub-token", SECRET])
    err = capsys.readouterr().err
    assert code == 2 and f"hub_model_id={name!r} is not a hub repository name" in err, err
    assert "--hub-model-id namespace/name" in err and "missing.csv" not in err and "Traceback" not in err
    assert online.calls == []


def test_an_unreachable_hub_is_one_clear_error(monkeypatch, tmp_path, tokenizer):
    """No stand-in: the real client against a port nothing listens on, a token set (the network is the user's)."""
    import huggingface_hub.constants

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, at import
    args = TrainingArguments(output_dir=str(tmp_path / "o"), push_to_hub=True, hub_model_id="someone/x",
                             hub_token=SECRET)
    with pytest.raises(ConfigError, match=r"could not be created or reached \(ConnectError.*Check the network") as got:
        Trainer(model=tiny_bert(), args=args, train_dataset=sentiment_dataset(tokenizer, rows=8),
                processing_class=tokenizer)
    assert SECRET not in str(got.value)


def test_hub_options_without_push_to_hub_are_one_warning_that_they_do_nothing(tmp_path, tokenizer, caplog):
    """HF's Trainer takes --hub-model-id without --push-to-hub silently: a user who meant to upload finds nothing."""
    args = TrainingArguments(output_dir=str(tmp_path / "run"), hub_model_id="me/model", hub_revision="dev")
    with caplog.at_level("WARNING", logger="finch"):
        for _ in range(2):  # a search builds a trainer per trial: said once
            Trainer(model=tiny_bert(), args=args, processing_class=tokenizer)
    said = [record.getMessage() for record in caplog.records if "without push_to_hub" in record.getMessage()]
    assert said == [("hub_model_id, hub_revision (--hub-model-id --hub-revision) set without push_to_hub "
                    "(--push-to-hub): no effect, nothing is uploaded; add --push-to-hub to upload, or drop them")]
    caplog.clear()
    with caplog.at_level("WARNING", logger="finch"):
        Trainer(model=tiny_bert(), args=TrainingArguments(output_dir=str(tmp_path / "other")),
                processing_class=tokenizer)
    assert "push_to_hub" not in caplog.text
