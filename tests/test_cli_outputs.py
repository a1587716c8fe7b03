"""Nothing the user owns is lost by a command that fails or writes: output folders checked first, `finch eval`
and `finch predict` never replace a model's or a run's files, a refused run leaves its folder byte-identical; and
`finch eval` uses the columns and labels recorded at training.
"""

import json

import pytest
from conftest import digest, run_cli
from test_cli import FAST, reviews, write_csv

from finch.cli.commands import main
from finch.runs.folders import checkpoints, verify


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


@pytest.fixture
def trained_model(tmp_path_factory, tiny_model_dir):
    """A model trained with an explicit label column `rating`, beside a decoy column named `label`."""
    folder = tmp_path_factory.mktemp("trained")
    rows = [(text, sentiment, str(i % 3)) for i, (text, sentiment) in enumerate(reviews(40))]
    train = write_csv(folder / "t.csv", rows, header=("review", "rating", "label"))
    assert main(["train", "--model", tiny_model_dir, "--train", train, "--label-column", "rating",
                 "--output-dir", str(folder / "run"), "--max-steps", "1", *FAST]) == 0
    return folder / "run" / "model", rows


@pytest.mark.slow
def test_eval_uses_the_label_column_recorded_at_training(tmp_path, trained_model, capsys):
    model, rows = trained_model
    assert json.loads((model / "finch.json").read_text())["label_column"] == "rating"
    data = write_csv(tmp_path / "dev.csv", rows[:12], header=("review", "rating", "label"))
    assert main(["eval", "--model", str(model), "--data", data]) == 0
    assert "(text review, label rating)" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_out_into_a_new_folder_is_created_and_a_bad_one_refused_before_work(tmp_path, trained_model, capsys):
    model, rows = trained_model
    data = write_csv(tmp_path / "dev.csv", rows[:12], header=("review", "rating", "label"))
    out = tmp_path / "reports" / "today" / "metrics.json"
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(out)]) == 0
    assert "eval_accuracy" in json.loads(out.read_text())
    (tmp_path / "blocker").write_text("x")
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(tmp_path / "blocker" / "m.json")]) == 2
    assert "blocker is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_never_destroys_files(tmp_path, trained_model, capsys):
    model, rows = trained_model
    data = write_csv(tmp_path / "new.csv", rows[:5], header=("review", "rating", "label"))
    existing = tmp_path / "predictions.csv"
    existing.write_text("precious,results\n1,2\n")
    before = digest(existing), digest(tmp_path / "new.csv")
    for args, message in ((["--data", str(tmp_path / "typo.csv"), "--out", str(existing)], "typo.csv"),
                          (["--data", data, "--out", str(existing), "--text-columns", "body"], "no column 'body'"),
                          (["--data", data, "--out", data], "is the input file")):
        assert main(["predict", "--model", str(model), *args, "--overwrite"]) == 2
        assert message in capsys.readouterr().err
        assert (digest(existing), digest(tmp_path / "new.csv")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_folder_byte_identical(tmp_path, tiny_model_dir, capsys, no_weights_loaded):
    """A second `finch train` in the same folder, and a resume with other data: exit 2, found before the weights
    load (and before the data is read, when the data plays no part), and not one byte of the first run's folder
    (finch_config.yaml included) changes."""
    train = write_csv(tmp_path / "t.csv", reviews(40))
    out = tmp_path / "o"
    first = run_cli("train", "--model", tiny_model_dir, "--train", train, "--output-dir", out, "--max-steps", "2",
                    *FAST)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()}
    other = write_csv(tmp_path / "other.csv", reviews(40, offset=7))
    newest = max(out.glob("checkpoint-*"))
    for extra, message in (([], "already holds checkpoints of another run"),
                           (["--resume", "auto", "--train", other], "training data"),
                           (["--resume", str(out / "checkpoint-99")], "no such checkpoint"),
                           (["--resume", str(newest / "model.safetensors")],
                            f"is a file of a checkpoint, not a checkpoint folder: pass its folder, {newest}")):
        code = main(["train", "--model", tiny_model_dir, "--train", train, "--output-dir", str(out),
                     "--max-steps", "4", *FAST, *extra])
        printed, error = capsys.readouterr()
        assert code == 2 and message in error and "Traceback" not in error, error
        assert ("data:" in printed) == (message == "training data"), printed  # read only when it is the reason
        assert {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_second_run_into_a_folder_with_outputs_but_no_checkpoints_is_refused(tmp_path, tiny_model_dir, capsys,
                                                                             no_weights_loaded):
    """Checkpoints are not the only thing a run leaves: its model, metrics, log and report (or the user's own files
    of those names) are not replaced by a fresh run unless --overwrite-output-dir says so."""
    train = write_csv(tmp_path / "t.csv", reviews(40))
    out = tmp_path / "o"
    first = run_cli("train", "--model", tiny_model_dir, "--train", train, "--output-dir", out, "--max-steps", "2",
                    "--save-strategy", "no", "--no-load-best-model-at-end", *FAST)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_names_the_models_labels_when_the_data_has_others(tmp_path, trained_model, capsys):
    model, rows = trained_model
    data = write_csv(tmp_path / "dev.csv", [(rows[0][0], "maybe", "0")], header=("review", "rating", "label"))
    assert main(["eval", "--model", str(model), "--data", data]) == 2
    error = capsys.readouterr().err
    assert "label(s) ['maybe'] never occur in the labels of the model" in error and "id2label" in error
    assert "training file" not in error


@pytest.mark.slow
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


@pytest.mark.slow
def test_out_never_replaces_a_file_finch_did_not_write_as_that_commands_output(tmp_path, trained_model, capsys):
    """Any run's or model's folder is protected, not only the --model's: an --out into another run's folder is
    refused whatever the file; another existing file needs --overwrite; a command's own earlier output is replaced."""
    import shutil

    model, rows = trained_model
    other = tmp_path / "other-run"
    shutil.copytree(model.parent, other)
    (tmp_path / "bare-model").mkdir()
    shutil.copy(model / "config.json", tmp_path / "bare-model" / "config.json")
    (tmp_path / "bare-model" / "notes.csv").write_text("mine\n")
    data = write_csv(tmp_path / "dev.csv", rows[:6], header=("review", "rating", "label"))
    before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    refused = [("eval", other / "model" / "config.json"), ("eval", other / "model" / "finch.json"),
               ("eval", other / "training_args.json"), ("eval", other / "metrics.json"),
               ("predict", other / "eval_examples.jsonl"), ("predict", other / "log.jsonl"),
               ("predict", tmp_path / "bare-model" / "notes.csv")]
    for command, out in refused:
        for extra in ([], ["--overwrite"]):
            assert main([command, "--model", str(model), "--data", data, "--out", str(out), *extra]) == 2, out
            assert f"would replace {out.name}, a file of the" in capsys.readouterr().err
    mine = tmp_path / "results.csv"
    mine.write_text("precious,results\n1,2\n")
    before[mine] = digest(mine)
    assert main(["predict", "--model", str(model), "--data", data, "--out", str(mine)]) == 2
    assert "already exists and is not an earlier output of `finch predict`; pass --overwrite" in capsys.readouterr().err
    assert {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before
    assert main(["predict", "--model", str(model), "--data", data, "--out", str(mine), "--overwrite"]) == 0
    assert main(["predict", "--model", str(model), "--data", data, "--out", str(mine)]) == 0  # its own output
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(other / "eval_dev.json")]) == 0
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(other / "eval_dev.json")]) == 0
