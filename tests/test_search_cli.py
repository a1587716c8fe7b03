"""`finch search` on a small CSV: trials, the study continued by a re-run, `--show`, the best model in a pipeline,
and mistakes that exit 2 before any training."""

import json
import sqlite3
import subprocess
import sys

import optuna
import pytest
from test_cli import reviews, write_csv
from test_distributed import RUN_TIMEOUT, environment
from transformers import pipeline

from finch.cli.commands import main

FAST = ["--max-steps", "4", "--eval-strategy", "steps", "--eval-steps", "2", "--save-strategy", "steps",
        "--save-steps", "2", "--no-bf16", "--disable-tqdm", "--per-device-train-batch-size", "8"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def files(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {low: 1e-4, high: 1e-2, log: true}\nweight_decay: [0.0, 0.01]\n")
    return (write_csv(tmp_path / "train.csv", reviews(48)), write_csv(tmp_path / "dev.csv", reviews(16, offset=48)),
            str(space))


@pytest.mark.slow
def test_search_on_a_csv_continues_shows_and_keeps_the_best_model(tmp_path, tiny_model_dir, files, capsys):
    train, dev, space = files
    out = tmp_path / "out"
    command = ["search", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir", str(out),
               "--space", space, "--metric", "loss", *FAST]
    assert main([*command, "--trials", "2"]) == 0
    assert main([*command, "--trials", "3"]) == 0  # the same study, continued to 3 trials
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{out / 'search.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.user_attrs["finch"]["objective"] == "eval_loss" and study.direction.name == "MINIMIZE"
    finished = [t for t in study.trials if t.value is not None]
    best = min(finished, key=lambda t: t.value)
    kept = json.loads((out / "best-model" / "search_trial.json").read_text())
    assert kept["trial"] == best.number and kept["objective"] == best.value
    for trial in finished:  # a completed trial's checkpoints only served to resume it
        assert not list((out / f"run-{trial.number}").glob("checkpoint-*"))
    assert f"best: trial {best.number}, eval_loss" in printed
    classify = pipeline("text-classification", model=str(out / "best-model"))
    assert classify("good great nice")[0]["label"] in {"neg", "pos"}

    assert main(["search", "--show", "--output-dir", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("study out: 3 trials") and table[1].split() == [
        "trial", "state", "eval_loss", "learning_rate", "weight_decay", "run"]
    assert [line.split()[0] for line in table[2:5]] == ["0", "1", "2"] and "run-2" in table[4]


def test_the_default_space_searches_hf_parameters(tmp_path, tiny_model_dir, files):
    train, dev, _ = files
    out = tmp_path / "out"
    assert main(["search", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir",
                 str(out), "--trials", "1", "--no-prune", *FAST]) == 0
    (trial,) = optuna.load_study(study_name="out", storage=f"sqlite:///{out / 'search.db'}").trials
    assert set(trial.params) == {"learning_rate", "num_train_epochs", "seed", "per_device_train_batch_size"}


@pytest.mark.slow
def test_a_study_continues_only_with_its_fixed_settings(tmp_path, tiny_model_dir, files, capsys):
    """Trials trained with other fixed settings are refused before training (they would be ranked with the study's);
    settings that cannot change the objective, and what the space searches, do not count."""
    train, dev, _ = files
    out = tmp_path / "out"
    command = ["search", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir", str(out),
               "--no-prune", *FAST]
    storage = f"sqlite:///{out / 'search.db'}"
    assert main([*command, "--trials", "1", "--learning-rate", "1e-3"]) == 0
    assert "warning: learning_rate=0.001 is ignored: the search space sets learning_rate" in capsys.readouterr().out
    recorded = optuna.load_study(study_name="out", storage=storage).user_attrs["finch_settings"]
    assert recorded["weight_decay"] == 0.0 and recorded["max_steps"] == 4
    assert "learning_rate" not in recorded and "logging_steps" not in recorded and "output_dir" not in recorded

    assert main([*command, "--trials", "2", "--weight-decay", "0.5", "--max-steps", "2"]) == 2
    error = capsys.readouterr().err
    assert "max_steps: 4 in the study, 2 now; weight_decay: 0.0 in the study, 0.5 now" in error, error
    assert "--max-steps 4 --weight-decay 0.0" in error and "--study-name NAME" in error and "Traceback" not in error
    assert [t.number for t in optuna.load_study(study_name="out", storage=storage).trials] == [0]
    assert not (out / "run-1").exists()  # nothing trained

    assert main([*command, "--trials", "2", "--logging-steps", "1", "--learning-rate", "3e-4"]) == 0
    assert [t.state.name for t in optuna.load_study(study_name="out", storage=storage).trials] == ["COMPLETE"] * 2

    with sqlite3.connect(out / "search.db") as database:  # as an older finch left it: no settings recorded
        database.execute("DELETE FROM study_user_attributes WHERE key = 'finch_settings'")
    assert main([*command, "--trials", "2", "--weight-decay", "0.5"]) == 0  # accepted: nothing to compare with
    assert "note: study 'out' was started by an older finch" in capsys.readouterr().out
    assert "finch_settings" not in optuna.load_study(study_name="out", storage=storage).user_attrs


@pytest.mark.slow
@pytest.mark.parametrize("space, extra, message", [
    ("learning_rat: {low: 1e-5, high: 1e-3}", [], "unknown option(s) 'learning_rat' (did you mean 'learning_rate'"),
    ("per_device_train_batch_size: {low: 0.5, high: 8.5}", [], "per_device_train_batch_size: low: must be an integer"),
    ("per_device_train_batch_size: {type: float, low: 1, high: 8}", [], "use type: int"),
    ("per_device_train_batch_size: [8, big]", [], "must be an integer, but it is 'big'"),
    ("learning_rate: 3e-5", [], "is a fixed value"),
    ("learning_rate: {low: 1e-3, high: 1e-5}", [], "must be less than high"),
    ("warmup_steps: [-5, 2]", [], "warmup_steps"),
    ("learning_rate: [1e-3]", ["--storage", "postgresql://finch@127.0.0.1:1/nowhere"], "cannot open the database"),
    ("learning_rate: [1e-3]", ["--resume", "auto"], "drop --resume"),
])
def test_mistakes_exit_2_before_training(tmp_path, tiny_model_dir, files, capsys, space, extra, message):
    train, dev, _ = files
    (tmp_path / "bad.yaml").write_text(space + "\n")
    code = main(["search", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir",
                 str(tmp_path / "out"), "--space", str(tmp_path / "bad.yaml"), *extra, *FAST])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error, error
    assert not list(tmp_path.glob("out/run-*"))  # nothing trained


@pytest.mark.slow
def test_search_on_two_processes_trains_each_trial_on_both_and_reports_once(tmp_path, tiny_model_dir, files):
    """`finch search --nproc-per-node 2` relaunches through torchrun: rank 0 owns the study, each trial trains on
    both processes (DDP), and the table, the best model and the study's files are written once."""
    train, dev, space = files
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "finch.cli", "search", "--nproc-per-node", "2", "--model",
                             tiny_model_dir, "--train", train, "--validation", dev, "--output-dir", str(out),
                             "--space", space, "--metric", "loss", "--trials", "2", "--ddp-timeout", "90", *FAST],
                            env=environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-6000:]
    assert printed.count("batch 8 x 2 processes") == 2, "each of the 2 trials trains on both processes"
    assert result.stdout.count("best: trial") == 1, "rank 0 alone reports"
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{out / 'search.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    best = min(study.trials, key=lambda t: t.value)
    kept = json.loads((out / "best-model" / "search_trial.json").read_text())
    assert kept["trial"] == best.number and kept["objective"] == best.value
    assert not list(out.glob(".tmp-*")) and not list(out.glob("run-*/checkpoint-*"))
    classify = pipeline("text-classification", model=str(out / "best-model"))
    assert classify("good great nice")[0]["label"] in {"neg", "pos"}


def test_show_without_a_search_exits_2(tmp_path, capsys):
    assert main(["search", "--show", "--output-dir", str(tmp_path / "none")]) == 2
    assert "no search in" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("url, said", [
    ("postgresql://finch:secret@127.0.0.1:54x2/db", "is not a database URL"),  # a port typo: the URL does not parse
    ("postgresql://finch:sec@ret@127.0.0.1:54x2/db", "is not a database URL"),  # an unescaped "@" in the password
    ("postgres://finch:secret@127.0.0.1/db", "use postgresql://finch:***@127.0.0.1/db"),
    ("postgresql://finch:secret@127.0.0.1:1/db", "cannot open the database"),  # nothing listens there
    ("mysql+nodriver://finch:secret@127.0.0.1/db", "'mysql+nodriver' is no database (or driver) SQLAlchemy knows"),
    ("mysql2://finch:secret@127.0.0.1/db", "'mysql2' is no database (or driver) SQLAlchemy knows; use sqlite:///"),
])
def test_no_storage_url_is_printed_with_its_password(tmp_path, capsys, url, said):
    """Every path through which a storage URL reaches a message masks its password, parsed or not."""
    assert main(["search", "--show", "--storage", url, "--study-name", "x"]) == 2
    error = capsys.readouterr().err
    assert said in error and "***@127.0.0.1" in error and "secret" not in error and "ret@" not in error, error


def test_mask_secrets_hides_passwords_in_urls_and_dsns():
    from finch.errors import mask_secrets

    assert mask_secrets("at postgresql+psycopg://u:p%40ss@h:5432/d now") == "at postgresql+psycopg://u:***@h:5432/d now"
    assert mask_secrets("host=h user=u password=hunter2 dbname=d") == "host=h user=u password=*** dbname=d"
    assert mask_secrets("https://u:tok@example.com/x?token=abc&y=1") == "https://u:***@example.com/x?token=***&y=1"
    assert mask_secrets("sqlite:///a/search.db and postgresql://u@h/d") == "sqlite:///a/search.db and postgresql://u@h/d"


def test_show_of_a_missing_sqlite_file_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "typo.db"
    assert main(["search", "--show", "--storage", f"sqlite:///{missing}", "--study-name", "x"]) == 2
    assert f"no database file {missing}" in capsys.readouterr().err and not missing.exists()


def test_a_study_continued_with_another_direction_or_objective_is_refused(tmp_path):
    """Optuna would reuse a study of the opposite direction silently (its best trial then the worst)."""
    from finch.errors import ConfigError
    from finch.search.storage import create_study, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_study(storage, "s", ["minimize"], objective="eval_loss")
    with pytest.raises(ConfigError, match="'s' was created to minimize and is now asked to maximize.*another study"):
        create_study(storage, "s", ["maximize"], load_if_exists=True, objective="eval_loss")
    with pytest.raises(ConfigError, match="'s' optimises eval_loss, not eval_f1.*choose another study name"):
        create_study(storage, "s", ["minimize"], load_if_exists=True, objective="eval_f1")
    assert create_study(storage, "s", ["minimize"], load_if_exists=True, objective="eval_loss").study_name == "s"


@pytest.mark.slow
def test_search_refuses_a_study_of_the_opposite_direction_before_training(tmp_path, tiny_model_dir, files, capsys):
    train, dev, space = files
    out = tmp_path / "out"
    out.mkdir()
    optuna.create_study(study_name="out", storage=f"sqlite:///{out / 'search.db'}", direction="minimize")
    code = main(["search", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir", str(out),
                 "--space", space, "--metric", "accuracy", "--trials", "1", *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "was created to minimize and is now asked to maximize" in error, error
    assert not list(out.glob("run-*"))


def test_a_search_into_a_training_runs_folder_is_refused_without_suggesting_resume(tmp_path, files, capsys):
    train, dev, space = files
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    code = main(["search", "--train", train, "--validation", dev, "--output-dir", str(out), "--space", space, *FAST])
    error = capsys.readouterr().err
    assert code == 2 and f"output_dir {out} is a finch train run's folder (it holds model, log.jsonl)" in error
    assert "Choose another --output-dir for the search" in error and "--resume" not in error
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "model"]


def test_finchs_logger_masks_any_password_it_is_given(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="finch"):
        logging.getLogger("finch").warning("tracker failed (%s)", "OperationalError: postgresql://u:hunter2@h/db")
    assert "hunter2" not in caplog.text and "postgresql://u:***@h/db" in caplog.text


def test_a_worker_with_other_data_or_metric_is_told_what_differs():
    from finch.cli.search import _claim_study
    from finch.errors import ConfigError

    study = optuna.create_study(study_name="s")
    identity = {"objective": "eval_loss", "direction": "minimize", "model": "m", "data": "d1", "validation": "v1"}
    _claim_study(study, identity)
    with pytest.raises(ConfigError) as error:
        _claim_study(study, {**identity, "data": "d2", "objective": "eval_f1"})
    said = str(error.value)
    assert "started with another objective, data (objective: eval_loss then, eval_f1 now; the data set is not the " \
           "one its trials used)" in said and "()" not in said and "--study-name NAME" in said


@pytest.mark.parametrize("url, fragments", [
    ("postgresql://finch:sec@ret@127.0.0.1/db", ["sec", "ret@"]),  # a raw "@": the driver would print 'ret@host'
    ("postgresql://finch:p@ss:w0rd@127.0.0.1/db", ["ss:w0rd", "w0rd"]),
    ("postgresql://finch:a@b/c#d@127.0.0.1:5432/db", ["b/c", "#d"]),
])
def test_no_piece_of_a_password_with_reserved_characters_is_printed(capsys, url, fragments):
    """A password holding `@`, `:`, `/` or `#` unescaped: refused with the percent-encoding fix, and no piece of it
    (which a driver prints as a host name or port) reaches the message."""
    assert main(["search", "--show", "--storage", url, "--study-name", "x"]) == 2
    error = capsys.readouterr().err
    assert "percent-encode" in error and "%40" in error, error
    assert not [piece for piece in fragments if piece in error], error


def test_a_sqlite_url_naming_a_folder_says_to_name_a_file(tmp_path, capsys):
    assert main(["search", "--show", "--storage", f"sqlite:///{tmp_path}", "--study-name", "x"]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path} is a folder" in error and f"sqlite:///{tmp_path / 'search.db'}" in error, error
    assert "server" not in error  # SQLite has no server, user or password to check


@pytest.mark.parametrize("space, extra, message", [
    ("learning_rate: {low: 1e-3, high: 1e-5}", [], "must be less than high"),
    ("learning_rate: {low: 0, high: 1e-3, log: true}", [], "a log range needs low > 0"),
    ("learning_rate: [1e-3]", ["--storage", "sqlite:///no/such/folder/s.db"], "folder no/such/folder does not exist"),
    ("learning_rate: [1e-3]", ["--storage", "postgresql://u:p@ss@127.0.0.1/db"], "percent-encode"),
])
def test_search_inputs_are_checked_before_the_data_is_read(tmp_path, capsys, space, extra, message):
    """The space file and the storage URL cost nothing to check: a mistake in them is reported before the data is
    read and tokenized (here the data does not even exist, and its error would otherwise come first)."""
    (tmp_path / "space.yaml").write_text(space + "\n")
    code = main(["search", "--train", str(tmp_path / "missing.csv"), "--output-dir", str(tmp_path / "out"),
                 "--space", str(tmp_path / "space.yaml"), *extra])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "missing.csv" not in error, error
    assert not (tmp_path / "out").exists()
