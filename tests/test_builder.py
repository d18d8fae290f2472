"""The dataset builder: Parquet shards with images, provenance, resume after SIGKILL, judge failures end to end.

Run as a script (`python tests/test_builder.py OUTPUT_DIR SLEEP`), it builds a toy dataset: the subprocess the
kill test interrupts.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_mc import ToyPolicy, exact_grader, toy_questions

from trl_vlprm.labeling.builder import build_dataset, summary_line
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.shards import load_labelled
from trl_vlprm.testbed.judge_server import JudgeServer
from trl_vlprm.utils.resume import SettingsMismatchError

NUM_QUESTIONS, NUM_ROLLOUTS = 12, 2


def toy_config(output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        shard_size=2,
        rule="mc_only",
        judge="none",
        num_rollouts=NUM_ROLLOUTS,
        mc_mode="every_step",
        mc_num_completions=2,
        show_progress=False,
    )
    settings.update(overrides)
    return LabelConfig(**settings)


def expected_ids(num_questions=NUM_QUESTIONS):
    return {f"q{i}#{j}" for i in range(num_questions) for j in range(NUM_ROLLOUTS)}


def test_shards_hold_images_labels_and_provenance(tmp_path):
    stats = build_dataset(
        toy_questions(4), ToyPolicy(error_rate=0.2, seed=0), toy_config(tmp_path), grader=exact_grader
    )
    dataset = load_labelled(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shard-*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert set(dataset["id"]) == expected_ids(4) and len(dataset) == 8 == stats.records
    row = dataset[0]
    assert row["images"][0].size == (8, 6) and row["prompt"].startswith("<image>")
    assert len(row["completions"]) == len(row["labels"]) == len(row["step_types"]) == len(row["label_weights"]) == 6
    mc = json.loads(row["mc"])
    assert mc["labels"] == row["labels"] and len(mc["scores"]) == 6
    assert json.loads(row["judge"]) is None and row["rule"] == "mc_only"
    assert json.loads(row["costs"])["mc"]["calls"] == mc["num_estimates"] == 5
    # with no lucky answers a slipped prefix never succeeds: every step from the first slip on is labelled bad
    for labels, gold in zip(dataset["labels"], dataset["gold_step_correct"]):
        gold = json.loads(gold)
        first_slip = gold.index(False) if False in gold else len(gold)
        assert not any(labels[first_slip:])
    assert stats.mc_cost.calls == 8 * 5 and stats.rollout_cost.calls == 4
    assert "8 records from 8 solutions" in summary_line(stats)


def test_rerun_labels_only_missing_shards_and_refuses_other_settings(tmp_path):
    build_dataset(toy_questions(6), ToyPolicy(seed=1), toy_config(tmp_path), grader=exact_grader)
    (tmp_path / "shard-00001.parquet").unlink()
    policy = ToyPolicy(seed=2)
    stats = build_dataset(toy_questions(6), policy, toy_config(tmp_path), grader=exact_grader)
    assert policy.stats.calls == 2 + 2 * NUM_ROLLOUTS * 5  # only the two questions of the missing shard
    assert sorted(load_labelled(tmp_path)["id"]) == sorted(expected_ids(6))
    assert stats.records == 12  # totals include the shards written before
    with pytest.raises(ValueError, match="mc_num_completions"):
        build_dataset(toy_questions(6), policy, toy_config(tmp_path, mc_num_completions=3), grader=exact_grader)


def test_sigkill_mid_run_then_rerun_keeps_every_record_exactly_once(tmp_path):
    script = [sys.executable, __file__, str(tmp_path)]
    process = subprocess.Popen([*script, "0.02"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("shard-*.parquet"))) < 2:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the builder wrote no shards"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(tmp_path.glob("shard-*.parquet")))
    assert 2 <= done_before < NUM_QUESTIONS // 2  # killed mid-run
    finished = subprocess.run([*script, "0"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    ids = load_labelled(tmp_path)["id"]
    assert len(ids) == len(set(ids)) == NUM_QUESTIONS * NUM_ROLLOUTS
    assert set(ids) == expected_ids()
    assert not list(tmp_path.glob(".shard-*"))


def test_judge_failures_end_as_unknown_steps_and_the_run_completes(tmp_path):
    failures = {"q1": "500", "q2": "hang", "q3": "malformed"}
    config = toy_config(
        tmp_path,
        rule="vlprm",
        judge="server",
        mc_mode="binary_search",
        shard_size=3,
        judge_max_failed_share=0.7,  # tolerated here: 4 of the first shard's 6 solutions fail
    )
    with JudgeServer({}, failures=failures, hang_seconds=2.0) as server:
        judge = JudgeConfig(judge_timeout=0.3, judge_max_retries=1, judge_backoff=0.01)
        stats = build_dataset(
            toy_questions(6), ToyPolicy(seed=4), config, judge_server=server, grader=exact_grader, judge_config=judge
        )
    failed = 3 * NUM_ROLLOUTS
    assert stats.judge["failed_solutions"] == failed and stats.cases["judge_unknown"] == failed
    assert stats.judge["steps unknown"] == failed * 6
    assert (
        stats.judge["error http 500"] == stats.judge["error timeout"] == stats.judge["error parse"] == 2 * NUM_ROLLOUTS
    )
    dataset = load_labelled(tmp_path)
    assert {qid for qid in dataset["question_id"]} <= {"q0", "q4", "q5"}  # a first-step unknown leaves no label
    assert stats.dropped_solutions >= failed and stats.records == len(dataset)
    for row in dataset:
        verdicts = json.loads(row["judge"])["verdicts"]
        gold = json.loads(row["gold_step_correct"])
        assert verdicts == ["correct" if g else "incorrect" for g in gold]  # noiseless judge answers gold


def test_testbed_judge_labels_with_the_hybrid_rule(tmp_path):
    config = toy_config(
        tmp_path,
        rule="vlprm",
        judge="testbed",
        judge_flip_rate_perception=0.0,
        judge_flip_rate_reasoning=0.0,
        mc_mode="binary_search",
    )
    build_dataset(toy_questions(4), ToyPolicy(error_rate=0.2, seed=6), config, grader=exact_grader)
    for row in load_labelled(tmp_path):
        gold = json.loads(row["gold_step_correct"])
        assert row["labels"] == gold[: len(row["labels"])]  # a perfect judge makes the labels the gold
        assert row["rule_case"] in (
            "judge_incorrect_mc_agrees",
            "judge_incorrect_mc_disagrees",
            "judge_correct_mc_agrees",
        )


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="rule"):
        LabelConfig(rule="best")
    with pytest.raises(ValueError, match="needs a judge"):
        LabelConfig(rule="consensus", judge="none")
    with pytest.raises(ValueError, match="policy_model_path"):
        LabelConfig(policy="hf", judge="none", rule="mc_only")


def test_paper_preset_parses_with_the_papers_settings():
    from trl import TrlParser

    path = Path(__file__).parents[1] / "recipes" / "configs" / "label_paper.yaml"
    config, judge = TrlParser((LabelConfig, JudgeConfig)).parse_args_and_config(args=["--config", str(path)])
    assert (config.rule, config.judge_unknown, config.mc_mode) == ("vlprm", "drop", "every_step_until_zero")
    assert (judge.judge_prompt, judge.judge_max_tokens) == ("paper", 8192)  # the paper's prompt and budget
    assert (config.mc_num_completions, config.mc_threshold) == (16, 0.0)
    assert config.mc_config().mode == "every_step_until_zero"
    with pytest.raises(ValueError, match="judge_unknown"):
        LabelConfig(judge_unknown="ignore")


def test_judge_settings_are_one_dataclass_parsed_beside_the_label_config(tmp_path):
    """The recipes' judge_* keys fill `JudgeConfig`; `LabelConfig` no longer declares them. The judge *model* stays
    pinned for resume, how it is reached does not."""
    from trl import TrlParser

    path = Path(__file__).parents[1] / "recipes" / "configs" / "label_paper.yaml"
    argv = ["--config", str(path), "--judge_timeout", "7.5"]
    config, judge = TrlParser((LabelConfig, JudgeConfig)).parse_args_and_config(args=argv)
    assert (judge.judge_model, judge.judge_max_concurrency, judge.judge_backoff) == ("o4-mini", 16, 2.0)
    assert (judge.judge_timeout, judge.judge_max_retries, judge.judge_base_url) == (7.5, 4, "http://127.0.0.1:8000/v1")
    assert not any(name.startswith("judge_") and name in JudgeConfig.__dataclass_fields__ for name in vars(config))
    label = toy_config(tmp_path)
    build_dataset(toy_questions(2), ToyPolicy(seed=1), label, grader=exact_grader, judge_config=JudgeConfig())
    faster = JudgeConfig(judge_timeout=5.0, judge_max_retries=0, judge_base_url="http://elsewhere:1/v1")
    stats = build_dataset(toy_questions(2), ToyPolicy(seed=1), label, grader=exact_grader, judge_config=faster)
    assert stats.records > 0  # another transport: the finished shards are reused
    with pytest.raises(SettingsMismatchError, match="judge_model: 'judge' -> 'other'"):
        build_dataset(
            toy_questions(2),
            ToyPolicy(seed=1),
            label,
            grader=exact_grader,
            judge_config=JudgeConfig(judge_model="other"),
        )


@pytest.mark.parametrize("name", ["label_testbed.yaml", "label_server.yaml"])
def test_recipe_configs_parse_into_label_config(name):
    from trl import TrlParser

    path = Path(__file__).parents[1] / "recipes" / "configs" / name
    config, _ = TrlParser((LabelConfig, JudgeConfig)).parse_args_and_config(
        args=["--config", str(path), "--shard_size", "5"]
    )
    assert isinstance(config, LabelConfig) and config.shard_size == 5 and config.rule == "consensus"
    assert config.mc_mode == "binary_search" and config.judge in ("testbed", "server")


def test_main_labels_testbed_puzzles_from_the_yaml_config(tmp_path, capsys):
    from trl_vlprm.cli import run

    config = Path(__file__).parents[1] / "recipes" / "configs" / "label_testbed.yaml"
    argv = ["--config", str(config), "--num_questions", "6", "--shard_size", "4", "--output_dir", str(tmp_path)]
    run("label", [*argv, "--show_progress", "false"])
    records, solutions, dropped = map(
        int, re.search(r"(\d+) records from (\d+) solutions \((\d+) dropped", capsys.readouterr().out).groups()
    )
    dataset = load_labelled(tmp_path)
    assert solutions == 6 * 4 and records + dropped == solutions and records == len(dataset) > 0
    assert len(dataset["id"]) == len(set(dataset["id"]))
    for row in dataset:
        verdicts = json.loads(row["judge"])["verdicts"]
        mc_labels = json.loads(row["mc"])["labels"]
        for label, verdict, mc in zip(row["labels"], verdicts, mc_labels):  # consensus: both sources agree
            assert label == mc == (verdict == "correct")
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-00000.json",
        "shard-00000.parquet",
        "shard-00001.json",
        "shard-00001.parquet",
    ]


if __name__ == "__main__":
    output_dir, sleep = sys.argv[1], float(sys.argv[2])
    build_dataset(
        toy_questions(NUM_QUESTIONS), ToyPolicy(seed=0, sleep=sleep), toy_config(output_dir), grader=exact_grader
    )


def test_paper_label_recipe_runs_with_cpu_overrides(tmp_path, capsys):
    """label_paper.yaml as written, with the testbed's scripted policy and judge in place of the GPU ones."""
    from trl_vlprm.cli import run

    config = Path(__file__).parents[1] / "recipes" / "configs" / "label_paper.yaml"
    argv = ["--config", str(config), "--dataset", "puzzles", "--num_questions", "6", "--policy", "scripted"]
    argv += ["--judge", "testbed", "--mc_num_completions", "4", "--output_dir", str(tmp_path)]
    run("label", [*argv, "--show_progress", "false"])
    dataset = load_labelled(tmp_path)
    assert len(dataset) > 0 and set(dataset["rule"]) == {"vlprm"}
    for row in dataset:
        mc = json.loads(row["mc"])
        # every_step_until_zero: prefixes scored in order, none after the first zero.
        measured = [s for s in mc["scores"] if s is not None]
        assert mc["scores"][: len(measured)] == measured and 0.0 not in measured[:-1]
        verdicts = json.loads(row["judge"])["verdicts"]
        assert "unknown" not in verdicts
        # the paper's prompt: the judge stops at the first error, every later step is incorrect
        first = verdicts.index("incorrect") if "incorrect" in verdicts else len(verdicts)
        assert verdicts[first:] == ["incorrect"] * (len(verdicts) - first)


