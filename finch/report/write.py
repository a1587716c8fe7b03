"""Which report a folder gets: a `finch search` folder (it holds `search.db`) the search's, any other the run's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finch.report.eval_examples import FILE as EVAL_EXAMPLES
from finch.report.eval_examples import EvalExamples
from finch.report.run_page import write_run_report
from finch.report.search_page import is_search_folder, write_search_report

logger = logging.getLogger("finch")


def write_report(output_dir: str | Path, out: str | Path | None = None, predictions: Any = None,
                 texts: Any = None) -> Path:
    """Write the HTML report of the run or search in `output_dir`; returns its path. For a run, `predictions`
    and `texts` add the per-example sections (see `run_page.write_run_report`).

    Raises:
        ConfigError: `output_dir` is neither a run's nor a search's output folder.
    """
    if is_search_folder(output_dir):
        return write_search_report(output_dir, out)
    return write_run_report(output_dir, out, predictions, texts)


def try_write_report(output_dir: str | Path,
                     examples: Callable[[], EvalExamples | None] | None = None) -> Path | None:
    """`write_report(output_dir)`, with any failure turned into one warning (the end of a run must not fail).
    `examples()`: the final evaluation's, written first to `<output_dir>/eval_examples.jsonl` for the report."""
    try:
        found = examples() if examples is not None else None
        if found is not None:
            found.write(Path(output_dir) / EVAL_EXAMPLES)
        return write_report(output_dir)
    except Exception as error:  # noqa: BLE001 (observers never stop training: DESIGN invariant 14)
        logger.warning("the HTML report of %s could not be written (%s: %s); make it later with "
                       "`finch report %s`", output_dir, type(error).__name__, error, output_dir)
        return None


