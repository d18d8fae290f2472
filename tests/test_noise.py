"""The noise report: MC vs judge disagreement by step type and position, and what each rule keeps."""

from __future__ import annotations

import json
from collections import Counter

from trl_vlprm.labeling.builder import build_dataset
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.noise import count_noise, noise_tables
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

P, R = "perception", "reasoning"
SETTINGS = {"disagreement": "drop", "disagreement_weight": 0.5, "unknown": "keep_prefix"}


def test_counts_of_one_solution_by_hand():
    counts = Counter()
    mc = [True, True, False, False]
    verdicts = ["incorrect", "correct", "correct", "unknown"]
    gold = [True, True, True, False]
    count_noise(counts, [P, R, R, R], mc, verdicts, gold, SETTINGS)
    tables = noise_tables(counts)
    assert tables["by_type"][P] == {"compared": 1, "disagree": 1, "mc_bad_judge_good": 0, "mc_good_judge_bad": 1,
                                    "disagree_mc_right": 1, "disagree_judge_right": 0}  # fmt: skip
    # the unknown verdict of step 4 is not compared
    assert tables["by_type"][R]["compared"] == 2 and tables["by_type"][R]["disagree"] == 1
    assert tables["by_type"][R]["mc_bad_judge_good"] == 1 and tables["by_type"][R]["disagree_judge_right"] == 1
    assert list(tables["by_position"]) == ["1", "2", "3"]
    rules = tables["by_rule"]
    assert rules["mc_only"] == {"kept_solutions": 1, "kept_steps": 4}
    assert rules["consensus"] == {"kept_solutions": 0, "kept_steps": 0}  # disagree on the first step
    assert rules["judge_only"] == {"kept_solutions": 1, "kept_steps": 3}  # ends at the unknown verdict
    assert rules["vlprm"]["kept_steps"] == 1  # the judge's first error is step 1
    only_mc = Counter()
    count_noise(only_mc, [P, R], [True, False], None, None, SETTINGS)
    assert set(noise_tables(only_mc)["by_rule"]) == {"mc_only"} and not noise_tables(only_mc)["by_type"]


def test_the_report_of_a_run_agrees_with_its_shards_and_covers_a_resumed_folder(tmp_path):
    config = LabelConfig(dataset="puzzles", num_questions=6, num_rollouts=3, rule="consensus", mc_mode="every_step",
                         mc_num_completions=3, shard_size=3, output_dir=str(tmp_path), show_progress=False,
                         seed=2)  # fmt: skip
    policy = ScriptedPolicy(config.perception_error_rate, config.reasoning_error_rate, seed=2)
    build_dataset(generate_puzzles(3, seed=2), policy, config)
    stats = build_dataset(generate_puzzles(6, seed=2), policy, config)  # the second shard: a resumed folder
    report = json.loads((tmp_path / "noise_report.json").read_text())
    assert report["solutions"] == stats.solutions == 18 and report["steps"] == stats.steps_total
    own = report["by_rule"]["consensus"]
    assert (own["kept_solutions"], own["kept_steps"]) == (stats.records, stats.steps_labelled)
    compared = sum(row["compared"] for row in report["by_type"].values())
    assert compared == stats.judge["steps correct"] + stats.judge["steps incorrect"] > 0
    disagree = sum(row["disagree"] for row in report["by_type"].values())
    assert disagree == sum(row["disagree"] for row in report["by_position"].values()) > 0
    assert disagree == sum(
        row["disagree_mc_right"] + row["disagree_judge_right"] for row in report["by_type"].values()
    )
    assert "| step type |" in (tmp_path / "noise_report.md").read_text()
