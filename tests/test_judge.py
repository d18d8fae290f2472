"""The judge client against a real chat-completions server on loopback (gold verdicts, noise, failures)."""

from __future__ import annotations

import base64
import email.utils
import io
import json
import time

import pytest
from PIL import Image

from trl_vlprm.data.steps_block import read_steps_block
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig
from trl_vlprm.labeling.judge_prompts import (
    CORRECT,
    INCORRECT,
    UNKNOWN,
    JudgeParseError,
    build_messages,
    parse_verdicts,
)
from trl_vlprm.testbed.judge_server import JudgeServer, gold_lookup, step_key
from trl_vlprm.utils.http import retry_after_seconds

TYPES = ["perception", "perception", "reasoning", "reasoning"]


def question(qid="q0"):
    return {
        "id": qid,
        "prompt": "<image>Which colour?",
        "images": [Image.new("RGB", (5, 3), (200, 10, 10))],
        "answer": "red",
        "options": ["red", "blue"],
    }


def solution(qid, pattern):
    steps = [f"{qid} step {i}" for i in range(len(pattern))]
    return steps, list(pattern)


def fast_config(server, **overrides):
    settings = dict(base_url=server.base_url, timeout=0.5, max_retries=1, backoff=0.01, max_concurrency=4)
    settings.update(overrides)
    return JudgeConfig(**{f"judge_{name}": value for name, value in settings.items()})


def test_parse_verdicts_accepts_only_the_strict_object():
    text = json.dumps(
        {
            "steps": [
                {"index": 1, "correct": True, "matches_image": False},
                {"index": 0, "correct": True, "matches_image": True},
                {"index": 2, "correct": False},
                {"index": 3, "correct": True},
            ]
        }
    )
    # a perception step that does not match the image is wrong even when "correct" is true
    assert parse_verdicts(text, TYPES) == [CORRECT, INCORRECT, INCORRECT, CORRECT]
    assert parse_verdicts(f"```json\n{text}\n```", TYPES) == [CORRECT, INCORRECT, INCORRECT, CORRECT]
    bad = {
        "not JSON": "Step 1 is correct.",
        "steps": json.dumps({"verdicts": []}),
        "no verdict for step": json.dumps({"steps": [{"index": 0, "correct": True}]}),
        "twice": json.dumps({"steps": [{"index": i % 3, "correct": True} for i in range(4)]}),
        "not a boolean": json.dumps({"steps": [{"index": i, "correct": "yes"} for i in range(4)]}),
        "not an integer": json.dumps({"steps": [{"index": i + 1, "correct": True} for i in range(4)]}),
    }
    for message, answer in bad.items():
        with pytest.raises(JudgeParseError, match=message):
            parse_verdicts(answer, TYPES)
    with pytest.raises(JudgeParseError):
        parse_verdicts("Sure! " + text, TYPES)


def test_messages_carry_the_image_inline_and_the_steps_readably():
    steps, _ = solution("q0", [True, False, True, True])
    messages = build_messages(question(), steps, TYPES)
    parts = messages[1]["content"]
    url = parts[0]["image_url"]["url"]
    assert parts[0]["type"] == "image_url" and url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (5, 3) and decoded.getpixel((0, 0))[:3] == (200, 10, 10)
    block = read_steps_block(messages)
    assert block["question_id"] == "q0"
    assert [s["text"] for s in block["steps"]] == steps and [s["type"] for s in block["steps"]] == TYPES
    assert "<image>" not in parts[1]["text"]


def test_client_reads_gold_verdicts_from_a_noiseless_server():
    gold, items = {}, []
    for k, pattern in enumerate([[True, True, False, False], [True, False, True, True], [True] * 4]):
        steps, truth = solution(f"q{k}", pattern)
        gold.update(gold_lookup(f"q{k}", steps, truth))
        items.append((question(f"q{k}"), steps, TYPES))
    with JudgeServer(gold) as server:
        client = JudgeClient(fast_config(server))
        results = client.judge_many(items)
    for result, pattern in zip(results, [[True, True, False, False], [True, False, True, True], [True] * 4]):
        assert result.verdicts == [CORRECT if g else INCORRECT for g in pattern]
        assert result.attempts == 1 and result.errors == []
        assert result.prompt_tokens > 0
    assert client.counts["requests"] == 3 and client.counts["failed_solutions"] == 0


def test_noise_flips_only_the_configured_step_type():
    steps, truth = solution("q0", [True, True, True, True])
    with JudgeServer(gold_lookup("q0", steps, truth), flip_rate_perception=1.0, flip_rate_reasoning=0.0) as server:
        result = JudgeClient(fast_config(server)).judge(question(), steps, TYPES)
    assert result.verdicts == [INCORRECT, INCORRECT, CORRECT, CORRECT]


