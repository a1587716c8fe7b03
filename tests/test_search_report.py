"""The HTML report of a `finch search` folder: written at the end of the search and by `finch report`, read back as
text and rendered by headless Chromium."""

import re

import optuna
import pytest
from test_report import chromium, needs_chromium
from test_search_cli import FAST, files  # noqa: F401 (files is a fixture)

from finch.cli.commands import main
from finch.report.search_page import MIN_TRIALS_FOR_IMPORTANCE
from finch.report.write import write_report

pytestmark = pytest.mark.usefixtures("one_thread")
TRIALS = 5


@pytest.fixture
def search(tmp_path, tiny_model_dir, files, capsys):  # noqa: F811
    train, dev, space = files
    out = tmp_path / "out"
    assert main(["search", "--model", tiny_model_dir, "--train", train, "--validation", dev, "--output-dir", str(out),
                 "--space", space, "--metric", "loss", "--trials", str(TRIALS), *FAST]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    return out


@pytest.mark.slow
def test_finch_search_writes_the_report_of_its_study(search):
    page = (search / "report.html").read_text()
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{search / 'search.db'}")
    assert "finch search report: out" in page and "eval_loss (minimize)" in page
    rows = re.search(r"<table class='trials'>(.*?)</table>", page).group(1).split("<tr>")[2:]
    assert len(rows) == TRIALS
    for row, trial in zip(rows, study.trials):
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[:4] == [str(trial.number), "complete", f"{trial.value:.4g}", str(max(trial.intermediate_values))]
        assert f"{trial.params['learning_rate']:.4g}" in cells and f"{trial.params['weight_decay']:.4g}" in cells
    best = study.best_trial
    assert f"<td>{best.number}: eval_loss {best.value:.4g}</td>" in page and "best-model (trial" in page
    for title in ("Objective by trial", "Trials", "Parameter importance"):
        assert f"<h2>{title}</h2>" in page, title
    importance = page[page.index("<h2>Parameter importance</h2>"):]
    for name in ("learning_rate", "weight_decay"):  # a parameter every trial drew alike explains nothing: left out
        varied = len({trial.params[name] for trial in study.trials}) > 1
        assert (f"<th>{name}</th>" in importance) == varied, name
    assert page.count("<svg") == 3  # objective by trial, at each evaluation, importance
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # self-contained


def test_a_small_study_with_a_pruned_trial(tmp_path, capsys):
    study = optuna.create_study(study_name="small", storage=f"sqlite:///{tmp_path / 'search.db'}")
    study.optimize(lambda trial: trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True), n_trials=2)
    pruned = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
    pruned.report(7.5, step=2)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert main(["report", str(tmp_path)]) == 0  # finch report on a search folder: the search's report
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text()
    assert (
        "3: 2 complete, 1 pruned" in page and "<td>2</td><td>pruned</td><td>7.5</td><td>2</td>" in page
    )  # Optuna: its last value
    assert f"Needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials whose parameters differ (2 completed" in page
    assert page.count("<svg") == 2  # objective by trial (the pruned one at 7.5), at each evaluation


@pytest.mark.slow
@needs_chromium
def test_search_report_renders_in_headless_chromium(search, tmp_path):
    image, dom, console = chromium(write_report(search, out=tmp_path / "search.html"), tmp_path)
    assert console == []  # the page runs no script and logs nothing
    assert image.shape == (3000, 1200)
    ink = (image < 200).mean()  # text, lines and plots on a white page
    assert 0.01 < ink < 0.5, ink
    assert (image[:1200] < 200).mean() > 0.01  # the top (overview, plots) is not blank
    for title in ("Search", "Objective by trial", "Trials", "Parameter importance"):
        assert f"<h2>{title}</h2>" in dom, title
    assert dom.count("<svg") == 3  # the browser parsed every plot
