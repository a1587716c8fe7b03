"""The HTML both reports are made of: the page around them, sections, tables, numbers, and inline SVG plots.

The run report (`run_page`) and the search report (`search_page`) share these and nothing else; neither imports
the other (`finch.report.write` picks the page a folder gets).
"""

from __future__ import annotations

import html
import importlib.util
import io
import json
from typing import Any

import numpy as np

REPORT = "report.html"  # the page's file name in a run's or a search's output folder


def section(title: str, body: str, collapsed: bool = False) -> str:
    if collapsed:
        return f"<details><summary><h2>{html.escape(title)}</h2></summary>{body}</details>"
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def table(rows: Any) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{cell(value)}</td></tr>" for key, value in rows)
    return f"<table>{cells}</table>"


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value))
    return html.escape(number(value) if isinstance(value, float) else str(value))


def number(value: float) -> str:
    """4 significant digits, no exponent for ordinary magnitudes: 0.6931, 1.25e-05, 1234."""
    return f"{value:.4g}"


# ---- plots -----------------------------------------------------------------------------------------------------------
class Plots:
    """Inline SVG plots from matplotlib when it is installed; otherwise nothing (the tables say it all)."""

    def __init__(self) -> None:
        self.available = importlib.util.find_spec("matplotlib") is not None

    def note(self) -> str:
        return "" if self.available else ("<p class='note'>Plots need matplotlib: pip install 'finch[report]'. "
                                          "The values are in the log below.</p>")

    def lines(self, title: str, series: dict[str, tuple[list[int], list[float]]]) -> str:
        if not self.available:
            return ""
        figure, axes = self._figure()
        for label, (steps, values) in series.items():
            axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return self._svg(figure)

    def matrix(self, matrix: np.ndarray, names: list[str]) -> str:
        if not self.available or len(names) > 30:
            return ""
        figure, axes = self._figure(size=(1.5 + 0.5 * len(names), 1.2 + 0.5 * len(names)))
        axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
        return self._svg(figure)

    def scatter(self, truth: np.ndarray, predicted: np.ndarray, most: int = 2000) -> str:
        """Predicted against true values with the line where they are equal; at most `most` points (evenly spaced
        rows), so the page stays small."""
        if not self.available or not len(truth):
            return ""
        rows = np.unique(np.linspace(0, len(truth) - 1, min(most, len(truth))).astype(int))
        figure, axes = self._figure(size=(4.2, 4.0))
        axes.scatter(truth[rows], predicted[rows], s=8, alpha=0.6)
        low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="predicted = true")
        axes.set_title("Predicted vs true" + (f" ({len(rows)} of {len(truth)})" if len(rows) < len(truth) else ""))
        axes.set_xlabel("true")
        axes.set_ylabel("predicted")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return self._svg(figure)

    @staticmethod
    def _figure(size: tuple[float, float] = (5.2, 3.0)) -> tuple[Any, Any]:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        figure = Figure(figsize=size, layout="constrained")
        return figure, figure.add_subplot()

    @staticmethod
    def _svg(figure: Any) -> str:
        import matplotlib

        buffer = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: small, searchable
            figure.savefig(buffer, format="svg")
        svg = buffer.getvalue()
        return f"<figure>{svg[svg.index('<svg'):]}</figure>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="finch"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin: 1em 0 0.4em; }} summary h2 {{ display: inline; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }} th {{ background: #f5f5f5; }}
table.matrix td, table.per-class td {{ text-align: right; min-width: 3em; }}
table.hardest td:last-child {{ max-width: 40em; white-space: pre-wrap; }}
figure {{ display: inline-block; margin: 0.5em; }} figure svg {{ max-width: 100%; height: auto; }}
.scroll {{ overflow-x: auto; }} .note, footer {{ color: #666; font-size: 0.85em; }}
</style></head>
<body><h1>{title}</h1>
{body}
<footer>generated by finch on {generated}</footer>
</body></html>
"""
