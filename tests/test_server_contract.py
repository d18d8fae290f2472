"""Servers that break the OpenAI contract, and policies that return fewer samples than asked (issue 19, items 2, 8).

A real HTTP server on loopback (`ChatServer`) plays each misbehaviour: one choice whatever `n` is, a `null` message
content, a 429 with `Retry-After`, an HTML page with status 200. Every sampling path must check what it got: a short
answer is an error naming the question and the server, never fewer solutions, candidates or MC completions.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trl_vlprm.cli import run as cli_run
from trl_vlprm.guidance.server_policy import ServerPolicy
from trl_vlprm.guidance.strategies import SearchConfig, get_strategy
from trl_vlprm.labeling.mc import mc_score, sample_rollouts
from trl_vlprm.testbed import GoldOracleScorer, ScriptedPolicy, generate_puzzles
from trl_vlprm.types import ShortSampleError
from trl_vlprm.utils.http import ServerContractError

SOLUTION = "The picture shows 4.\n\nAnswer: 4"


class ChatServer:
    """An OpenAI-compatible server on loopback; `reply(body, attempt)` -> (status, headers, text), with `body` the
    POSTed JSON, or None for a GET (`/v1/models`)."""

    def __init__(self, reply):
        self.reply, self.attempts, self.times = reply, 0, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer(None)

            def do_POST(self):
                self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def answer(self, body):
                server.times.append(time.monotonic())
                server.attempts += 1
                status, headers, text = server.reply(body, server.attempts)
                data = text.encode()
                self.send_response(status)
                for key, value in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(choices):
    return json.dumps(
        {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                for i, c in enumerate(choices)
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(choices), "total_tokens": 1 + len(choices)},
        }
    )  # fmt: skip


JSON = {"Content-Type": "application/json"}


@pytest.fixture
def question():
    return generate_puzzles(1, seed=0)[0]


def policy_on(server, **kwargs):
    return ServerPolicy(server.base_url, model="m", step_separator="\n\n", backoff=0.01, **kwargs)


def test_a_server_answering_one_choice_whatever_n_is_is_an_error_naming_it(question):
    server = ChatServer(lambda body, attempt: (200, JSON, completion([SOLUTION])))
    policy = policy_on(server)
    try:
        with pytest.raises(ServerContractError, match=r"1 choice\(s\) for n=4.*max_samples_per_request=1"):
            policy.sample_solutions(question, 4)
        assert server.attempts == 1  # a contract breach is not retried: the next attempt would break it again
        # The remedy the message names works: one sample a request, 4 requests, 4 solutions.
        split = policy_on(server, max_samples_per_request=1)
        assert len(split.sample_solutions(question, 4)) == 4 and server.attempts == 5
        split.close()
    finally:
        policy.close()
        server.close()


def test_a_null_message_content_is_a_bad_reply_not_an_empty_solution(question):
    server = ChatServer(lambda body, attempt: (200, JSON, completion([None] * body["n"])))
    policy = policy_on(server, max_retries=1)
    try:
        with pytest.raises(RuntimeError, match=r"choice 0 has no message content \(null; finish_reason"):
            policy.sample_solutions(question, 2)
        assert server.attempts == 2  # retried once, then reported
    finally:
        policy.close()
        server.close()


def test_429_waits_what_retry_after_asks(question):
    server = ChatServer(
        lambda body, attempt: (
            (429, {**JSON, "Retry-After": "1.5"}, '{"error": {"message": "slow down"}}')
            if attempt == 1
            else (200, JSON, completion([SOLUTION] * body["n"]))
        )
    )
    policy = policy_on(server, max_retries=2)
    try:
        assert len(policy.sample_solutions(question, 2)) == 2
        assert server.attempts == 2 and server.times[1] - server.times[0] >= 1.45  # before: retried after ~0.01 s
    finally:
        policy.close()
        server.close()


def test_an_html_page_with_status_200_is_a_bad_reply_retried_then_named(question):
    page = "<html><body>Bad gateway of the corporate proxy</body></html>"
    server = ChatServer(lambda body, attempt: (200, {"Content-Type": "text/html"}, page))
    policy = policy_on(server, max_retries=2)
    try:
        with pytest.raises(RuntimeError, match=r"not a chat-completions reply.*<html><body>Bad gateway"):
            policy.sample_solutions(question, 2)
        assert server.attempts == 3
    finally:
        policy.close()
        server.close()


class ShortPolicy(ScriptedPolicy):
    """A policy breaking the contract the way such a server makes any backend break it: one sample, whatever n."""

    def sample_solutions(self, question, n):
        return super().sample_solutions(question, n)[:1]

    def complete(self, question, prefix, n):
        return super().complete(question, prefix, n)[:1]


def test_every_sampling_path_checks_the_count(question):
    policy = ShortPolicy(seed=0)
    with pytest.raises(ShortSampleError, match=rf"question {question['id']}: .*sample_solutions returned 1 of 8"):
        get_strategy("best_of_n")(question, policy, GoldOracleScorer(), SearchConfig(n=8))
    with pytest.raises(ShortSampleError, match=r"returned 1 of 4"):
        sample_rollouts(policy, question, 4)
    solution = ScriptedPolicy(seed=0).sample_solutions(question, 1)[0]
    with pytest.raises(ShortSampleError, match=r"complete returned 1 of 4"):
        mc_score(policy, question, solution.steps[:1], 4)


def test_labelling_on_a_server_ignoring_n_stops_in_one_line_instead_of_labelling_a_quarter(tmp_path, capsys):
    server = ChatServer(lambda body, attempt: (200, JSON, completion([SOLUTION])))
    args = ["--dataset", "puzzles", "--num_questions", "4", "--num_rollouts", "4", "--rule", "mc_only",
            "--judge", "none", "--policy", f"server:{server.base_url},model=m", "--show_progress", "false",
            "--output_dir", str(tmp_path)]  # fmt: skip
    try:
        with pytest.raises(SystemExit):
            cli_run("label", args)
    finally:
        server.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "returned 1 choice(s) for n=4" in err, err[-2000:]
    assert not list(tmp_path.glob("shard-*.parquet"))  # before: 4 solutions for 4 questions x 4 rollouts, exit 0


HTML_PAGE = "<html><body>Bad gateway of the corporate proxy</body></html>"


def test_a_prm_server_answering_an_html_page_with_status_200_is_named_with_the_page():
    """`ServerPRMScorer` checks its replies as `ServerPolicy` does: a body that is not JSON names the URL it came from
    and shows its start (before: `JSONDecodeError: Expecting value: line 1 column 1 (char 0)`, no URL, no page)."""
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer
    from trl_vlprm.testing import build_tiny_tokenizer
    from trl_vlprm.types import Candidate

    server = ChatServer(lambda body, attempt: (200, {"Content-Type": "text/html"}, HTML_PAGE))
    root = server.base_url.removesuffix("/v1")
    tokenizer = build_tiny_tokenizer()
    try:
        with pytest.raises(ValueError, match=rf"{root}/v1/models answered 200 with a body that is not JSON: "
                                             r"'<html><body>Bad gateway"):  # fmt: skip
            ServerPRMScorer(server.base_url, tokenizer, max_retries=0)
        scorer = ServerPRMScorer(server.base_url, tokenizer, model="m", max_retries=1, backoff=0.01)
        with pytest.raises(RuntimeError, match=rf"{root}/pooling answered 200 with a body that is not JSON: "
                                               r"'<html><body>Bad gateway"):  # fmt: skip
            scorer.score({"id": "q1", "prompt": "What is 2 + 2?", "images": []}, [Candidate(steps=["2 + 2 = 4"])])
        assert server.attempts == 1 + 2  # the models query once; the pooling request retried once, then named
        scorer.close()
    finally:
        server.close()


def test_a_prm_server_reply_without_token_rows_is_named_with_the_reply():
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer
    from trl_vlprm.testing import build_tiny_tokenizer
    from trl_vlprm.types import Candidate

    server = ChatServer(lambda body, attempt: (200, JSON, json.dumps({"object": "error", "message": "busy"})))
    root = server.base_url.removesuffix("/v1")
    try:
        with pytest.raises(ValueError, match=rf"{root}/v1/models: no model list \(data\[0\]\.id\) in the reply: "):
            ServerPRMScorer(server.base_url, build_tiny_tokenizer(), max_retries=0)
        scorer = ServerPRMScorer(server.base_url, build_tiny_tokenizer(), model="m", max_retries=0)
        with pytest.raises(RuntimeError, match=rf"{root}/pooling: no token rows \(data\[0\]\.data\) in the reply: "
                                               r"'\{\"object\": \"error\""):  # fmt: skip
            scorer.score({"id": "q1", "prompt": "What is 2 + 2?", "images": []}, [Candidate(steps=["2 + 2 = 4"])])
        scorer.close()
    finally:
        server.close()
