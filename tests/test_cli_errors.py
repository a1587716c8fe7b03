"""The CLI's error boundary and its checks before expensive work: a user's mistake is exit 2 with a message that
names the fix and no traceback, found before any weights load; a bug is exit 1 with its traceback; nothing the
user owns is touched by a command that fails."""

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from test_cli import FAST, reviews, write_csv

from finch.cli import main
from finch.run_folders import checkpoints, verify


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "finch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Fail the test if a check comes after the model's weights are loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model's weights were loaded before the mistake was found")

    monkeypatch.setattr("finch.job.load_classifier", refuse)


def test_a_bug_inside_finch_shows_its_traceback_and_exits_1(tmp_path, tiny_model_dir, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("internal")  # a KeyError from finch's own code is a bug, never "a mistake in your data"

    monkeypatch.setattr("finch.job._with_metric", broken)
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"), *FAST])
    error = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in error and "KeyError: 'internal'" in error and "this is a bug in finch" in error


def test_flag_prefixes_are_not_guessed(tmp_path):
    result = run_cli("train", "--train", tmp_path / "t.csv", "--learning-rat", "1e-3")
    assert result.returncode == 2
    assert "unrecognized arguments: --learning-rat" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, hint", [
    (["train", "--learning-rate", "-1e-5"], "expected one argument (a negative value takes '=': --learning-rate=-1e-5)"),
    (["train", "--num-train-epoch", "2"], "unrecognized arguments: --num-train-epoch; did you mean --num-train-epochs?"),
    (["search", "--trails", "3"], "unrecognized arguments: --trails; did you mean --train or --trials?"),
])
def test_flag_mistakes_get_the_fix(argv, hint, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and hint in capsys.readouterr().err


def test_help_gives_every_training_flag_a_text_and_its_default():
    result = run_cli("train", "--help", timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--num-train-epochs NUM_TRAIN_EPOCHS passes over the training data (may be fractional) (default: 3.0; " \
           "the demo: 2.0)" in text
    assert "--save-total-limit SAVE_TOTAL_LIMIT" in text and "(default: 1)" in text  # finch train's own default
    assert "training arguments: optimizer and schedule:" in result.stdout
    assert result.stdout.splitlines()[0].startswith("usage: finch train [--train FILE]")


@pytest.mark.parametrize("yaml_text, message", [
    ("output_dir: {a: 1}\n", "option output_dir: must be a string or None, but it is {'a': 1}"),
    ("text_columns: 5\n", "option text_columns: must be a list of strings or a string, but it is 5"),
    ("report_to: 5\n", "option report_to: must be a string or a list of strings or None, but it is 5"),
    ("lr_scheduler_kwargs: 5\n", "option lr_scheduler_kwargs: must be a mapping (JSON object) or None, but it is 5"),
    ("max_length: 0\n", "max_length=0: the token limit must be at least 1"),
    ("learning_rate: .nan\n", "option learning_rate: must be a finite number, but it is nan"),
    ("learning_rate: abc\n", "option learning_rate: must be a number, but it is 'abc'"),
    ("num_train_epochs: '3'\nlearning_rate: [1]\n", "option learning_rate: must be a number, but it is [1]"),
])
def test_config_values_of_the_wrong_type_name_the_key(tmp_path, tiny_model_dir, capsys, yaml_text, message,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(yaml_text)
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--config", "run.yaml", "--no-bf16"])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml", "t.csv"], "nothing may be created"


@pytest.mark.parametrize("flags, message", [
    (["--max-length", "0"], "argument --max-length: 0 must be at least 1"),
    (["--max-length", "-5"], "argument --max-length: -5 must be at least 1"),
    (["--max-length", "100000"], "the model takes at most 64 tokens"),
    (["--class-weights", "1", "2", "3"], "--class-weights has 3 weights but the data has 2 classes"),
    (["--freeze", "top"], "--freeze 'top' is not one of: base | embeddings | N"),
    (["--freeze", "9"], "--freeze 9: the model has only 2 layers"),
    (["--seed", "-1"], "seed=-1 must be between 0 and 2**32 - 1"),
    (["--learning-rate", "nan"], "option learning_rate: must be a finite number, but it is nan"),
    (["--lr-scheduler-kwargs", '{"num_cycles": 2}'], ("lr_scheduler_kwargs ['num_cycles'] are not arguments of the "
                                                     "'linear' schedule")),
    (["--metric", "bleu"], "--metric bleu: binary tasks report loss, accuracy, f1, mcc"),
])
def test_mistakes_are_found_before_the_weights_load(tmp_path, tiny_model_dir, capsys, no_weights_loaded, flags,
                                                    message):
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = exit_code(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                      *FAST, *flags])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "o").exists()


