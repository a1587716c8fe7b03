"""No-code tasks: string multi-class, regression and multi-label files train from the CLI, and `finch predict` /
`finch eval` use the saved model's label names; config files; MRPC by path with the packaged model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from finch.cli.commands import main
from finch.data.tasks import DataError, Task, compute_metrics_for, detect_task, encode

FAST = ["--num-train-epochs", "2", "--no-bf16", "--disable-tqdm", "--learning-rate", "3e-3",
        "--per-device-train-batch-size", "8"]
TOPICS = {"sport": ["goal", "match", "team", "score"], "money": ["bank", "price", "market", "stock"],
          "tech": ["phone", "chip", "software", "robot"]}



def topic_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    rows = []
    for _ in range(count):
        topic = names[rng.integers(3)]
        rows.append({"text": " ".join(rng.choice(TOPICS[topic], 6)), "topic": topic})
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def train(tmp_path, tiny_model_dir, data, *extra):
    out = tmp_path / "run"
    code = main(["train", "--model", tiny_model_dir, "--train", data, "--output-dir", str(out), *FAST, *extra])
    assert code == 0
    return out


@pytest.mark.slow
def test_string_labelled_multiclass_trains_and_predicts_names(tmp_path, tiny_model_dir, capsys):
    out = train(tmp_path, tiny_model_dir, write_csv(tmp_path / "news.csv", topic_rows(360)), "--num-train-epochs", "4")
    printed = capsys.readouterr().out
    assert "label topic: multiclass classification, 3 labels: money, sport, tech" in printed
    assert json.loads((out / "metrics.json").read_text())["eval_f1_macro"] > 0.6
    assert "collapsed" not in printed, "a healthy run is not called collapsed"
    new = write_csv(tmp_path / "new.csv", [{"text": "goal match team goal"}, {"text": "bank stock price market"}])
    assert main(["predict", "--model", str(out / "model"), "--data", new, "--out", str(tmp_path / "p.csv")]) == 0
    predicted = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert [row["predicted_label"] for row in predicted] == ["sport", "money"]
    assert {"predicted_prob_money", "predicted_prob_sport", "predicted_prob_tech", "predicted_score",
            "text"} <= set(predicted[0])
    assert main(["eval", "--model", str(out / "model"), "--data", write_csv(tmp_path / "dev.csv", topic_rows(60, 1)),
                 "--out", str(tmp_path / "m.json")]) == 0
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["eval_accuracy"] > 0.6 and "epoch" not in evaluated  # evaluating trains no epoch


def test_regression_csv_trains_with_one_output(tmp_path, tiny_model_dir, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(200):
        good = int(rng.integers(0, 6))
        rows.append({"review": " ".join(["great"] * good + ["awful"] * (5 - good)), "score": f"{good / 5:.2f}"})
    out = train(tmp_path, tiny_model_dir, write_csv(tmp_path / "scores.csv", rows), "--metric", "pearson")
    printed = capsys.readouterr().out
    assert "label score: regression (one output, MSE)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_pearson"] > 0.5 and "eval_spearman" in metrics
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    new = write_csv(tmp_path / "new.csv", [{"review": "great great great great great"}])
    assert main(["predict", "--model", str(out / "model"), "--data", new, "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "predicted_value" in json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])


def test_multilabel_jsonl_trains_and_predicts_label_sets(tmp_path, tiny_model_dir, capsys):
    rng = np.random.default_rng(0)
    records = []
    for _ in range(240):
        chosen = [t for t in sorted(TOPICS) if rng.random() < 0.5] or ["tech"]
        records.append({"text": " ".join(w for t in chosen for w in rng.choice(TOPICS[t], 3)), "labels": chosen})
    data = tmp_path / "tags.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = train(tmp_path, tiny_model_dir, str(data), "--num-train-epochs", "4")
    printed = capsys.readouterr().out
    assert "label labels: multilabel classification, 3 labels: money, sport, tech" in printed
    assert json.loads((out / "metrics.json").read_text())["eval_f1_micro"] > 0.6
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"text": "goal match bank price"}) + "\n")
    assert main(["predict", "--model", str(out / "model"), "--data", str(new), "--out", str(tmp_path / "p.jsonl")]) == 0
    result = json.loads((tmp_path / "p.jsonl").read_text())
    assert set(result["predicted_probabilities"]) == {"money", "sport", "tech"}
    assert set(result["predicted_labels"].split("|")) <= {"money", "sport", "tech"}


def test_config_file_with_overrides_and_print_config(tmp_path, tiny_model_dir, capsys):
    data = write_csv(tmp_path / "news.csv", topic_rows(60))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\ntrain: {data}\nlearning_rate: 3e-5\nnum_train_epochs: 1\n"
                      f"output_dir: {tmp_path / 'run'}\nbf16: false\n")
    assert main(["train", "--config", str(config), "learning_rate=1e-3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "learning_rate: 0.001" in printed and "num_train_epochs: 1" in printed
    assert not (tmp_path / "run").exists(), "--print-config only prints"
    assert main(["train", "--config", str(config), "--num-train-epochs", "2", "--disable-tqdm"]) == 0
    saved = (tmp_path / "run" / "finch_config.yaml").read_text()
    assert "learning_rate: 3.0e-05" in saved and "num_train_epochs: 2" in saved
    state = json.loads((tmp_path / "run" / "training_args.json").read_text())
    assert state["learning_rate"] == 3e-5 and state["num_train_epochs"] == 2


def test_class_weights_and_freeze_flags(tmp_path, tiny_model_dir, capsys):
    data = write_csv(tmp_path / "news.csv", topic_rows(60))
    train(tmp_path, tiny_model_dir, data, "--class-weights", "balanced", "--freeze", "base")
    printed = capsys.readouterr().out
    assert "freeze base:" in printed and "trainable parameters" in printed


@pytest.mark.slow
def test_mrpc_by_path_with_the_packaged_model(tmp_path, model_dir, mrpc_dir, capsys):
    """GLUE's TSVs as they are (bare quotes, a pair of texts): every row read, the pair and the task inferred, the
    whole validation set evaluated. A few steps only: that MiniLM learns MRPC is test_tutorial's to show."""
    code = main(["train", "--model", model_dir, "--train", str(mrpc_dir / "train.tsv"), "--validation",
                 str(mrpc_dir / "dev.tsv"), "--output-dir", str(tmp_path), "--max-steps", "4",
                 "--per-device-train-batch-size", "16", "--eval-strategy", "no", "--save-strategy", "no",
                 "--no-load-best-model-at-end", "--disable-tqdm"])
    printed = capsys.readouterr().out
    assert code == 0
    assert ("text #1 String + #2 String, label Quality: binary classification, 2 labels: 0, 1; 3668 training rows, "
            "408 validation rows") in printed
    examples = (tmp_path / "eval_examples.jsonl").read_text().splitlines()
    assert len(examples) == 1 + 408  # the header line, then every validation pair
    assert 0 <= json.loads((tmp_path / "metrics.json").read_text())["eval_accuracy"] <= 1


