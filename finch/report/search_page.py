"""The HTML report of a hyperparameter search: the trials, the objective trial by trial, and which parameters mattered.

`finch report SEARCH_DIR` writes it for a `finch search` output folder (the study in its `search.db`), and
`finch search` writes it when it finishes (`report.html` beside `search.db`). It is read from the study alone:
Optuna's database holds every trial's state, parameters, objective and the values reported at each evaluation, so
the report is the same from any machine that can open the study. Parameter importance is Optuna's
(`optuna.importance`, fANOVA), shown only once enough trials have completed for it to mean something.

Reading only, like the run report: a failure to write it at the end of a search is a warning, never the search's end.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
import math
from pathlib import Path
from typing import Any

from finch.errors import ConfigError
from finch.report import markup
from finch.runs.files import write_text

logger = logging.getLogger("finch")

STORAGE_FILE = "search.db"  # finch search's default study database, in its output folder
MIN_TRIALS_FOR_IMPORTANCE = 4  # completed trials below which fANOVA's importances are noise


def is_search_folder(folder: str | Path) -> bool:
    """Whether `folder` is a `finch search` output folder (its study database is there)."""
    return (Path(folder) / STORAGE_FILE).is_file()


def write_search_report(output_dir: str | Path, out: str | Path | None = None, storage_url: str | None = None,
                        study_name: str | None = None) -> Path:
    """Write the HTML report of the search in `output_dir`; returns its path.

    Args:
        output_dir: the search's output folder.
        out: where to write it (default `<output_dir>/report.html`).
        storage_url: the study's database (default: `output_dir`'s `search.db`).
        study_name: the study (default: the only one in the database, else the one named after `output_dir`).

    Raises:
        ConfigError: no study there.
    """
    study = load_study(Path(output_dir), storage_url, study_name)
    path = Path(out) if out is not None else Path(output_dir) / markup.REPORT
    write_text(path, render_search(study, Path(output_dir)))
    return path


def try_write_search_report(output_dir: str | Path, storage_url: str | None = None,
                            study_name: str | None = None) -> Path | None:
    """`write_search_report`, with any failure turned into one warning (the end of a search must not fail)."""
    try:
        return write_search_report(output_dir, storage_url=storage_url, study_name=study_name)
    except Exception as error:  # noqa: BLE001 (observers never stop the work: DESIGN invariant 14)
        logger.warning("the HTML report of the search in %s could not be written (%s: %s); make it later with "
                       "`finch report %s`", output_dir, type(error).__name__, error, output_dir)
        return None


def load_study(folder: Path, storage_url: str | None, study_name: str | None) -> Any:
    from finch.search.storage import import_optuna, open_storage

    optuna = import_optuna()
    if storage_url is None and not is_search_folder(folder):
        raise ConfigError(f"{folder} holds no search: no {STORAGE_FILE}")
    storage = open_storage(storage_url or f"sqlite:///{folder.resolve() / STORAGE_FILE}", create=False)
    names = optuna.get_all_study_names(storage)
    name = study_name or (names[0] if len(names) == 1 else folder.resolve().name)
    if name not in names:
        raise ConfigError(f"no study {name!r} in that storage; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def render_search(study: Any, folder: Path) -> str:
    """The search report's HTML."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    objective = study.user_attrs.get("finch", {}).get("objective", "objective")
    single = len(study.directions) == 1
    plots = SearchPlots()
    sections = [_overview(study, trials, completed, objective, folder)]
    if single and trials:
        curves = [plots.objective_by_trial(trials, objective, study.direction.name.lower())]
        if any(t.intermediate_values for t in trials):
            curves.append(plots.intermediate(trials, objective))
        sections.append(markup.section("Objective by trial", "".join(curves) + plots.note()))
    sections.append(markup.section("Trials", _trials_table(trials, objective)))
    sections.append(_importance_section(study, completed, single, plots))
    title = f"finch search report: {study.study_name}"
    return markup.PAGE.format(title=html.escape(title), body="\n".join(sections),
                       generated=html.escape(datetime.datetime.now().isoformat(timespec="seconds")))