def exit_code(argv):
    """`main`'s exit code, also when argparse rejects a flag (it exits with 2 itself)."""
    try:
        return main(argv)
    except SystemExit as stopped:
        return stopped.code


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


@pytest.mark.parametrize("make_output, message", [
    (lambda d: (d / "taken").write_text("x") and d / "taken", "a file of that name exists"),
    (lambda d: (d / "file").write_text("x") and d / "file" / "run", "is a file, so the folder cannot be made"),
])
def test_an_output_folder_that_cannot_be_one_is_refused_first(tmp_path, tiny_model_dir, capsys, no_weights_loaded,
                                                              make_output, message):
    output = make_output(tmp_path)
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(output), *FAST])
    assert code == 2 and message in capsys.readouterr().err


def test_two_runs_with_one_seed_are_identical_and_another_seed_differs(tmp_path, tiny_model_dir):
    """The new classification head is initialised after seeding, so the whole run repeats."""
    from safetensors.torch import load_file

    train = write_csv(tmp_path / "t.csv", reviews(48))
    runs = {}
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        out = tmp_path / name
        assert main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(out), "--seed",
                     str(seed), "--logging-steps", "1", "--max-steps", "4", *FAST]) == 0
        losses = [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]
        runs[name] = (losses, load_file(out / "model" / "model.safetensors"))
    assert runs["a"][0] == runs["b"][0] and len(runs["a"][0]) == 4
    assert all(torch.equal(runs["a"][1][k], runs["b"][1][k]) for k in runs["a"][1])
    assert runs["a"][0][0] != runs["c"][0][0]
    assert not torch.equal(runs["a"][1]["classifier.weight"], runs["c"][1]["classifier.weight"])


@pytest.fixture
def trained_model(tmp_path_factory, tiny_model_dir):
    """A model trained with an explicit label column `rating`, beside a decoy column named `label`."""
    folder = tmp_path_factory.mktemp("trained")
    rows = [(text, sentiment, str(i % 3)) for i, (text, sentiment) in enumerate(reviews(40))]
    train = write_csv(folder / "t.csv", rows, header=("review", "rating", "label"))
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--label-column", "rating",
                 "--output-dir", str(folder / "run"), "--max-steps", "1", *FAST]) == 0
    return folder / "run" / "model", rows


def test_eval_uses_the_label_column_recorded_at_training(tmp_path, trained_model, capsys):
    model, rows = trained_model
    assert json.loads((model / "finch.json").read_text())["label_column"] == "rating"
    data = write_csv(tmp_path / "dev.csv", rows[:12], header=("review", "rating", "label"))
    assert main(["eval", "--model", str(model), "--data", data]) == 0
    assert "(text review, label rating)" in capsys.readouterr().out


def test_eval_out_into_a_new_folder_is_created_and_a_bad_one_refused_before_work(tmp_path, trained_model, capsys):
    model, rows = trained_model
    data = write_csv(tmp_path / "dev.csv", rows[:12], header=("review", "rating", "label"))
    out = tmp_path / "reports" / "today" / "metrics.json"
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(out)]) == 0
    assert "eval_accuracy" in json.loads(out.read_text())
    (tmp_path / "blocker").write_text("x")
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(tmp_path / "blocker" / "m.json")]) == 2
    assert "blocker is a file" in capsys.readouterr().err


