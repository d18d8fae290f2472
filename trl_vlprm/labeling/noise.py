"""The noise report of a labelling run: where Monte-Carlo labels and the judge disagree, and what each rule drops.

Counted per solution by `count_noise` (the labeller calls it for every solution it combines, so the counts live in
each shard's stats and a resumed run's report covers the whole folder) as flat counters:

* `type <t> compared|disagree|mc_bad_judge_good|mc_good_judge_bad`: steps of type t (perception / reasoning) that
  have both an MC label and a known judge verdict, and how they disagree; with testbed gold also
  `type <t> disagree_mc_right|disagree_judge_right`, who was right where they disagreed;
* `position <k> ...`: the same by the step's position in its solution (1-based, positions past `MAX_POSITION`
  together);
* `rule <r> kept_solutions|kept_steps`: what every rule whose inputs the run has would keep of the same solutions
  (with the run's `disagreement`, `disagreement_weight` and `judge_unknown` settings), beside `solutions`/`steps`;
  with a strong completer (`LabelConfig.strong_completer`) also `rule <r>+completer_agreement ...`, and
  `completers <t> compared|disagree`: where the weak and the strong completer's MC labels differ, by step type.

The judge's verdicts after the first error are "incorrect" by convention under the paper's prompt (it stops there),
and MC's `every_step_until_zero` / `binary_search` labels after the first bad prefix are bad without an estimate: the
positions after a first error compare conventions as much as measurements; read the early positions first.

`noise_report(stats)` turns the counters into tables (printed by `trl-vlprm label`, saved as `noise_report.md` and
`noise_report.json` beside the shards).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trl_vlprm.data.schema import PERCEPTION, REASONING
from trl_vlprm.labeling.combine import RULES, combine, completer_agreement
from trl_vlprm.labeling.judge_prompts import CORRECT, UNKNOWN
from trl_vlprm.utils.resume import atomic_write_text

MAX_POSITION = 8
KINDS = ("compared", "disagree", "mc_bad_judge_good", "mc_good_judge_bad", "disagree_mc_right", "disagree_judge_right")


def _position(index: int) -> str:
    return str(index + 1) if index + 1 < MAX_POSITION else f"{MAX_POSITION}+"


def count_noise(
    counts: Counter,
    step_types: Sequence[str | None],
    mc_labels: Sequence[bool] | None,
    verdicts: Sequence[str] | None,
    gold: Sequence[bool] | None,
    rule_settings: Mapping[str, Any],
    strong_labels: Sequence[bool] | None = None,
) -> None:
    """Add one solution's disagreements and every applicable rule's outcome to `counts` (see the module docstring)."""
    n = len(step_types)
    counts["solutions"] += 1
    counts["steps"] += n
    if mc_labels is not None and verdicts is not None:
        for i, (kind, mc, verdict) in enumerate(zip(step_types, mc_labels, verdicts)):
            if verdict == UNKNOWN:
                continue
            judged = verdict == CORRECT
            keys = [f"type {kind if kind == PERCEPTION else REASONING}", f"position {_position(i)}"]
            found = ["compared"]
            if judged != mc:
                found += ["disagree", "mc_bad_judge_good" if judged else "mc_good_judge_bad"]
                if gold is not None:
                    found.append("disagree_mc_right" if mc == gold[i] else "disagree_judge_right")
            counts.update(f"{key} {what}" for key in keys for what in found)
    if mc_labels is not None and strong_labels is not None:
        for kind, weak, strong in zip(step_types, mc_labels, strong_labels):
            key = f"completers {kind if kind == PERCEPTION else REASONING}"
            counts[f"{key} compared"] += 1
            counts[f"{key} disagree"] += int(weak != strong)
    for name in RULES.names():
        rule = RULES.get(name)
        if (rule.needs_mc and mc_labels is None) or (rule.needs_judge and verdicts is None):
            continue
        combined = combine(
            name,
            n,
            list(mc_labels) if mc_labels is not None else None,
            list(verdicts) if verdicts is not None else None,
            **rule_settings,
        )
        outcomes = [(name, combined)]
        if strong_labels is not None and mc_labels is not None:
            outcomes.append((f"{name}+completer_agreement", completer_agreement(combined, mc_labels, strong_labels)))
        for label, outcome in outcomes:
            kept = outcome.kept_length()
            counts[f"rule {label} kept_solutions"] += int(kept > 0)
            counts[f"rule {label} kept_steps"] += kept


def noise_tables(counts: Mapping[str, int]) -> dict[str, Any]:
    """The counters as three tables: by step type, by position, by rule."""

    def group(prefix: str) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for key, value in counts.items():
            if key.startswith(prefix + " "):
                name, _, kind = key[len(prefix) + 1 :].rpartition(" ")
                table.setdefault(name, {k: 0 for k in KINDS})[kind] = value
        return table

    positions = group("position")
    order = sorted(positions, key=lambda p: int(p.rstrip("+")))
    rules: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        if key.startswith("rule "):
            name, _, kind = key[5:].rpartition(" ")
            rules.setdefault(name, {})[kind] = value
    completers: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        if key.startswith("completers "):
            kind, _, what = key[len("completers ") :].rpartition(" ")
            completers.setdefault(kind, {"compared": 0, "disagree": 0})[what] = value
    return {
        "completers": completers,
        "solutions": counts.get("solutions", 0),
        "steps": counts.get("steps", 0),
        "by_type": group("type"),
        "by_position": {p: positions[p] for p in order},
        "by_rule": rules,
    }


def _rate(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "-"


def noise_report(counts: Mapping[str, int]) -> str:
    """The report as markdown tables."""
    tables = noise_tables(counts)
    lines = [f"Noise report: {tables['solutions']} solutions, {tables['steps']} steps.", ""]
    for title, table in (("step type", tables["by_type"]), ("step position", tables["by_position"])):
        if not table:
            continue
        lines += [
            f"| {title} | compared | disagree | rate | MC bad, judge good | MC good, judge bad | MC right "
            "| judge right |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in table.items():
            lines.append(
                f"| {name} | {row['compared']} | {row['disagree']} | {_rate(row['disagree'], row['compared'])} | "
                f"{row['mc_bad_judge_good']} | {row['mc_good_judge_bad']} | {row['disagree_mc_right']} | "
                f"{row['disagree_judge_right']} |"
            )
        lines.append("")
    if tables["completers"]:
        lines += ["| step type | weak and strong completer compared | disagree | rate |", "|---|---|---|---|"]
        for kind, row in tables["completers"].items():
            lines.append(
                f"| {kind} | {row['compared']} | {row['disagree']} | {_rate(row['disagree'], row['compared'])} |"
            )
        lines.append("")
    if tables["by_rule"]:
        lines += ["| rule | solutions kept | dropped | steps kept | share of steps |", "|---|---|---|---|---|"]
        for name, row in tables["by_rule"].items():
            kept = row.get("kept_solutions", 0)
            lines.append(
                f"| {name} | {kept} | {tables['solutions'] - kept} | {row.get('kept_steps', 0)} | "
                f"{_rate(row.get('kept_steps', 0), tables['steps'])} |"
            )
    return "\n".join(lines) + "\n"


def save_noise_report(output_dir: str | Path, counts: Mapping[str, int]) -> str:
    """Write `noise_report.md` and `noise_report.json` into `output_dir` (atomically); return the markdown."""
    text = noise_report(counts)
    atomic_write_text(Path(output_dir) / "noise_report.md", text)
    atomic_write_text(Path(output_dir) / "noise_report.json", json.dumps(noise_tables(counts), indent=1))
    return text