def test_noise_rate_is_close_to_the_configured_one():
    gold, items = {}, []
    for k in range(60):
        steps, truth = solution(f"q{k}", [True] * 4)
        gold.update(gold_lookup(f"q{k}", steps, truth))
        items.append((question(f"q{k}"), steps, ["reasoning"] * 4))
    with JudgeServer(gold, flip_rate_reasoning=0.25, seed=3) as server:
        results = JudgeClient(fast_config(server)).judge_many(items)
    flipped = sum(v == INCORRECT for r in results for v in r.verdicts) / 240
    assert 0.17 < flipped < 0.33


def test_failures_become_unknown_verdicts_and_are_counted():
    gold, items = {}, []
    for k in range(4):
        steps, truth = solution(f"q{k}", [True, False, True, True])
        gold.update(gold_lookup(f"q{k}", steps, truth))
        items.append((question(f"q{k}"), steps, TYPES))
    failures = {"q1": "500", "q2": "hang", "q3": "malformed"}
    with JudgeServer(gold, failures=failures, hang_seconds=3.0) as server:
        client = JudgeClient(fast_config(server, timeout=0.3, max_retries=2))
        results = client.judge_many(items)
        served = dict(server.counts)
    assert results[0].verdicts == [CORRECT, INCORRECT, CORRECT, CORRECT]
    for result, error in zip(results[1:], ["http 500", "timeout", "parse"]):
        assert result.verdicts == [UNKNOWN] * 4 and result.failed
        assert result.attempts == 3 and len(result.errors) == 3
        assert all(e.startswith(error) for e in result.errors)
    assert client.counts["failed_solutions"] == 3 and client.counts["steps unknown"] == 12
    assert client.counts["error http 500"] == client.counts["error timeout"] == client.counts["error parse"] == 3
    assert served["500"] == served["hang"] == served["malformed"] == 3 and served["ok"] == 1


def test_retries_recover_from_random_server_errors():
    gold, items = {}, []
    for k in range(12):
        steps, truth = solution(f"q{k}", [True, True, False, True])
        gold.update(gold_lookup(f"q{k}", steps, truth))
        items.append((question(f"q{k}"), steps, TYPES))
    with JudgeServer(gold, error_rate=0.2, malformed_rate=0.1, seed=1) as server:
        results = JudgeClient(fast_config(server, max_retries=8)).judge_many(items)
        failed_requests = server.counts["500"] + server.counts["malformed"]
    assert failed_requests > 0
    # a solution is either graded exactly or (after 9 failures in a row, p ~ 2e-5) all unknown, never guessed
    for r in results:
        assert r.verdicts == [CORRECT, CORRECT, INCORRECT, CORRECT] or (r.failed and r.attempts == 9)
    assert sum(not r.failed for r in results) >= 11
    assert sum(r.attempts for r in results) == 12 + failed_requests


def test_concurrency_is_bounded():
    gold, items = {}, []
    for k in range(8):
        steps, truth = solution(f"q{k}", [True] * 4)
        gold.update(gold_lookup(f"q{k}", steps, truth))
        items.append((question(f"q{k}"), steps, TYPES))
    with JudgeServer(gold, delay=0.1) as server:
        JudgeClient(fast_config(server, max_concurrency=3)).judge_many(items)
        assert server.counts["max_in_flight"] == 3
        assert server.counts["requests"] == 8


def test_unknown_steps_are_never_guessed():
    steps, truth = solution("q0", [True, True, True, True])
    lookup = gold_lookup("q0", steps[:2], truth[:2])  # the server knows only the first two steps
    assert step_key("q0", steps[:1]) in lookup
    with JudgeServer(lookup) as server:
        result = JudgeClient(fast_config(server, max_retries=0)).judge(question(), steps, TYPES)
    assert result.verdicts == [UNKNOWN] * 4 and result.errors[0].startswith("parse")


def test_server_refuses_bad_failure_modes():
    with pytest.raises(ValueError, match="q9"):
        JudgeServer({}, failures={"q9": "explode"})


# ---------------------------------------------------------------- transport failures (issue 9, item 9)


def one_solution(qid="q0"):
    steps, truth = solution(qid, [True, False, True, True])
    return steps, gold_lookup(qid, steps, truth), [CORRECT, INCORRECT, CORRECT, CORRECT]


