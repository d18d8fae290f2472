"""The batch judge (OpenAI Files + Batches through the official client) against a real loopback server.

The server (`trl_vlprm.testbed.batch_server.BatchServer`) implements the endpoints and plays out scripted batches:
in progress for a few polls, completed, failed, expired part-way, completed with error lines. Its answers come from
the testbed judge's gold, so every verdict is checked against the truth.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from trl_vlprm.data.schema import solution_id
from trl_vlprm.labeling.batch_judge import BatchJudge, batch_cost, split_lines
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.judge_prompts import CORRECT, INCORRECT, UNKNOWN
from trl_vlprm.testbed.batch_server import BatchPlan, BatchServer, judge_responder
from trl_vlprm.testbed.judge_server import JudgeServer

TYPES = ["perception", "reasoning", "reasoning"]


def make_solutions(num_questions=3, per_question=2):
    """(items, custom_ids, gold) for solutions whose gold alternates good and flawed steps."""
    items, ids, gold = [], [], []
    for q in range(num_questions):
        question = {"id": f"q{q}", "prompt": "<image>How many?", "images": [Image.new("RGB", (4, 4))], "answer": "2"}
        for j in range(per_question):
            steps = [f"q{q} r{j} step {i}" for i in range(3)]
            truth = [True, (q + j) % 2 == 0, True]
            items.append((question, steps, TYPES, "2"))
            ids.append(solution_id(f"q{q}", j))
            gold.append(truth)
    return items, ids, gold


def judge_server_for(items, ids, gold):
    server = JudgeServer({})
    for (_, steps, _, _), cid, truth in zip(items, ids, gold):
        server.add_solution(cid.split("#")[0], steps, truth)
    return server


def config_for(server, **overrides):
    settings = dict(judge_base_url=server.base_url, judge_batch_poll_seconds=0.0, judge_max_retries=0)
    settings.update(overrides)
    return JudgeConfig(**settings)


def expected(truth, prompt="json"):
    if prompt == "json":
        return [CORRECT if t else INCORRECT for t in truth]
    first = truth.index(False) if False in truth else len(truth)
    return [CORRECT] * first + [INCORRECT] * (len(truth) - first)


class Interrupt(Exception):
    """Stands for the user's Ctrl-C while the judge waits on a batch."""


def interrupt(seconds):
    raise Interrupt


def test_submitted_interrupted_resumed_without_resubmitting(tmp_path):
    items, ids, gold = make_solutions()
    with BatchServer(judge_responder(judge_server_for(items, ids, gold)), [BatchPlan(polls=3)]) as server:
        config = config_for(server)
        with pytest.raises(Interrupt):
            BatchJudge(config, tmp_path, show_progress=False, sleep=interrupt).judge_many(items, ids, "shard-a")
        state = json.loads((tmp_path / "shard-a.state.json").read_text())
        (submission,) = state["submissions"]
        assert submission["file_id"] and submission["batch_id"] and submission["status"] == "in_progress"
        assert (server.counts["files_uploaded"], server.counts["batches_created"]) == (1, 1)

        judge = BatchJudge(config, tmp_path, show_progress=False, sleep=lambda s: None)  # the rerun
        results = judge.judge_many(items, ids, "shard-a")
        assert [r.verdicts for r in results] == [expected(t) for t in gold]
        assert (server.counts["files_uploaded"], server.counts["batches_created"]) == (1, 1)  # polled, not resent
        assert server.counts["requests_answered"] == len(items) and server.counts["retrievals"] == 4
        assert all(r.attempts == 1 and r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        assert batch_cost(config, prompt, completion) == pytest.approx((prompt * 0.55 + completion * 2.20) / 1e6)

        retrievals = server.counts["retrievals"]
        again = BatchJudge(config, tmp_path, show_progress=False).judge_many(items, ids, "shard-a")
        assert [r.verdicts for r in again] == [r.verdicts for r in results]
        assert server.counts["retrievals"] == retrievals  # a finished call reads its downloads, asks nothing
        other = [(q, steps[:2], types[:2], a) for q, steps, types, a in items]
        with pytest.raises(ValueError, match="recorded for other requests"):
            BatchJudge(config, tmp_path, show_progress=False).judge_many(other, ids, "shard-a")


def test_failed_and_expired_batches_and_error_lines_are_resubmitted(tmp_path):
    items, ids, gold = make_solutions(num_questions=3, per_question=2)  # 6 requests
    plans = [
        BatchPlan(outcome="failed"),  # round 0: nothing comes back, all 6 again
        BatchPlan(outcome="expired", answered=2),  # round 1: 2 answered, 4 again
        BatchPlan(error_lines=1),  # round 2: 3 answered, 1 error line (HTTP 500), 1 again
    ]
    with BatchServer(judge_responder(judge_server_for(items, ids, gold)), plans) as server:
        judge = BatchJudge(config_for(server), tmp_path, show_progress=False, sleep=lambda s: None)
        results = judge.judge_many(items, ids, "shard-b")
    assert [r.verdicts for r in results] == [expected(t) for t in gold]
    assert server.counts["batches_created"] == 4 and judge.counts["rounds"] == 4
    assert judge.counts["resubmitted_requests"] == 6 + 4 + 1
    assert sorted(r.attempts for r in results) == [2, 2, 3, 3, 3, 4]
    assert judge.counts["batches failed"] == 1 and judge.counts["batches expired"] == 1


def test_a_request_still_failing_after_the_last_resubmission_is_reported_by_id(tmp_path):
    items, ids, gold = make_solutions(num_questions=2, per_question=1)
    plans = [BatchPlan(error_lines=1), BatchPlan(error_lines=1)]
    with BatchServer(judge_responder(judge_server_for(items, ids, gold)), plans) as server:
        config = config_for(server, judge_batch_max_resubmits=1)
        judge = BatchJudge(config, tmp_path, show_progress=False, sleep=lambda s: None)
        results = judge.judge_many(items, ids, "shard-c")
    assert results[0].verdicts == [UNKNOWN] * 3 and results[0].attempts == 2
    assert results[0].errors == [
        'http 500: {"error": {"message": "The server had an error processing your request."}}'
    ]
    assert results[1].verdicts == expected(gold[1]) and judge.counts["failed_solutions"] == 1


def test_requests_are_split_by_the_apis_limits_and_the_azure_client_works(tmp_path):
    items, ids, gold = make_solutions(num_questions=5, per_question=1)
    with BatchServer(judge_responder(judge_server_for(items, ids, gold))) as server:
        config = config_for(server, judge_batch_max_requests=2, judge_prompt="paper")
        judge = BatchJudge(config, tmp_path / "openai", show_progress=False, sleep=lambda s: None)
        results = judge.judge_many(items, ids, "split")
        assert [r.verdicts for r in results] == [expected(t, "paper") for t in gold]
        assert server.counts["batches_created"] == 3  # 5 requests, 2 a file
        lines = (tmp_path / "openai" / "split.r0.p0.input.jsonl").read_text().splitlines()
        assert [json.loads(line)["url"] for line in lines] == ["/v1/chat/completions"] * 2

        azure = config_for(server, judge_azure_endpoint=server.root_url, judge_prompt="paper")
        judge = BatchJudge(azure, tmp_path / "azure", show_progress=False, sleep=lambda s: None)
        assert [r.verdicts for r in judge.judge_many(items, ids, "azure")] == [expected(t, "paper") for t in gold]
        line = json.loads((tmp_path / "azure" / "azure.r0.p0.input.jsonl").read_text().splitlines()[0])
        assert line["url"] == "/chat/completions" and server.counts["batches_created"] == 4

    sizes = [("a", "x" * 10), ("b", "y" * 10), ("c", "z" * 30)]
    assert [[cid for cid, _ in part] for part in split_lines(sizes, 5, 35)] == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="request 'c' is 31 bytes"):
        split_lines(sizes, 5, 30)