def test_predict_never_destroys_files(tmp_path, trained_model, capsys):
    model, rows = trained_model
    data = write_csv(tmp_path / "new.csv", rows[:5], header=("review", "rating", "label"))
    existing = tmp_path / "predictions.csv"
    existing.write_text("precious,results\n1,2\n")
    before = digest(existing), digest(tmp_path / "new.csv")
    for args, message in ((["--data", str(tmp_path / "typo.csv"), "--out", str(existing)], "typo.csv"),
                          (["--data", data, "--out", str(existing), "--text-columns", "body"], "no column 'body'"),
                          (["--data", data, "--out", data], "is the input file")):
        assert main(["predict", "--model", str(model), *args]) == 2
        assert message in capsys.readouterr().err
        assert (digest(existing), digest(tmp_path / "new.csv")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_predict_keeps_input_columns_and_refuses_an_empty_file(tmp_path, trained_model, capsys):
    import csv

    model, rows = trained_model
    data = write_csv(tmp_path / "new.csv", rows[:5], header=("review", "rating", "label"))
    assert main(["predict", "--model", str(model), "--data", data, "--out", str(tmp_path / "p.csv")]) == 0
    written = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert [r["label"] for r in written] == [r[2] for r in rows[:5]], "the input's label column is kept as it was"
    assert [r["rating"] for r in written] == [r[1] for r in rows[:5]]
    assert {"predicted_label", "predicted_score"} <= set(written[0])
    (tmp_path / "header.csv").write_text("review,rating\n")
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "header.csv"), "--out",
                 str(tmp_path / "q.csv")]) == 2
    assert "no data rows" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()


def test_a_refused_resume_leaves_the_run_folder_byte_identical(tmp_path, tiny_model_dir, capsys, no_weights_loaded):
    """A second `finch train` in the same folder, and a resume with other data: exit 2, found before the weights
    load, and not one byte of the first run's folder (finch_config.yaml included) changes."""
    train = write_csv(tmp_path / "t.csv", reviews(40))
    out = tmp_path / "o"
    first = subprocess.run([sys.executable, "-m", "finch.cli", "train", "--model", tiny_model_dir, "--train", train,
                            "--output-dir", str(out), "--max-steps", "2", *FAST], capture_output=True, text=True,
                           timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()}
    other = write_csv(tmp_path / "other.csv", reviews(40, offset=7))
    for extra, message in (([], "already holds checkpoints of another run"),
                           (["--resume", "auto", "--train", other], "training data"),
                           (["--resume", str(out / "checkpoint-99")], "no such checkpoint")):
        code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(out),
                     "--max-steps", "4", *FAST, *extra])
        error = capsys.readouterr().err
        assert code == 2 and message in error and "Traceback" not in error, error
        assert {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()} == before


def test_a_second_run_into_a_folder_with_outputs_but_no_checkpoints_is_refused(tmp_path, tiny_model_dir, capsys,
                                                                             no_weights_loaded):
    """Checkpoints are not the only thing a run leaves: its model, metrics, log and report (or the user's own files
    of those names) are not replaced by a fresh run unless --overwrite-output-dir says so."""
    train = write_csv(tmp_path / "t.csv", reviews(40))
    out = tmp_path / "o"
    first = subprocess.run([sys.executable, "-m", "finch.cli", "train", "--model", tiny_model_dir, "--train", train,
                            "--output-dir", str(out), "--max-steps", "2", "--save-strategy", "no",
                            "--no-load-best-model-at-end", *FAST], capture_output=True, text=True, timeout=300,
                           check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not list(out.glob("checkpoint-*"))
    before = {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()}
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(out), "--seed", "7",
                 "--max-steps", "2", *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error, error
    assert f"output folder {out} already holds model/, metrics.json, log.jsonl, report.html" in error
    assert "--overwrite-output-dir" in error and "another --output-dir" in error
    assert {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()} == before

    mine = tmp_path / "mine"  # the user's own files that happen to have finch's names
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "config.json").write_text('{"my": "config"}')
    (mine / "report.html").write_text("MY REPORT")
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(mine), *FAST]) == 2
    assert "already holds model/, report.html" in capsys.readouterr().err
    assert (mine / "report.html").read_text() == "MY REPORT"