def test_rejected_key_fails_at_once_naming_the_status_and_the_reply():
    steps, gold, _ = one_solution()
    with JudgeServer(gold, failures={"*": "401"}) as server:
        client = JudgeClient(fast_config(server, max_retries=3))
        result = client.judge(question(), steps, TYPES)
        assert server.counts["requests"] == 1  # a bad key does not heal by asking again
    assert result.failed and result.attempts == 1
    assert result.errors[0].startswith("http 401") and "Incorrect API key provided" in result.errors[0]
    assert "Incorrect API key provided" in client.error_samples["http 401"]


def test_rate_limit_waits_for_retry_after_then_succeeds():
    steps, gold, expected = one_solution()
    with JudgeServer(gold, failures={"q0": "429"}, failure_count=2, retry_after=0.6) as server:
        result = JudgeClient(fast_config(server, max_retries=3, backoff=0.01)).judge(question(), steps, TYPES)
        assert server.counts["429"] == 2 and server.counts["ok"] == 1
    assert result.verdicts == expected and result.attempts == 3
    assert result.errors == [result.errors[0]] * 2 and result.errors[0].startswith("http 429")
    # two waits of the server's 0.6 s, not the client's 0.01-0.03 s backoff
    assert 1.2 <= result.seconds < 3.0


def test_retry_after_is_read_in_every_form():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after_seconds({"retry-after": in_ten}) <= 10.5
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None


def test_connection_closed_mid_body_is_retried_not_fatal():
    steps, gold, expected = one_solution()
    with JudgeServer(gold, failures={"q0": "truncate"}, failure_count=1) as server:
        result = JudgeClient(fast_config(server, max_retries=2)).judge(question(), steps, TYPES)
        assert server.counts["truncate"] == 1
    assert result.verdicts == expected and result.attempts == 2
    assert result.errors[0].startswith("network")
    # and when it never stops, the solution ends unknown instead of killing the run
    with JudgeServer(gold, failures={"q0": "truncate"}) as server:
        result = JudgeClient(fast_config(server, max_retries=1)).judge(question(), steps, TYPES)
    assert result.failed and [e.split(":")[0] for e in result.errors] == ["network", "network"]


def test_slow_drip_body_is_cut_by_the_total_deadline():
    steps, gold, expected = one_solution()
    with JudgeServer(gold, failures={"q0": "drip"}, hang_seconds=6.0) as server:
        start = time.monotonic()
        result = JudgeClient(fast_config(server, timeout=0.5, max_retries=1)).judge(question(), steps, TYPES)
        elapsed = time.monotonic() - start
    # the body arrives a byte every few ms, so a per-read timeout never fires; the deadline is per request
    assert result.failed and result.errors == [result.errors[0]] * 2 and result.errors[0].startswith("timeout")
    assert elapsed < 2.5
    with JudgeServer(gold, failures={"q0": "drip"}, hang_seconds=0.2) as server:  # a slow but timely reply is kept
        result = JudgeClient(fast_config(server, timeout=3.0)).judge(question(), steps, TYPES)
    assert result.verdicts == expected and result.attempts == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("judge_timeout", 0),
        ("judge_timeout", -1.0),
        ("judge_max_retries", -1),
        ("judge_backoff", -0.5),
        ("judge_max_concurrency", 0),
    ],
)
def test_config_refuses_settings_that_would_fail_every_call(field, value):
    with pytest.raises(ValueError, match=f"JudgeConfig.{field}"):
        JudgeConfig(**{field: value})


def test_the_testbed_judge_learns_each_sampled_solutions_gold_through_the_policy():
    """Labelling with the testbed judge samples through `JudgeServer.teaching(policy)`; the labeller no longer takes
    the server (it threaded the testbed through `label_batch` before)."""
    from trl_vlprm.data.schema import RecordError
    from trl_vlprm.testbed import JudgeServer, ScriptedPolicy, generate_puzzles, step_key
    from trl_vlprm.types import Continuation

    server = JudgeServer({})
    policy = server.teaching(ScriptedPolicy(0.5, 0.5, seed=1))
    question = generate_puzzles(1, seed=0)[0]
    solutions = policy.sample_solutions(question, 3)
    qid = str(question["id"])
    taught = {step_key(qid, s.steps[: k + 1]): g for s in solutions for k, g in enumerate(s.gold_correct)}
    assert len(solutions) == 3 and taught and server.gold == taught
    assert policy.step_separator == policy.policy.step_separator and policy.stats is policy.policy.stats

    class NoGold:
        def sample_solutions(self, question, n):
            return [Continuation(["a step"], True)] * n

    with pytest.raises(RecordError, match="gold_correct"):
        server.teaching(NoGold()).sample_solutions(question, 1)