def test_detect_task_and_encode():
    assert detect_task(["1", "0", "1"], "f").kind == "binary"
    assert detect_task([0.5, 1.25, 3.0], "f").kind == "regression"
    assert detect_task(["1.0", "2.0", "3"], "f").label_names == ["1", "2", "3"]
    assert detect_task(["a|b", "b", "c"], "f").label_names == ["a", "b", "c"]
    assert encode(["b", "a|c"], Task("multilabel", ["a", "b", "c"]), "f") == [[0, 1, 0], [1, 0, 1]]
    with pytest.raises(DataError, match="rows 2"):
        encode(["x", "z"], Task("binary", ["x", "y"]), "f")


def test_metrics_for_each_task():
    class Prediction:
        def __init__(self, predictions, label_ids):
            self.predictions, self.label_ids = predictions, label_ids

    regression = compute_metrics_for(Task("regression"))(Prediction(np.array([[0.1], [0.5], [0.9]]),
                                                                    np.array([0.0, 0.5, 1.0])))
    assert regression["pearson"] == pytest.approx(1.0) and regression["spearman"] == pytest.approx(1.0)
    multilabel = compute_metrics_for(Task("multilabel", ["a", "b"]))(
        Prediction(np.array([[3.0, -3.0], [3.0, 3.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])))
    assert multilabel["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    binary = compute_metrics_for(Task("binary", ["n", "p"]), extra=["mcc"])(
        Prediction(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), np.array([0, 1, 1])))
    assert binary["mcc"] == pytest.approx(1.0) and binary["f1"] == pytest.approx(1.0)