def test_overwrite_output_dir_leaves_a_folder_that_is_not_a_checkpoint_alone(tmp_path, tiny_model_dir):
    """A folder named like a checkpoint holds neither a manifest nor a trainer state: it is somebody's, not a run's."""
    train = write_csv(tmp_path / "t.csv", reviews(20))
    notes = tmp_path / "o" / "checkpoint-999" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("user stuff")
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "1", "--overwrite-output-dir", *FAST]) == 0
    assert notes.read_text() == "user stuff"


def test_a_yaml_mistake_names_its_line_and_where_the_bracket_opened(tmp_path):
    from finch.config import load_file
    from finch.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\nreport_to: [none\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 3, column 5: not valid YAML \(expected ',' or '\]', but got "
                                          r"':'; while parsing a flow sequence that starts on line 2\)"):
        load_file(path)
    path.write_text("a: 1\n\tb: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 2, column 1: not valid YAML \(found character '\\t'"):
        load_file(path)


def scores(count):
    """Rows with a number to predict: a regression task."""
    return [(text, f"{len(text) / 10:.2f}") for text, _ in reviews(count)]


@pytest.mark.parametrize("extra, message", [
    (["report_to=[none"], "'report_to=[none': the value is not valid YAML"),
    (["bf16=yess"], "key=value overrides: option bf16: must be true or false or None, but it is 'yess'"),
    (["--config", "shadowed.yaml"], "shadowed.yaml: option per_device_train_batch_size: must be an integer"),
    (["--max-length", "1"], "--max-length 1 leaves no room for the text: the tokenizer adds 2 special tokens"),
    (["--max-length", "2"], "Use at least 3"),
    (["lr_scheduler_type=reduce_lr_on_plateau"], "HuggingFace's but finch does not implement it"),
    (["lr_scheduler_type=cosin"], "did you mean 'cosine'?"),
    (["--lr-scheduler-type", "warmup_stable_decay"], "missing 1 required positional argument: 'num_decay_steps'"),
    (["--optim", "adafactor"], "optim='adafactor' is HuggingFace's but finch does not implement it"),
    (["--output-dir", ""], "output_dir='' is empty, which would write into the current folder"),
    (["--eval-strategy", "steps", "--save-strategy", "steps", "--eval-steps", "2.5"],
     "eval_steps=2.5 must be a step count (an integer) or a fraction of the run below 1"),
])
def test_more_flag_and_override_mistakes_are_found_before_the_weights_load(tmp_path, tiny_model_dir, capsys,
                                                                          no_weights_loaded, monkeypatch, extra,
                                                                          message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shadowed.yaml").write_text("per_device_train_batch_size: 2.5\n")  # the flag below wins: still wrong
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = exit_code(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                      *FAST, "--no-bf16", "--per-device-train-batch-size", "4", *extra])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error, error
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--class-weights", "balanced"], ["--class-weights", "1"],
                                   ["--label-smoothing-factor", "0.1"]])
def test_classification_only_flags_on_regression_data_are_refused(tmp_path, tiny_model_dir, capsys,
                                                                   no_weights_loaded, flags):
    train = write_csv(tmp_path / "t.csv", scores(20), header=("review", "score"))
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"), *FAST,
                 *flags])
    error = capsys.readouterr().err
    assert code == 2 and f"{flags[0]} applies to single-label classification" in error and "regression" in error


