"""`trl-vlprm eval`: test-time-scaling evaluation, benchmarks x policies x scorers x outcome selections x N, from one
generation per question.

    trl-vlprm eval --config recipes/configs/eval_tts_testbed.yaml
    trl-vlprm eval --config recipes/configs/eval_tts_paper.yaml --output_dir outputs/eval_paper

Arguments: `trl_vlprm.eval.eval_tts.EvalTTSConfig`. Rerunning into the same `output_dir` resumes (finished
questions are not sampled again); see docs/evaluation.md.
"""

from __future__ import annotations

from typing import Any

from trl import TrlParser

from trl_vlprm.eval.eval_tts import EvalTTSConfig, run
from trl_vlprm.scripts import command_parser


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((EvalTTSConfig,), prog, __doc__)


def main(config: EvalTTSConfig) -> list[dict[str, Any]]:
    """Run the sweep, write its tables and plot to `config.output_dir`, print the table; returns its rows."""
    from trl_vlprm.eval.report import rows_to_markdown

    rows = run(config)
    if rows:  # rank 0 (the other processes of an `accelerate launch` return none)
        print(rows_to_markdown(rows))
        for line in below_random_lines(rows):
            print(line)
    return rows


def below_random_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`check`'s below-random warning per benchmark, policy and N, for every scorer the sweep compared with a
    random one (a scorer labelled "random", else the `first` pick: one random sample's accuracy)."""
    from trl_vlprm.eval.guardrails import sweep_below_random

    scorers = sorted({row["scorer"] for row in rows} - {"oracle", "random", "-"})
    has_random = any(row["scorer"] == "random" for row in rows)
    lines = []
    for selection in sorted({row["selection"] for row in rows if str(row["selection"]).startswith("best_of_n")}):
        baseline = []
        if not has_random:  # the `first` pick (one random sample's accuracy) plays the random scorer
            baseline = [
                {**row, "scorer": "random", "selection": selection} for row in rows if row["selection"] == "first"
            ]
        for scorer in scorers:
            lines += sweep_below_random([*rows, *baseline], scorer, "random", selection)
    return lines
