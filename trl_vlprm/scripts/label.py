"""`trl-vlprm label`: build a step-labelled VL-PRM dataset (rollouts, Monte-Carlo labels, a VLM judge, a rule).

    trl-vlprm label --config recipes/configs/label_testbed.yaml
    trl-vlprm label --config recipes/configs/label_testbed.yaml --rule consensus --output_dir out/c

Arguments: `trl_vlprm.labeling.LabelConfig` and the judge's `trl_vlprm.labeling.judge.JudgeConfig` (its `judge_*`
fields). Rerunning into the same `output_dir` resumes; see docs/labelling.md.
"""

from __future__ import annotations

import argparse

from trl import TrlParser

from trl_vlprm.data.schema import RecordError
from trl_vlprm.labeling.builder import JudgeFailureError, batch_cost_line, run, summary_line
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.labeler import BatchStats
from trl_vlprm.labeling.shards import ShardError
from trl_vlprm.utils.ranks import RankFailedError, Ranks
from trl_vlprm.utils.resume import OutputLockedError, SettingsMismatchError

# The finished shards stay on disk for the rerun that follows the fix.
EXPECTED_ERRORS = (
    JudgeFailureError, SettingsMismatchError, OutputLockedError, ShardError, RecordError, RankFailedError,
)  # fmt: skip


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    # The judge's settings are their own dataclass, parsed beside the labelling config (flags and YAML keys alike).
    dataclass_types = (LabelConfig, JudgeConfig)
    if subparsers is not None:
        return subparsers.add_parser("label", help="build step labels", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


def main(config: LabelConfig, judge_config: JudgeConfig | None = None) -> BatchStats:
    """Label the questions `config` names with the policy and judge it describes; prints and returns the stats."""
    stats = run(config, judge_config)
    if Ranks.from_environment().is_main:  # the summary of the whole folder, once
        print(summary_line(stats))
        if config.judge == "batch":
            print(batch_cost_line(stats, judge_config or JudgeConfig()))
    return stats
