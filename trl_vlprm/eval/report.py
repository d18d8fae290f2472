"""Tables (CSV + Markdown) and plots (accuracy vs N) of sweep results.

A result row is a mapping with at least `benchmark`, `policy`, `scorer`, `selection`, `n`, `accuracy`; tables put
one line per (benchmark, policy, scorer, selection) and one column per N. All files are written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_vlprm.utils.resume import atomic_write_text

ROW_KEY = ("benchmark", "policy", "scorer", "selection")
NO_SCORER_ROW = "-"  # the scorer of a row whose selection reads none (`trl_vlprm.eval.selection.NO_SCORER`)


def _pivot(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], dict[tuple, dict[int, float]]]:
    n_values = sorted({int(row["n"]) for row in rows})
    table: dict[tuple, dict[int, float]] = {}
    for row in rows:
        table.setdefault(tuple(row[k] for k in ROW_KEY), {})[int(row["n"])] = float(row["accuracy"])
    return n_values, table


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Long format: one line per result row, columns in the order of the first row."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def rows_to_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 1) -> str:
    """Wide Markdown table: accuracy in percent, one column per N."""
    n_values, table = _pivot(rows)
    header = "| " + " | ".join([*ROW_KEY, *(f"N={n}" for n in n_values)]) + " |"
    lines = [header, "|" + "---|" * (len(ROW_KEY) + len(n_values))]
    for key, by_n in table.items():
        cells = [f"{100 * by_n[n]:.{digits}f}" if n in by_n else "" for n in n_values]
        lines.append("| " + " | ".join([*map(str, key), *cells]) + " |")
    return "\n".join(lines) + "\n"


def rows_to_long_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 1) -> str:
    """Markdown with one line per row and the row's own columns; floats (rates) shown in percent."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{100 * row[k]:.{digits}f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    rows: Sequence[Mapping[str, Any]], output_dir: str | Path, stem: str = "results", wide: bool = True
) -> list[Path]:
    """`<stem>.csv` (one line per row) and `<stem>.md` in `output_dir`; returns their paths.

    `wide=True` pivots the Markdown to one column per N (sweep rows); `wide=False` keeps one line per row.
    """
    output_dir = Path(output_dir)
    csv_path, md_path = output_dir / f"{stem}.csv", output_dir / f"{stem}.md"
    atomic_write_text(csv_path, rows_to_csv(rows))
    atomic_write_text(md_path, rows_to_markdown(rows) if wide else rows_to_long_markdown(rows))
    return [csv_path, md_path]


def plot_layout(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], list[tuple]]]:
    """How `plot_accuracy_vs_n` lays out `rows`: (scorers: one row of panels each, columns: one panel per benchmark
    and policy, lines: {(scorer, column): [(selection, {n: accuracy}, whether it reads the scorer)]}).

    A panel holds the selections of one scorer, plus the selections that read no scorer (first, majority, pass@n) as
    references: a line is told apart by its selection alone, so the legend lists each selection once however many
    scorers, benchmarks and policies there are (a newcomer's run once had 17 entries in one legend).
    """
    _, table = _pivot(rows)
    policies = {key[1] for key in table}
    scorers = list(dict.fromkeys(key[2] for key in table if key[2] != NO_SCORER_ROW)) or [NO_SCORER_ROW]
    columns = list(dict.fromkeys(key[0] if len(policies) == 1 else f"{key[0]} / {key[1]}" for key in table))
    lines: dict[tuple[str, str], list[tuple]] = {}
    for (benchmark, policy, scorer, selection), by_n in table.items():
        column = benchmark if len(policies) == 1 else f"{benchmark} / {policy}"
        for row_scorer in scorers if scorer == NO_SCORER_ROW else [scorer]:
            lines.setdefault((row_scorer, column), []).append((selection, by_n, scorer != NO_SCORER_ROW))
    return scorers, columns, lines


def plot_accuracy_vs_n(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """PNG: accuracy (%) against N on a log2 axis; a panel per scorer and benchmark (and policy, when there are
    several), a line per selection, and one legend for the figure (`plot_layout`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_accuracy_vs_n: no result rows")
    n_values = sorted({int(row["n"]) for row in rows})
    scorers, columns, lines = plot_layout(rows)
    selections = list(dict.fromkeys(selection for panel in lines.values() for selection, *_ in panel))
    palette = plt.get_cmap("tab10" if len(selections) <= 10 else "tab20").colors
    # one benchmark: the scorers side by side; several: a row of panels per scorer, a column per benchmark
    shape = (1, len(scorers)) if len(columns) == 1 else (len(scorers), len(columns))
    figure, axes = plt.subplots(*shape, figsize=(5.0 * shape[1], 3.6 * shape[0]), squeeze=False, sharey=True)
    handles: dict[str, Any] = {}
    for i, scorer in enumerate(scorers):
        for j, column in enumerate(columns):
            row, col = (0, i) if len(columns) == 1 else (i, j)
            axis = axes[row][col]
            for selection, by_n, reads_scorer in lines.get((scorer, column), []):
                xs = [n for n in n_values if n in by_n]
                if selection == "pass@n":  # the oracle upper bound
                    color, style = "black", "--"
                else:
                    color = palette[selections.index(selection) % len(palette)]
                    style = "-" if reads_scorer else ":"  # dotted: reads no scorer, the same in every panel
                (line,) = axis.plot(
                    xs, [100 * by_n[n] for n in xs], linestyle=style, color=color, marker="o", markersize=3
                )
                handles.setdefault(selection, line)
            axis.set_xscale("log", base=2)
            axis.set_xticks(n_values, [str(n) for n in n_values])
            axis.set_title(column if scorer == NO_SCORER_ROW else f"{column}: scorer {scorer}", fontsize=10)
            axis.grid(alpha=0.3)
            if row == shape[0] - 1:
                axis.set_xlabel("N (solutions sampled)")
            if col == 0:
                axis.set_ylabel("accuracy (%)")
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(len(handles), 6),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06 + 0.03 * (len(handles) > 6), 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    path = Path(path)
    atomic_write_text(path, buffer.getvalue())
    return path