# ---- sections --------------------------------------------------------------------------------------------------------
def _overview(study: Any, trials: list, completed: list, objective: str, folder: Path) -> str:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    directions = ", ".join(d.name.lower() for d in study.directions)
    facts: list[tuple[str, Any]] = [("study", study.study_name), ("output folder", str(folder)),
                                    ("objective", f"{objective} ({directions})"),
                                    ("trials", f"{len(trials)}: " + ", ".join(f"{n} {s}" for s, n in
                                                                             sorted(counts.items())))]
    if completed and len(study.directions) == 1:
        best = study.best_trial
        facts.append(("best trial", f"{best.number}: {objective} {markup.number(best.value)}"))
        facts.append(("best parameters", ", ".join(f"{k}={_value(v)}" for k, v in best.params.items())))
    best_model = folder / "best-model"
    if (best_model / "search_trial.json").exists():
        kept = json.loads((best_model / "search_trial.json").read_text())
        facts.append(("best model", f"{best_model} (trial {kept.get('trial')})"))
    return markup.section("Search", markup.table(facts))


def _trials_table(trials: list, objective: str) -> str:
    names = sorted({name for trial in trials for name in trial.params})
    header = ["trial", "state", objective, "examples seen", *names, "seconds"]
    rows = []
    for trial in trials:
        values = trial.values or []
        value = ", ".join(_value(v) for v in values) if values else ""
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        cells = [trial.number, trial.state.name.lower(), value, max(trial.intermediate_values, default=""),
                 *(_value(trial.params[n]) if n in trial.params else "" for n in names),
                 "" if seconds is None else f"{seconds:.1f}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    return f"<div class='scroll'><table class='trials'><tr>{head}</tr>{''.join(rows)}</table></div>"


def _importance_section(study: Any, completed: list, single: bool, plots: SearchPlots) -> str:
    title = "Parameter importance"
    varied = [name for name in {n for t in completed for n in t.params}
              if len({json.dumps(t.params.get(name), default=str) for t in completed}) > 1]
    if not single:
        return markup.section(title, "<p>Not computed for a search of several objectives.</p>")
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCE or not varied:
        return markup.section(title, f"<p>Needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials whose parameters "
                               f"differ ({len(completed)} completed so far).</p>")
    import optuna

    try:
        importances = optuna.importance.get_param_importances(study, params=sorted(varied))
    except (ValueError, RuntimeError) as error:  # Optuna's own refusals (e.g. a space that changed between trials)
        return markup.section(title, f"<p>Optuna could not compute them: {html.escape(str(error))}</p>")
    body = (f"<p>fANOVA (optuna.importance) over {len(completed)} completed trials: the share of the objective's "
            f"variance each parameter explains.</p>" + markup.table((k, v) for k, v in importances.items()))
    return markup.section(title, body + plots.bars(importances))


def _value(value: Any) -> str:
    return markup.number(value) if isinstance(value, float) else str(value)


# ---- plots -----------------------------------------------------------------------------------------------------------
class SearchPlots(markup.Plots):
    """The run report's inline SVG plots, with those of a search."""

    def objective_by_trial(self, trials: list, objective: str, direction: str) -> str:
        """Each finished trial's objective (pruned ones at their last reported value) and the best so far."""
        if not self.available:
            return ""
        import optuna

        figure, axes = self._figure()
        complete = [(t.number, t.value) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
                  if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
        if complete:
            axes.plot(*zip(*complete), "o", label="complete")
            best, line = math.nan, []
            for number, value in complete:
                best = value if math.isnan(best) else (max if direction == "maximize" else min)(best, value)
                line.append((number, best))
            axes.step(*zip(*line), where="post", label="best so far")
        if pruned:
            axes.plot(*zip(*pruned), "x", label="pruned (last value)")
        axes.set_title(f"{objective} by trial")
        axes.set_xlabel("trial")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return self._svg(figure)

    def intermediate(self, trials: list, objective: str) -> str:
        """The objective at each evaluation of each trial (the last 12), against the training examples seen (what
        finch reports it at): where pruned trials were stopped."""
        if not self.available:
            return ""
        figure, axes = self._figure()
        for trial in [t for t in trials if t.intermediate_values][-12:]:  # more make an unreadable legend
            seen = sorted(trial.intermediate_values)
            label = f"trial {trial.number}{' (pruned)' if trial.state.name == 'PRUNED' else ''}"
            axes.plot(seen, [trial.intermediate_values[s] for s in seen], marker="o", markersize=3, label=label)
        axes.set_title(f"{objective} at each evaluation")
        axes.set_xlabel("training examples seen")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        return self._svg(figure)

    def bars(self, importances: dict[str, float]) -> str:
        if not self.available:
            return ""
        figure, axes = self._figure(size=(5.2, 0.6 + 0.35 * len(importances)))
        names = list(importances)[::-1]
        axes.barh(names, [importances[name] for name in names])
        axes.set_title("parameter importance")
        axes.set_xlabel("share of the objective's variance")
        return self._svg(figure)
