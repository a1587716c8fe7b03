"""`finch train` end to end on files: column inference, label names, run folder, resume, errors with exit code 2."""

import csv
import json

import pytest
from conftest import POSITIVE, run_cli
from transformers import pipeline

from finch.cli.commands import main


def write_csv(path, rows, header=("review", "sentiment")):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def reviews(count, offset=0):
    words = ["good", "bad", "great", "awful", "nice", "poor"]
    rows = []
    for i in range(offset, offset + count):
        text = " ".join(words[(i * 7 + j) % 6] for j in range(3 + i % 5))
        rows.append((text, "pos" if sum(w in POSITIVE for w in text.split()) * 2 > len(text.split()) else "neg"))
    return rows


FAST = ["--num-train-epochs", "1", "--no-bf16", "--disable-tqdm", "--learning-rate", "1e-3"]


def test_train_on_csv_files(tmp_path, tiny_model_dir, capsys):
    train = write_csv(tmp_path / "train.csv", reviews(64))
    dev = write_csv(tmp_path / "dev.csv", reviews(16, offset=64))
    out = tmp_path / "run"
    code = main(["train", "--model", tiny_model_dir, "--train", train, "--validation", dev,
                 "--output-dir", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert ("text review, label sentiment: binary classification, 2 labels: neg, pos; "
            "64 training rows, 16 validation rows") in printed
    assert "eval_accuracy" in printed and str(out / "model") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 1
    assert (out / "log.jsonl").exists() and list(out.glob("checkpoint-*"))
    # the final evaluation scored the same weights as the epoch's: one pass, its numbers logged twice
    evaluations = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert len(evaluations) == 2 and evaluations[0] == evaluations[1]
    assert metrics == {key: value for key, value in evaluations[0].items() if key != "step"}
    classify = pipeline("text-classification", model=str(out / "model"))
    assert classify("good great nice")[0]["label"] in {"neg", "pos"}


def test_train_on_mrpc_by_path(tmp_path, tiny_model_dir, mrpc_dir, capsys):
    code = main(["train", "--model", tiny_model_dir, "--train", str(mrpc_dir / "train.tsv"), "--validation",
                 str(mrpc_dir / "dev.tsv"), "--output-dir", str(tmp_path), "--max-steps", "2", *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert ("text #1 String + #2 String, label Quality: binary classification, 2 labels: 0, 1; "
            "3668 training rows, 408 validation rows") in printed


def test_validation_split_off_when_not_given(tmp_path, tiny_model_dir, capsys):
    train = write_csv(tmp_path / "train.csv", reviews(80))
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "1", *FAST]) == 0
    assert "72 training rows, 8 validation rows; 10% of" in capsys.readouterr().out


def test_resume_auto_continues_the_run(tmp_path, tiny_model_dir, capsys):
    train = write_csv(tmp_path / "train.csv", reviews(64))
    common = ["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(tmp_path / "o"), *FAST,
              "--save-strategy", "steps", "--save-steps", "3", "--eval-strategy", "no", "--no-load-best-model-at-end",
              "--save-total-limit", "5"]
    assert main([*common, "--max-steps", "3"]) == 0
    assert main([*common, "--max-steps", "6", "--resume", "auto"]) == 0
    state = json.loads((tmp_path / "o" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["micro_step"] == 6
    logs = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs if "train_runtime" in e] == [3, 6]  # the second run began at step 3


@pytest.mark.parametrize("make_args, message", [
    (lambda d, m: ["--train", str(d / "missing.csv")], "missing.csv: no such file"),
    (lambda d, m: ["--train", write_csv(d / "t.csv", reviews(10)), "--label-column", "stars"],
     "no column 'stars'; the columns are ['review', 'sentiment']"),
    (lambda d, m: ["--train", write_csv(d / "t.csv", reviews(10)),
                   "--validation", write_csv(d / "v.csv", [("good", "neutral")])], "never occur in the training data"),
    (lambda d, m: ["--train", write_csv(d / "t.csv", reviews(10)), "--eval-strategy", "sometimes"],
     "eval_strategy='sometimes' is not one of"),
])
def test_mistakes_exit_2_with_a_message(tmp_path, tiny_model_dir, capsys, make_args, message):
    code = main(["train", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "o"),
                 *make_args(tmp_path, tiny_model_dir)])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error


@pytest.mark.slow
def test_console_script_reports_errors_without_traceback(tmp_path):
    result = run_cli("train", "--train", tmp_path / "none.csv", timeout=120)
    assert result.returncode == 2
    assert "none.csv: no such file" in result.stderr and "Traceback" not in result.stderr


def test_verify_resume_reports_identical_weights(tmp_path, tiny_model_dir, capsys):
    train = write_csv(tmp_path / "train.csv", reviews(48))
    code = main(["verify-resume", "--model", tiny_model_dir, "--train", train, "--steps", "6",
                 "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2", *FAST])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "6 steps straight vs stopped at step 3" in printed and "identical, bit for bit" in printed


def test_verify_resume_detects_a_resume_that_is_not_exact(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Break resume on purpose (RNG state not restored): the command must say so and exit 1."""
    monkeypatch.setattr("finch.runs.checkpoint.set_rng_state", lambda state: None)
    train = write_csv(tmp_path / "train.csv", reviews(48))
    code = main(["verify-resume", "--model", tiny_model_dir, "--train", train, "--steps", "6", *FAST])
    printed = capsys.readouterr().out
    assert code == 1 and "Resume is NOT exact" in printed


@pytest.mark.slow
def test_the_demo_learns_bbc_news_with_the_packaged_model(tmp_path, monkeypatch, capsys):
    """`finch train` with no data: the packaged MiniLM on the packaged BBC News (real data that installs with the
    test extra, so this runs on a fresh clone too), cut short."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--max-steps", "24", "--eval-strategy", "no", "--save-strategy", "no",
                 "--no-load-best-model-at-end", "--disable-tqdm"]) == 0
    printed = capsys.readouterr().out
    assert "BBC News: 1780 articles to train on, 445 held out" in printed
    assert "tokens: limit 128 (the demo's setting)" in printed
    metrics = json.loads((tmp_path / "finch-output" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] > 0.5, metrics  # 5 topics: chance is 0.2
    assert (tmp_path / "finch-output" / "model" / "finch.json").exists()
