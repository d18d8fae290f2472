"""`accelerate launch --num_processes 2` of the labelling, TTS and evaluation recipes on a CPU (gloo).

Every launch must really run 2 ranks (on a CPU a launch can silently start one process: see test_launch.py): each
rank logs its share ("[rank r/2] ..."), and both shares must be non-empty. The union of the ranks' work must equal
a single-process run's set of question ids, each exactly once. A rank SIGKILLed after its first shard (or question)
leaves its share undone; the rerun, with 1 or 2 processes, does exactly the missing work and duplicates nothing.

The kill is real: a wrapper (`DIE`) makes rank 1's scripted policy SIGKILL its own process when it is asked about
one question more than it may finish, i.e. right after its first shard or result line was written. The launcher
then tears rank 0 down too (or rank 0 reaches the barrier first and stops, naming rank 1).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from test_launch import free_port, launch_env

from trl_vlprm.cli import run as cli_run
from trl_vlprm.labeling.shards import load_labelled, shard_files
from trl_vlprm.testbed import generate_puzzles
from trl_vlprm.utils.ranks import part_files
from trl_vlprm.utils.resume import read_results

REPO = Path(__file__).resolve().parents[1]
LABEL_CONFIG, TTS_CONFIG = REPO / "recipes/configs/label_testbed.yaml", REPO / "recipes/configs/tts_testbed.yaml"
LABEL_ARGS = ["--config", str(LABEL_CONFIG), "--shard_size", "2", "--show_progress", "false"]
TTS_ARGS = ["--config", str(TTS_CONFIG), "--strategy", "best_of_n", "--n", "4"]
EVAL_CONFIG = (
    "benchmarks: ['testbed:0,limit=12']\npolicies: ['scripted@scripted']\nscorers: [oracle]\n"
    "selections: [first, majority, 'best_of_n:min', 'pass@n']\nn_values: [1, 4]\nnum_subsamples: 2\n"
)

# Rank 1 SIGKILLs itself when its policy meets question number FINISH + 1, its first FINISH questions written.
DIE = textwrap.dedent(
    """
    import os, runpy, signal, sys
    from trl_vlprm.testbed import ScriptedPolicy

    finish, script = int(sys.argv[1]), sys.argv[2]
    if os.environ.get("RANK") == "1":
        seen, sample = [], ScriptedPolicy._sample

        def sample_or_die(self, question, prefix, n, max_steps):
            if question["id"] not in seen:
                seen.append(question["id"])
            if len(seen) > finish:
                os.kill(os.getpid(), signal.SIGKILL)
            return sample(self, question, prefix, n, max_steps)

        ScriptedPolicy._sample = sample_or_die
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")
    """
)


def launch(script: str, args: list[str], die_after: int | None = None) -> tuple[int, str]:
    """Run a recipe under `accelerate launch` (MULTI_GPU over gloo, as on a CPU it must be); exit code and output."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
    ]  # fmt: skip
    if die_after is not None:
        command += ["--no_python", sys.executable, "-c", DIE, str(die_after)]
    command += [str(REPO / "recipes" / script), *args]
    result = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def rank_1_was_killed(output: str) -> bool:
    """The launcher's failure report names rank 1 as SIGKILLed (exit code -9)."""
    return re.search(r"rank\s*: 1 \(local_rank: 1\)\s*\n\s*exitcode\s*: -9", output) is not None


def shares(output: str, pattern: str) -> dict[int, int]:
    """{rank: size of its share} from the ranks' log lines; both ranks of a 2-process launch must appear."""
    found = {int(rank): int(n) for rank, n in re.findall(rf"\[rank (\d)/2\] {pattern}", output)}
    assert sorted(found) == [0, 1], f"not 2 ranks: {found}\n{output[-3000:]}"
    return found


def covered(output_dir: Path) -> Counter:
    """How many finished shards cover each question id (a shard is finished when its Parquet file exists)."""
    ids = Counter()
    for shard in shard_files(output_dir):
        ids.update(json.loads(shard.with_suffix(".json").read_text())["question_ids"])
    return ids


