"""Result tables to the trackers a TRL user names with `report_to`: TensorBoard, Trackio, Weights & Biases.

Training passes `report_to` to transformers' own integrations (`VLPRMConfig` is a `TrainingArguments`); the
evaluation sweep and labelling are not trainers, so they log their tables here, under the same names:
`report_to="none"` (the default) logs nothing, `"all"` every tracker installed, or a list of names. A tracker named
but not installed is an error naming the package to install, before any work is done (`check_report_to`).

What each tracker receives for a table of rows (mappings with the same keys):
- "tensorboard": the table as Markdown text (TensorBoard's text tab renders it) under `<name>`, and every numeric
  column of every row as a scalar `<name>/<key columns>/<column>` at step `step_column` (e.g. accuracy against N),
  in `<logging_dir>` (`torch.utils.tensorboard.SummaryWriter`);
- "trackio": `trackio.Table(dataframe=...)` under `<name>` (a local SQLite project unless a Space is configured);
- "wandb": `wandb.Table(columns, data)` under `<name>` (`WANDB_MODE=offline` writes the run under `<logging_dir>`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# tracker name -> the package that provides it
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def resolve_report_to(report_to: None | str | Sequence[str]) -> list[str]:
    """The tracker names `report_to` stands for: [] for None/"none", every installed tracker for "all"."""
    names = [report_to] if isinstance(report_to, str) or report_to is None else list(report_to)
    names = [name for name in names if name not in (None, "none")]
    if "all" in names:
        return [name for name, package in TRACKERS.items() if importlib.util.find_spec(package) is not None]
    return list(dict.fromkeys(names))


def check_report_to(report_to: None | str | Sequence[str], where: str) -> list[str]:
    """`resolve_report_to`, with a `ValueError` naming `where` for an unknown tracker or one not installed."""
    names = resolve_report_to(report_to)
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"{where}: unknown tracker {name!r}; known: {', '.join(TRACKERS)}, 'all' or 'none'")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(f"{where}: tracker {name!r} is not installed (pip install {TRACKERS[name]})")
    return names


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def log_tables(
    report_to: None | str | Sequence[str],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    logging_dir: str | Path,
    project: str = "trl_vlprm",
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    step_column: str | None = None,
) -> list[str]:
    """Log each table `{name: rows}` to every tracker of `report_to`; returns the trackers written to.

    Args:
        report_to: as `TrainingArguments.report_to`: "none", "all", a name or a list of names.
        tables: table name -> rows (mappings with the same keys, in column order); empty tables are left out.
        logging_dir: where local trackers write (TensorBoard's event files; wandb's offline run).
        project: the trackio / wandb project.
        run_name: the run's name (default: the folder name of `logging_dir`'s parent).
        config: the run's settings, recorded by trackers that keep a config (wandb, trackio; TensorBoard as text).
        step_column: a numeric column read as the step of scalar curves in TensorBoard (e.g. "n"); the other string
            columns name the curve.
    """
    names = check_report_to(report_to, "report_to")
    tables = {name: list(rows) for name, rows in tables.items() if rows}
    if not names or not tables:
        return []
    logging_dir = Path(logging_dir)
    run_name = run_name or logging_dir.parent.name
    config = dict(config or {})
    for name in names:
        if name == "tensorboard":
            _tensorboard(tables, logging_dir, config, step_column)
        elif name == "trackio":
            import pandas as pd
            import trackio

            trackio.init(project=project, name=run_name, config=config)
            trackio.log({table: trackio.Table(dataframe=pd.DataFrame(rows)) for table, rows in tables.items()})
            trackio.finish()
        else:
            import wandb

            logging_dir.mkdir(parents=True, exist_ok=True)
            run = wandb.init(project=project, name=run_name, config=config, dir=str(logging_dir))
            for table, rows in tables.items():
                keys = list(rows[0])
                run.log({table: wandb.Table(columns=keys, data=[[row.get(k) for k in keys] for row in rows])})
            run.finish()
    return names


def _tensorboard(tables, logging_dir: Path, config: Mapping[str, Any], step_column: str | None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logging_dir))
    try:
        if config:
            writer.add_text("config", _markdown([{"setting": k, "value": v} for k, v in config.items()]))
        for table, rows in tables.items():
            writer.add_text(table, _markdown(rows))
            for row in rows:
                labels = [str(v) for k, v in row.items() if k != step_column and not _is_number(v)]
                step = int(row[step_column]) if step_column and _is_number(row.get(step_column)) else 0
                for key, value in row.items():
                    if key != step_column and _is_number(value):
                        writer.add_scalar("/".join([table, *labels, key]), float(value), global_step=step)
    finally:
        writer.close()
