"""Model folders, hub names and input encodings checked before any weights load: what is missing or wrong is named
with the fix, pickled weights that hold code are refused unrun, and the input is never touched.
"""

import pickle
from pathlib import Path

import pytest
import torch
from conftest import digest, run_cli, tiny_bert
from test_cli import FAST, reviews, write_csv

from finch.cli.commands import main


def test_a_missing_model_folder_is_named(tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", str(tmp_path / "no-such-model"), "--train", train, *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "no-such-model: no such folder; pass the folder that holds config.json" in error


def test_a_model_folder_without_a_tokenizer_is_refused(tmp_path, capsys, no_weights_loaded):
    folder = tmp_path / "weights-only"
    tiny_bert().save_pretrained(folder)
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", str(folder), "--train", train, "--output-dir", str(tmp_path / "o"), *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "the folder lacks a tokenizer (tokenizer.json, vocab.txt, vocab.json...)" in error
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("encoding, message", [("utf-16", "--encoding utf-16 needs a byte-order mark"),
                                               ("rot13", "encoding 'rot13': not a text encoding")])
def test_an_encoding_that_does_not_fit_is_exit_2_before_anything_is_written(tmp_path, capsys, tiny_model_dir,
                                                                            encoding, message):
    train = write_csv(tmp_path / "t.csv", reviews(20))
    before = digest(Path(train))
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                 "--encoding", encoding, *FAST])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error, error
    assert digest(Path(train)) == before and not (tmp_path / "o").exists()


def test_a_run_folder_given_as_the_model_points_to_its_model(tmp_path, capsys, tiny_model_dir):
    run = tmp_path / "run"  # what finch train writes: the model sits in run/model
    (run / "model").mkdir(parents=True)
    for item in Path(tiny_model_dir).iterdir():
        (run / "model" / item.name).write_bytes(item.read_bytes())
    (run / "metrics.json").write_text("{}")
    train = write_csv(tmp_path / "t.csv", reviews(20))
    assert main(["train", "--model", str(run), "--train", train, "--output-dir", str(tmp_path / "o"), *FAST]) == 2
    assert f"--model {run}: this is a run's output folder; its model is in {run / 'model'}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_hub_name_offline_is_refused_at_once(tmp_path):
    train = write_csv(tmp_path / "t.csv", reviews(20))
    result = run_cli("train", "--model", "some-org/not-cached-model", "--train", train, *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a local folder, not in the local HuggingFace cache, and the hub cannot be reached " \
           "(HF_HUB_OFFLINE=1 is set)" in result.stderr


def test_a_hub_name_without_network_is_refused_without_retries(tmp_path, capsys, monkeypatch):
    """Online mode but the hub's host does not resolve (the hub is the one service a test may stand in for)."""
    import socket

    from huggingface_hub import constants

    def unreachable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", "bert-base-uncased", "--train", train, *FAST])
    assert code == 2 and "the hub cannot be reached (no network)" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (print, ("UNPICKLED-CODE-RAN",))


@pytest.mark.slow
def test_pickled_weights_that_hold_code_are_refused(tmp_path, tokenizer):
    folder = tmp_path / "evil"
    tiny_bert().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as file:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Payload()}, file)
    torch.save({"x": _Payload()}, folder / "pytorch_model.bin")
    data = write_csv(tmp_path / "d.csv", [("good", "pos"), ("bad", "neg")], header=("text", "label"))
    result = run_cli("predict", "--model", folder, "--data", data, "--out", tmp_path / "p.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds Python objects, not plain tensors, and finch refuses to load it" in result.stderr
    assert "weights_only=False" not in result.stderr and "UNPICKLED-CODE-RAN" not in result.stdout
    assert not (tmp_path / "p.csv").exists()


def test_a_model_folder_whose_config_is_not_a_model_config_is_named(tmp_path, tiny_model_dir, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text('{"eval_accuracy": 0.5}')
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", str(model), "--train", train, "--output-dir", str(tmp_path / "o"), *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "its config.json is not a model configuration" in error and "Traceback" not in error


@pytest.mark.parametrize("config", ['{"architectures": ["BertForSequenceClassification"], "num_labels": 2}',
                                    '{"model_type": "bert", ', '["bert"]'])
def test_predict_and_eval_name_a_config_without_a_model_type_before_the_weights_load(tmp_path, tiny_model_dir, capsys,
                                                                                    no_weights_loaded, config):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text(config)
    data = write_csv(tmp_path / "d.csv", [("good", "pos"), ("bad", "neg")], header=("text", "label"))
    for command in (["predict", "--out", str(tmp_path / "p.csv")], ["eval"]):
        code = main([command[0], "--model", str(model), "--data", data, *command[1:]])
        error = capsys.readouterr().err
        assert code == 2 and f"{model}: its config.json is not a model configuration" in error, error
        assert "model.save_pretrained(folder)" in error and "Traceback" not in error
    assert not (tmp_path / "p.csv").exists()
