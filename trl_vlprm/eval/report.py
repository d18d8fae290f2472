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


def plot_accuracy_vs_n(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """PNG: one panel per benchmark, accuracy (%) against N on a log2 axis, a line per (policy, scorer, selection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = sorted({row["benchmark"] for row in rows})
    if not benchmarks:
        raise ValueError("plot_accuracy_vs_n: no result rows")
    n_values, table = _pivot(rows)
    policies = {key[1] for key in table}
    # Colour says the selection, line style the scorer, so "best_of_n:min [oracle]" and "[random]" pair up visually.
    selections = list(dict.fromkeys(key[3] for key in table))
    scorers = list(dict.fromkeys(key[2] for key in table if key[2] != "-"))
    palette = plt.get_cmap("tab10" if len(selections) <= 10 else "tab20").colors
    styles = ["-", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(6.0 * len(benchmarks), 4.5), squeeze=False)
    for axis, benchmark in zip(axes[0], benchmarks):
        for (bench, policy, scorer, selection), by_n in table.items():
            if bench != benchmark:
                continue
            label = selection if scorer == "-" else f"{selection} [{scorer}]"
            if len(policies) > 1:
                label = f"{policy}: {label}"
            xs = [n for n in n_values if n in by_n]
            if selection == "pass@n":
                color, style = "black", "--"
            else:
                color = palette[selections.index(selection) % len(palette)]
                style = "-" if scorer == "-" else styles[scorers.index(scorer) % len(styles)]
            axis.plot(xs, [100 * by_n[n] for n in xs], linestyle=style, color=color, marker="o", markersize=3,
                      label=label)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xticks(n_values, [str(n) for n in n_values])
        axis.set_xlabel("N (solutions sampled)")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(benchmark)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    path = Path(path)
    atomic_write_text(path, buffer.getvalue())
    return path
