"""recipes/tts.py resumes only into a file made with the very same settings, questions, and one process at a time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_vlprm.data.schema import RecordError
from trl_vlprm.guidance.strategies import SearchConfig
from trl_vlprm.guidance.tts import TTSArguments, run_tags, run_tts
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles
from trl_vlprm.utils.resume import SettingsMismatchError, output_lock

REPO = Path(__file__).parents[1]
RECIPE = REPO / "recipes" / "tts.py"


def recipe_args(out, *extra):
    return [str(RECIPE), "--config", str(REPO / "recipes/configs/tts_testbed.yaml"), "--num_questions", "4",
            "--n", "4", "--beam_width", "2", "--output_file", str(out), *extra]  # fmt: skip


def run_recipe(out, *extra, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *recipe_args(out, *extra)], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


CHANGES = {
    "perception_error_rate": 0.0,
    "reasoning_error_rate": 0.0,
    "system_prompt": "Think.",
    "top_p": 0.5,
    "max_new_tokens": 64,
    "max_step_tokens": 16,
    "seed": 1,
    "dataset_split": "train",
    "temperature": 0.1,
    "step_separator": "\n",
    "dataset": "other.parquet",
}


@pytest.mark.parametrize("field, value", sorted(CHANGES.items()))
def test_every_argument_that_changes_results_is_pinned(field, value):
    base = TTSArguments()
    assert run_tags(dataclasses.replace(base, **{field: value})) != run_tags(base)
    # and those that cannot change a result are not, so growing a run or rebatching resumes
    for harmless in ({"num_questions": 100}, {"output_file": "x.jsonl"}, {"prm_batch_size": 3}):
        assert run_tags(dataclasses.replace(base, **harmless)) == run_tags(base)


def test_a_model_retrained_into_the_same_folder_is_another_model(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    args = TTSArguments(policy="hf", policy_model_path=str(tmp_path), scorer="none")
    before = run_tags(args)
    assert run_tags(args) == before
    (tmp_path / "model.safetensors").write_bytes(b"weights v2, retrained")
    assert run_tags(args)["policy_model_fingerprint"] != before["policy_model_fingerprint"]


def test_rerun_with_other_policy_error_rates_is_refused_not_mixed(tmp_path):
    out = tmp_path / "r.jsonl"
    first = run_recipe(out, "--perception_error_rate", "0.0", "--reasoning_error_rate", "0.0")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "accuracy 1.0000 (4/4)" in first.stdout
    again = run_recipe(out, "--num_questions", "8")  # the yaml's error rates 0.3/0.2
    assert again.returncode == 1
    assert "perception_error_rate: 0.0 -> 0.3" in again.stderr and "reasoning_error_rate: 0.0 -> 0.2" in again.stderr
    assert len(out.read_text().splitlines()) == 4  # nothing appended


def test_second_process_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    with output_lock(out):  # this test is the first process, mid-run
        second = run_recipe(out)
    assert second.returncode == 1
    assert "is being written by another process" in second.stderr and f"pid {os.getpid()}" in second.stderr
    assert not out.exists()
    finished = run_recipe(out)  # the lock went with its holder
    assert finished.returncode == 0 and len(out.read_text().splitlines()) == 4


def test_num_questions_zero_is_an_error_not_64():
    with pytest.raises(ValueError, match="num_questions=0"):
        TTSArguments(num_questions=0)


def test_a_question_changed_since_it_was_answered_is_refused(tmp_path):
    puzzles = list(generate_puzzles(3, seed=0, image_size=112))
    out = tmp_path / "r.jsonl"
    policy = ScriptedPolicy(seed=0)
    run_tts(puzzles, "greedy", policy, None, SearchConfig(), out, show_progress=False)
    puzzles[1] = {**puzzles[1], "answer": "something else"}
    with pytest.raises(RecordError, match="content changed"):
        run_tts(puzzles, "greedy", policy, None, SearchConfig(), out, show_progress=False)
    with pytest.raises(SettingsMismatchError, match="n: 8 -> 3"):
        run_tts(puzzles[:1], "greedy", policy, None, SearchConfig(n=3), out, show_progress=False)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [p["id"] for p in puzzles]