@pytest.mark.slow
def test_a_batch_judged_labelling_run_killed_while_waiting_then_resumed(tmp_path):
    """`trl-vlprm label --judge batch` in a subprocess, SIGKILLed while its batch is in progress; the rerun polls the
    batch it had submitted (nothing uploaded or created again), retries the requests of the error file, and writes
    the shards: every verdict is the testbed's gold (the judge server adds no noise)."""
    import subprocess
    import sys
    import time

    from trl_vlprm.labeling.batch_judge import BATCH_DIR
    from trl_vlprm.labeling.builder import build_dataset
    from trl_vlprm.labeling.config import LabelConfig
    from trl_vlprm.labeling.shards import load_labelled
    from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

    judge_server = JudgeServer({})
    plans = [BatchPlan(polls=None, error_lines=2)]  # in progress until released, then 2 requests fail
    with BatchServer(judge_responder(judge_server), plans) as server:
        argv = ["--dataset", "puzzles", "--num_questions", "3", "--num_rollouts", "2", "--policy", "scripted",
                "--rule", "consensus", "--mc_num_completions", "2", "--shard_size", "8", "--judge", "batch",
                "--judge_base_url", server.base_url, "--judge_batch_poll_seconds", "0.05", "--seed", "3",
                "--output_dir", str(tmp_path), "--show_progress", "false"]  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "trl_vlprm", "label", *argv])
        try:
            deadline = time.monotonic() + 120
            while server.counts["retrievals"] < 3 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert process.poll() is None, "the labeller should still be waiting on its batch"
        finally:
            process.kill()
            process.wait()
        (state_file,) = (tmp_path / BATCH_DIR).glob("*.state.json")
        state = json.loads(state_file.read_text())
        assert [s["status"] for s in state["submissions"]] == ["in_progress"]
        assert not list(tmp_path.glob("shard-*.parquet"))
        server.release()

        config = LabelConfig(dataset="puzzles", num_questions=3, num_rollouts=2, rule="consensus",
                             mc_num_completions=2, shard_size=8, judge="batch", seed=3, output_dir=str(tmp_path),
                             show_progress=False)  # fmt: skip
        judge_config = JudgeConfig(judge_base_url=server.base_url, judge_batch_poll_seconds=0.0)
        policy = ScriptedPolicy(config.perception_error_rate, config.reasoning_error_rate, seed=config.seed)
        stats = build_dataset(generate_puzzles(3, seed=3), policy, config, judge_server, judge_config=judge_config)
    assert (server.counts["files_uploaded"], server.counts["batches_created"]) == (2, 2)  # the first, one retry
    assert stats.solutions == 6 and stats.judge["requests"] == 6 + 2 and stats.judge["failed_solutions"] == 0
    assert stats.judge["prompt_tokens"] > 0 and stats.records > 0
    for row in load_labelled(tmp_path):
        verdicts, gold = json.loads(row["judge"])["verdicts"], json.loads(row["gold_step_correct"])
        assert verdicts == expected(gold)