PEAK_RSS = """
import resource, sys
from finch.cli.predict import predict_file
predict_file(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=256, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_predict_streams_in_constant_memory(tmp_path, tiny_model_dir):
    """200,000 rows peak no higher than 20,000 rows (plus 10%): the input is never held whole."""
    model_dir = tmp_path / "model"
    assert main(["train", "--model", tiny_model_dir, "--train", write_csv(tmp_path / "t.csv", topic_rows(40)),
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--no-bf16", "--disable-tqdm"]) == 0
    (tmp_path / "run" / "model").rename(model_dir)
    peaks = {}
    for rows in (20_000, 200_000):
        data = tmp_path / f"big{rows}.csv"
        with open(data, "w") as file:
            file.write("text\n")
            words = ["goal", "bank", "chip", "market", "team", "robot", "price", "match"]
            file.writelines(f"{words[i % 8]} {words[(i * 3) % 8]} {words[(i * 5) % 8]} row {i}\n" for i in range(rows))
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(model_dir), str(data), str(tmp_path / "o.csv")],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[rows] = int(done.stdout.strip().splitlines()[-1])
        with open(tmp_path / "o.csv") as written:
            assert sum(1 for _ in written) == rows + 1
    assert peaks[200_000] < peaks[20_000] * 1.10, peaks


def test_objects_as_labels_are_an_error_and_lists_of_names_are_multilabel():
    with pytest.raises(DataError, match=r"f: rows 1, 2 have labels that are JSON objects \(\{'name': 'a'\}\)"):
        detect_task([{"name": "a"}, {"name": "b"}], "f")
    with pytest.raises(DataError, match="rows 2 have labels that are lists of objects or lists"):
        encode([["a"], [{"name": "b"}]], Task("multilabel", ["a", "b"]), "f")
    assert detect_task([["a", "b"], [1], []], "f").label_names == ["1", "a", "b"]


def test_collapse_watch_warns_only_when_every_evaluation_predicts_one_class():
    from finch.data.tasks import CollapseWatch

    class Prediction:
        def __init__(self, predicted, labels):
            self.predictions = np.eye(3)[predicted] * 5.0
            self.label_ids = np.asarray(labels)

    task = Task("multiclass", ["a", "b", "c"])
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] * 2
    collapsed = CollapseWatch(rows=20)
    compute = compute_metrics_for(task, watch=collapsed)
    compute(Prediction([0, 1, 2, 0, 1, 2, 0, 1], labels[:8]))  # the 8-row try before training: not counted
    for predicted in ([1] * 20, [1] * 19 + [0]):
        compute(Prediction(predicted, labels))
    message = collapsed.warning()
    assert message is not None and "each of its 2 evaluation(s) (100% 'b', 95% 'b')" in message
    assert "--learning-rate" in message and "--seed" in message
    healthy = CollapseWatch(rows=20)
    compute = compute_metrics_for(task, watch=healthy)
    compute(Prediction([1] * 20, labels))
    compute(Prediction(labels, labels))  # recovered: not a collapsed run
    assert healthy.warning() is None
    from finch.events import metrics_trial

    small = CollapseWatch(rows=20)  # a validation set no bigger than the try's rows: the try is still not counted
    compute = compute_metrics_for(task, watch=small)
    with metrics_trial():
        compute(Prediction([1] * 20, labels))
    assert small.shares == []


def test_a_collapsed_cli_run_is_named(tmp_path, tiny_model_dir, capsys):
    """A learning rate of 3 drives the tiny model to one class; the healthy run of
    `test_string_labelled_multiclass_trains_and_predicts_names` must stay silent."""
    train(tmp_path, tiny_model_dir, write_csv(tmp_path / "t.csv", topic_rows(60)), "--learning-rate", "3",
          "--max-grad-norm", "0")
    assert "the run collapsed to a constant guess" in capsys.readouterr().out


@pytest.mark.parametrize("vectors", [[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], [[0, 1, 1], [1, 0, 0]]])
def test_multi_hot_vectors_are_one_position_per_class_not_class_names(vectors):
    """HF's multi-label tutorials store labels as multi-hot vectors; read as names, [0, 1, 1] would be 2 classes."""
    task = detect_task(vectors, "t.jsonl, column 'label'")
    assert task.kind == "multilabel" and task.label_names == ["0", "1", "2"]
    assert encode(vectors, task, "t") == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert encode([[0, 0, 1]], task, "v") == [[0.0, 0.0, 1.0]]  # validation rows, however few
    names = detect_task([[0, 2], [1]], "t")  # lists of class ids: names, as before
    assert names.label_names == ["0", "1", "2"] and encode([[0, 2]], names, "t") == [[1.0, 0.0, 1.0]]
