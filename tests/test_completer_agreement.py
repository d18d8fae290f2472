"""Athena-PRM's weak/strong completer agreement filter (`LabelConfig.strong_completer`)."""

from __future__ import annotations

import json

import pytest

from trl_vlprm.labeling.builder import build_dataset
from trl_vlprm.labeling.combine import Combined, combine, completer_agreement
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.labeler import step_label_quality
from trl_vlprm.labeling.shards import load_labelled
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

STRONG = "scripted:perception_error_rate=0.02,reasoning_error_rate=0.02"


def test_labels_end_where_the_completers_disagree():
    weak, strong = [True, True, False, False], [True, False, False, False]
    cut = completer_agreement(combine("mc_only", 4, weak), weak, strong)
    assert cut == Combined([True, None, None, None], [1.0, 0.0, 0.0, 0.0], "mc+completers_disagree")
    agree = completer_agreement(combine("mc_only", 4, weak), weak, list(weak))
    assert agree.labels == weak and agree.case == "mc"
    # a rule that already cut before the disagreement is left as it is
    judged = combine("judge_only", 4, None, ["correct", "unknown", "correct", "correct"])
    assert completer_agreement(judged, [True, True, True, False], [True, True, True, True]) == judged
    with pytest.raises(ValueError, match="one weak and one strong label per step"):
        completer_agreement(combine("mc_only", 2, [True, True]), [True, True], [True])
    with pytest.raises(ValueError, match="reads none"):
        LabelConfig(rule="judge_only", strong_completer=STRONG)


def test_agreement_with_a_strong_completer_makes_mc_labels_more_accurate(tmp_path):
    """A noisy policy (30 % error rates, K = 2) labels 40 testbed puzzles with and without a strong completer (2 %):
    the same rollouts, each record of the filtered run a prefix of the unfiltered one, and more accurate labels
    against gold for fewer of them."""
    quality, records = {}, {}
    for name, strong in (("plain", None), ("agree", STRONG)):
        config = LabelConfig(dataset="puzzles", num_questions=40, num_rollouts=4, rule="mc_only", judge="none",
                             mc_mode="every_step", mc_num_completions=2, perception_error_rate=0.3,
                             reasoning_error_rate=0.3, strong_completer=strong, output_dir=str(tmp_path / name),
                             show_progress=False, seed=4)  # fmt: skip
        stats = build_dataset(generate_puzzles(40, seed=4), ScriptedPolicy(0.3, 0.3, seed=4), config)
        rows = load_labelled(tmp_path / name)
        records[name] = {row["id"]: row for row in rows}
        quality[name] = step_label_quality([(r["labels"], json.loads(r["gold_step_correct"])) for r in rows])
    cut = stats.cases["mc+completers_disagree"]
    assert cut > 0 and stats.noise["completers perception disagree"] + stats.noise["completers reasoning disagree"] > 0
    for row_id, row in records["agree"].items():
        plain = records["plain"][row_id]
        assert plain["completions"][: len(row["completions"])] == row["completions"]
        assert plain["labels"][: len(row["labels"])] == row["labels"]
    assert quality["agree"].labelled < quality["plain"].labelled
    assert quality["agree"].accuracy > quality["plain"].accuracy + 0.01  # measured: 0.977 vs 0.956