def test_a_scripted_policy_labels_a_puzzles_file_and_refuses_other_data(tmp_path):
    """A `trl-vlprm puzzles` file carries the puzzles' hidden state, so the scripted policy labels it (it was refused
    before, whatever the file); a file without that state is refused naming its columns and the fix."""
    from trl_vlprm.data.loading import write_dataset
    from trl_vlprm.labeling.builder import _make_policy_and_questions
    from trl_vlprm.testbed import generate_puzzles
    from trl_vlprm.utils.errors import UsageError

    puzzles = generate_puzzles(3, seed=5, families="learnable", image_size=84)
    path = write_dataset(puzzles, tmp_path / "puzzles.parquet")
    policy, questions = _make_policy_and_questions(LabelConfig(dataset=str(path)))
    assert [q["id"] for q in questions] == puzzles["id"] and len(questions) == 3
    solution = policy.sample_solutions(questions[0], 1)[0]
    assert len(solution.steps) == 3 and len(solution.gold_correct) == 3
    plain = write_dataset(puzzles.remove_columns("metadata"), tmp_path / "questions.parquet")
    refused = r"LabelConfig.policy='scripted' solves only testbed puzzles, .*questions.parquet has columns \['id', "
    with pytest.raises(UsageError, match=refused + r".*trl-vlprm puzzles --out"):
        _make_policy_and_questions(LabelConfig(dataset=str(plain)))
