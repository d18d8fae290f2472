"""`trl-vlprm label`: build a step-labelled VL-PRM dataset (rollouts, Monte-Carlo labels, a VLM judge, a rule).

    trl-vlprm label --config recipes/configs/label_testbed.yaml
    trl-vlprm label --config recipes/configs/label_testbed.yaml --rule consensus --output_dir out/c

Arguments: `trl_vlprm.labeling.LabelConfig` and the judge's `trl_vlprm.labeling.judge.JudgeConfig` (its `judge_*`
fields). Rerunning into the same `output_dir` resumes; see docs/labelling.md.
"""

from __future__ import annotations

from trl import TrlParser

from trl_vlprm.labeling.builder import batch_cost_line, run, summary_line
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.labeler import BatchStats
from trl_vlprm.labeling.noise import noise_report
from trl_vlprm.scripts import command_parser
from trl_vlprm.utils.ranks import Ranks


def make_parser(prog: str | None = None) -> TrlParser:
    # The judge's settings are their own dataclass, parsed beside the labelling config (flags and YAML keys alike).
    return command_parser((LabelConfig, JudgeConfig), prog, __doc__)


def main(config: LabelConfig, judge_config: JudgeConfig | None = None) -> BatchStats:
    """Label the questions `config` names with the policy and judge it describes; prints and returns the stats."""
    stats = run(config, judge_config)
    if Ranks.from_environment().is_main:  # the summary of the whole folder, once
        print(summary_line(stats))
        print(noise_report(stats.noise), end="")  # also saved as noise_report.md beside the shards
        if config.judge == "batch":
            print(batch_cost_line(stats, judge_config or JudgeConfig()))
    return stats