def test_a_model_folder_whose_config_is_not_a_model_config_is_named(tmp_path, tiny_model_dir, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text('{"eval_accuracy": 0.5}')
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = main(["train", "--model", str(model), "--train", train, "--output-dir", str(tmp_path / "o"), *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "its config.json is not a model configuration" in error and "Traceback" not in error


def test_out_never_replaces_a_file_of_the_model_or_the_run(tmp_path, trained_model, capsys):
    """eval/predict/report --out: a typo that names the model's config, weights or the run's log is refused, and
    every byte of the model and run folders stays; report --out must be .html, eval --out .json."""
    model, rows = trained_model
    run = model.parent
    data = write_csv(tmp_path / "dev.csv", rows[:6], header=("review", "rating", "label"))
    (model / "old.csv").write_text("keep,me\n")
    before = {p: digest(p) for p in run.rglob("*") if p.is_file()}
    for argv, message in (
            (["eval", "--model", model, "--data", data, "--out", model / "config.json"], "a file of the model folder"),
            (["eval", "--model", model, "--data", data, "--out", tmp_path / "m.csv"], "must end with .json"),
            (["eval", "--model", model, "--data", data, "--out", run / "metrics.json"], "a file of the run folder"),
            (["predict", "--model", model, "--data", data, "--out", model / "old.csv"], "a file of the model folder"),
            (["report", run, "--out", run / "log.jsonl"], "must end with .html or .htm"),
            (["report", run, "--out", data], "must end with .html or .htm")):
        assert main(list(map(str, argv))) == 2
        assert message in capsys.readouterr().err
    assert {p: digest(p) for p in run.rglob("*") if p.is_file()} == before
    assert main(["eval", "--model", str(model), "--data", data]) == 0  # its own eval_dev.json, written twice
    assert main(["eval", "--model", str(model), "--data", data]) == 0


def test_eval_of_a_checkpoint_writes_beside_it_and_never_into_it(tmp_path, trained_model, capsys):
    """A checkpoint's files are checked against its manifest on resume: `finch eval --model RUN/checkpoint-N` saves
    its metrics in the run folder, named after the checkpoint, and says where; an --out inside it is refused."""
    model, rows = trained_model
    run = model.parent
    checkpoint = checkpoints(run)[-1]
    before = {p: digest(p) for p in checkpoint.rglob("*") if p.is_file()}
    data = write_csv(tmp_path / "dev.csv", rows[:6], header=("review", "rating", "label"))
    assert main(["eval", "--model", str(checkpoint), "--data", data, "--label-column", "rating"]) == 0
    out = run / f"eval_dev_{checkpoint.name}.json"
    assert "eval_accuracy" in json.loads(out.read_text())
    assert f"saved:  {out}" in capsys.readouterr().out
    for argv in (["eval", "--model", checkpoint, "--data", data, "--out", checkpoint / "eval_dev.json"],
                 ["predict", "--model", checkpoint, "--data", data, "--out", checkpoint / "predictions.csv"]):
        assert main(list(map(str, argv))) == 2
        assert f"inside the checkpoint {checkpoint}" in capsys.readouterr().err
    assert {p: digest(p) for p in checkpoint.rglob("*") if p.is_file()} == before
    assert verify(checkpoint) is None


def test_eval_names_the_models_labels_when_the_data_has_others(tmp_path, trained_model, capsys):
    model, rows = trained_model
    data = write_csv(tmp_path / "dev.csv", [(rows[0][0], "maybe", "0")], header=("review", "rating", "label"))
    assert main(["eval", "--model", str(model), "--data", data]) == 2
    error = capsys.readouterr().err
    assert "label(s) ['maybe'] never occur in the labels of the model" in error and "id2label" in error
    assert "training file" not in error


def test_report_of_a_run_with_damaged_files_shows_the_rest(tmp_path, trained_model, caplog):
    """A crash or a disk error can leave metrics.json half-written and log.jsonl with stray bytes: `finch report`
    warns, leaves those out and writes the page (it is no mistake of the user's, nor a bug to show a traceback for)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_model[0].parent, run)
    (run / "metrics.json").write_text('{"eval_loss": 0.6')
    (run / "log.jsonl").write_bytes((run / "log.jsonl").read_bytes() + b"\xff\xfe{oops\n")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert "metrics.json is damaged" in caplog.text
    assert "<svg" in (tmp_path / "r.html").read_text()