@pytest.mark.slow
def test_two_ranks_label_the_same_questions_as_one_process(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert cli_run("label", [*LABEL_ARGS, "--num_questions", "10", "--output_dir", str(single)]) == 0
    code, output = launch("build_dataset.py", [*LABEL_ARGS, "--num_questions", "10", "--output_dir", str(double)])
    assert code == 0, output[-4000:]
    # 5 shards of 2: rank 0 takes shards 0, 2, 4 and rank 1 shards 1, 3.
    assert shares(output, r"labelling (\d+) questions") == {0: 6, 1: 4}
    assert covered(double) == covered(single) and set(covered(single).values()) == {1} and len(covered(single)) == 10
    assert [p.name for p in shard_files(double)] == [f"shard-{i:05d}.parquet" for i in range(5)]
    # Rank 0 alone reports, after both ranks finished: the whole folder's records.
    summaries = re.findall(r"(\d+) records from (\d+) solutions", output)
    assert len(summaries) == 1 and int(summaries[0][0]) == len(load_labelled(double)) > 0


@pytest.mark.slow
def test_two_ranks_label_with_the_transformers_policy(tmp_path, tiny_qwen2_vl_path):
    args = [
        "--config", str(REPO / "recipes/configs/label_testbed.yaml"), "--policy", "hf",
        "--policy_model_path", str(tiny_qwen2_vl_path), "--rule", "mc_only", "--judge", "none", "--num_rollouts", "2",
        "--mc_num_completions", "2", "--max_new_tokens", "8", "--step_separator", " ", "--shard_size", "1",
        "--num_questions", "4", "--show_progress", "false", "--output_dir", str(tmp_path),
    ]  # fmt: skip
    code, output = launch("build_dataset.py", args)
    assert code == 0, output[-4000:]
    assert shares(output, r"labelling (\d+) questions") == {0: 2, 1: 2}
    assert covered(tmp_path) == Counter(str(q["id"]) for q in generate_puzzles(4, seed=0))  # each once
    assert output.count("records from") == 1


@pytest.mark.slow
def test_a_killed_rank_leaves_its_shards_and_the_rerun_labels_exactly_those(tmp_path):
    args = [*LABEL_ARGS, "--num_questions", "12", "--output_dir", str(tmp_path)]
    code, output = launch("build_dataset.py", args, die_after=2)
    assert code != 0 and rank_1_was_killed(output), output[-4000:]
    shares(output, r"labelling (\d+) questions")
    before = covered(tmp_path)
    assert set(before.values()) == {1}
    indices = [int(p.name[6:11]) for p in shard_files(tmp_path)]
    assert 1 in indices and 3 not in indices and 5 not in indices  # rank 1 wrote its first shard, then died
    assert not list(tmp_path.glob("shard-00003.*")) and not list(tmp_path.glob("shard-00005.*"))

    assert cli_run("label", args) == 0  # the rerun, one process
    after = covered(tmp_path)
    assert set(after.values()) == {1} and len(after) == 12  # every question once
    new_shards = [p for p in shard_files(tmp_path) if int(p.name[6:11]) not in indices]
    relabelled = Counter(q for p in new_shards for q in json.loads(p.with_suffix(".json").read_text())["question_ids"])
    assert set(relabelled) == set(after) - set(before) and len(relabelled) >= 4  # exactly the missing questions
    assert not list(tmp_path.glob(".shard-*.tmp"))


@pytest.mark.slow
def test_tts_ranks_answer_each_question_once_and_a_rerun_finishes_a_killed_run(tmp_path):
    single, double = tmp_path / "single.jsonl", tmp_path / "double.jsonl"
    tts = [
        sys.executable,
        str(REPO / "recipes/tts.py"),
        *TTS_ARGS,
        "--num_questions",
        "8",
        "--output_file",
        str(single),
    ]
    subprocess.run(tts, cwd=REPO, env=launch_env(), check=True, capture_output=True, timeout=600)

    args = [*TTS_ARGS, "--num_questions", "8", "--output_file", str(double)]
    code, output = launch("tts.py", args, die_after=1)
    assert code != 0 and rank_1_was_killed(output), output[-4000:]
    assert shares(output, r"tts best_of_n: (\d+) of the 8 questions left") == {0: 4, 1: 4}
    written = [r["id"] for f in (double, *part_files(double)) for r in read_results(f, repair=False)]
    assert len(written) == len(set(written)) and 1 <= len(written) < 8
    assert len(read_results(part_files(double)[0], repair=False)) == 1  # rank 1 finished 1 question, then died

    code, output = launch("tts.py", args)  # the rerun, 2 processes again: merges rank 1's part, shares the rest
    assert code == 0, output[-4000:]
    left = shares(output, rf"tts best_of_n: (\d+) of the {8 - len(written)} questions left")
    assert sum(left.values()) == 8 - len(written)
    final = [r["id"] for r in read_results(double)]
    assert Counter(final) == Counter(r["id"] for r in read_results(single)) and len(set(final)) == 8
    assert part_files(double) == [] and re.search(r"accuracy [\d.]+ \(\d+/8\)", output)


@pytest.mark.slow
def test_two_ranks_evaluate_each_question_once(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(EVAL_CONFIG)
    code, output = launch("eval_tts.py", ["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert code == 0, output[-4000:]
    assert shares(output, r"testbed / scripted: (\d+) of the 12 questions left") == {0: 6, 1: 6}
    samples = tmp_path / "out" / "samples" / "testbed__scripted.jsonl"
    ids = [r["id"] for r in read_results(samples)]
    assert len(ids) == 12 and len(set(ids)) == 12 and part_files(samples) == []
    assert all(len(r["samples"]) == 4 for r in read_results(samples))
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 * 2 and all(row.endswith(",12") for row in rows)  # 4 strategies x 2 N, on all 12 questions
    assert output.count("| testbed | scripted |") == 4  # the table, printed once (by rank 0)


@pytest.mark.slow
def test_an_evaluation_killed_mid_run_keeps_every_sample_and_a_one_process_rerun_finishes_it(tmp_path):
    config, out = tmp_path / "eval.yaml", tmp_path / "out"
    config.write_text(EVAL_CONFIG)
    code, output = launch("eval_tts.py", ["--config", str(config), "--output_dir", str(out)], die_after=1)
    assert code != 0 and rank_1_was_killed(output), output[-4000:]
    samples = out / "samples" / "testbed__scripted.jsonl"
    parts = part_files(samples)
    assert len(parts) == 1 and len(read_results(parts[0], repair=False)) == 1  # rank 1: one question, then killed
    before = {r["id"]: json.dumps(r) for f in (samples, *parts) for r in read_results(f, repair=False)}
    assert 1 < len(before) < 12

    assert cli_run("eval", ["--config", str(config), "--output_dir", str(out)]) == 0  # the rerun, one process
    after = {}
    for record in read_results(samples):
        assert record["id"] not in after, f"{record['id']} sampled twice"
        after[record["id"]] = json.dumps(record)
    assert len(after) == 12 and part_files(samples) == []
    assert all(after[qid] == line for qid, line in before.items())  # finished samples kept as they were
    assert (out / "results.csv").exists()
