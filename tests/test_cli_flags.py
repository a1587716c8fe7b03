"""The CLI's error boundary for flags, options and config files: a user's mistake is exit 2 with a message that
names the fix and no traceback, found before any weights load; a bug is exit 1 with its traceback.
"""

import json

import pytest
import torch
from conftest import exit_code, run_cli
from test_cli import FAST, reviews, write_csv

from finch.cli.commands import main


def test_a_bug_inside_finch_shows_its_traceback_and_exits_1(tmp_path, tiny_model_dir, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("internal")  # a KeyError from finch's own code is a bug, never "a mistake in your data"

    monkeypatch.setattr("finch.cli.job._with_metric", broken)
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
    (["train", "--learning-rate", "-1e-5"],
     "expected one argument (a negative value takes '=': --learning-rate=-1e-5)"),
    (["train", "--num-train-epoch", "2"],
     "unrecognized arguments: --num-train-epoch; did you mean --num-train-epochs?"),
    (["search", "--trails", "3"], "unrecognized arguments: --trails; did you mean --train or --trials?")])
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
    ("output_dir:\n", "run.yaml: option output_dir is empty (null); give a folder"),  # was a TypeError traceback
    ("output_dir: ~\n", "leave the key out for the default (finch-output)"),
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
    (["--metric", "bleu"], "--metric bleu: binary tasks report loss, accuracy, f1, f1_macro, mcc"),
])
def test_mistakes_are_found_before_the_weights_load(tmp_path, tiny_model_dir, capsys, no_weights_loaded, flags,
                                                    message):
    train = write_csv(tmp_path / "t.csv", reviews(20))
    code = exit_code(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                      *FAST, *flags])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "o").exists()


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


def test_a_yaml_mistake_names_its_line_and_where_the_bracket_opened(tmp_path):
    from finch.cli.config import load_file
    from finch.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\nreport_to: [none\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 3, column 5: not valid YAML \(expected ',' or '\]', but got "
                                          r"':'; while parsing a flow sequence that starts on line 2\)"):
        load_file(path)
    path.write_text("a: 1\n\tb: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 2, column 1: not valid YAML \(found character '\\t'"):
        load_file(path)


def test_a_python_tag_or_a_key_given_twice_in_yaml_is_refused_as_such(tmp_path):
    """Config and space files: a `!!python/...` tag is refused as what it is (no hint about brackets or tabs) and
    nothing is built; a key given twice is refused (YAML would keep the last one silently)."""
    from finch.cli.config import load_file
    from finch.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nlearning_rate: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 2: the tag !!python/object/apply:os.system is refused: "
                                          r"finch reads YAML as plain data") as error:
        load_file(path)
    assert "bracket" not in str(error.value) and not (tmp_path / "pwned").exists()
    path.write_text("learning_rate: {low: 1e-5, high: 1e-3}\nseed: [1, 2]\nlearning_rate: [1e-4]\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 3: 'learning_rate' is given twice \(lines 1 and 3\)"):
        load_file(path)
    path.write_text("learning-rate: 1e-5\nlearning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match="learning_rate is given twice"):
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
