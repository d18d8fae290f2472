"""The LLM-judge fallback of answer grading, through the real `openai` client and a chat server on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from trl_vlprm.data.answers import grade_with_fallback
from trl_vlprm.eval.answer_judge import AnswerJudge
from trl_vlprm.eval.tts_sweep import sample_question
from trl_vlprm.guidance.policy import Continuation, PolicyStats
from trl_vlprm.labeling.judge import JudgeConfig

OPTIONS = ["3", "5", "7"]
# The rules read nothing here (no number, no option text, no letter); the judge server reads "B" (five).
UNREADABLE = "Two circles and three squares make five shapes in all, which is the count asked for"


class ChatServer:
    """A minimal `/v1/chat/completions`: reads the solution out of the user message and answers from a table."""

    def __init__(self, status=200):
        self.requests, self.status = [], status
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if server.status != 200:
                    self.send_response(server.status)
                    self.end_headers()
                    return
                solution = body["messages"][-1]["content"].split("Solution:\n", 1)[1]
                answer = "B" if "five" in solution else "NONE"
                reply = {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                }  # fmt: skip
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def judge(url, **kwargs):
    return AnswerJudge(
        JudgeConfig(url, "gpt-4.1", judge_api_key_env="ANSWER_JUDGE_TOKEN", judge_max_retries=0, **kwargs)
    )


def test_judge_is_asked_only_when_the_rules_read_nothing(monkeypatch):
    monkeypatch.setenv("ANSWER_JUDGE_TOKEN", "s3cret")
    with ChatServer() as server:
        answers = judge(server.url)
        extract = lambda solution: answers.extract("How many shapes?", solution, OPTIONS)  # noqa: E731
        assert grade_with_fallback("The answer is (B).", "5", OPTIONS, extractor=extract) == (True, "rule")
        assert server.requests == []  # the rules read it: no request
        assert grade_with_fallback(UNREADABLE, "5", OPTIONS, extractor=extract) == (True, "fallback")
        assert grade_with_fallback(UNREADABLE, "3", OPTIONS, extractor=extract) == (False, "fallback")
        assert grade_with_fallback("I cannot tell.", "5", OPTIONS, extractor=extract) == (False, "none")
        # Without a judge the same solution is simply unread (the old behaviour).
        assert grade_with_fallback(UNREADABLE, "5", OPTIONS) == (False, "none")
    assert len(server.requests) == 3 and {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in server.requests} == {"Bearer s3cret"}
    request = server.requests[0]["body"]
    assert request["model"] == "gpt-4.1" and request["temperature"] == 0.0
    assert "(B) 5" in request["messages"][-1]["content"] and "How many shapes?" in request["messages"][-1]["content"]
    assert answers.counts == {"calls": 3, "answers": 2, "no_answer": 1}


def test_a_failing_judge_counts_the_failure_and_grades_wrong():
    with ChatServer(status=500) as server:
        answers = judge(server.url)
        result = grade_with_fallback(UNREADABLE, "5", OPTIONS, extractor=lambda s: answers.extract("?", s, OPTIONS))
    assert result == (False, "none") and answers.counts["failed"] == 1 and len(server.requests) == 1
    assert answers.counts["error InternalServerError"] == 1


class FixedPolicy:
    step_separator = "\n\n"

    def __init__(self, texts):
        self.texts, self.stats = texts, PolicyStats()

    def sample_solutions(self, question, n):
        return [Continuation(steps=text.split("\n\n"), finished=True, answer=None) for text in self.texts[:n]]


def test_sweep_samples_record_how_they_were_graded():
    question = {"id": "q1", "prompt": "<image>How many shapes?", "images": [], "answer": "5", "options": OPTIONS}
    policy = FixedPolicy(["Count them.\n\nThe answer is (B).", "Count them.\n\n" + UNREADABLE, "Hmm."])
    with ChatServer() as server:
        record = sample_question(question, policy, {}, 3, answer_judge=judge(server.url))
    samples = record["samples"]
    assert [s["graded_by"] for s in samples] == ["rule", "fallback", "none"]
    assert [s["correct"] for s in samples] == [True, True, False]
    assert [s["vote_answer"] for s in samples] == ["B", "B", None]  # the judge's answer votes too
    assert len(server.requests) == 2  # one per unreadable solution: the vote reuses the grading's answer
    assert "<image>" not in server.requests[0]["body"]["messages"][-1]["content"]


def test_eval_config_answer_judge_settings_become_a_judge_config():
    # `EvalTTSConfig.answer_judge_*` are `JudgeConfig` fields under a prefix, with their own defaults.
    from trl_vlprm.eval.eval_tts import EvalTTSConfig, _answer_judge_config

    default = _answer_judge_config(EvalTTSConfig())
    assert (default.judge_base_url, default.judge_model, default.judge_api_key_env) == (
        None,
        "gpt-4.1",
        "OPENAI_API_KEY",
    )
    assert default.judge_timeout == JudgeConfig().judge_timeout  # the rest: the judge's own defaults
    config = EvalTTSConfig(
        answer_judge_base_url="http://127.0.0.1:9/v1", answer_judge_model="m", answer_judge_api_key_env="KEY"
    )
    judge = _answer_judge_config(config)
    assert (judge.judge_base_url, judge.judge_model, judge.judge_api_key_env) == ("http://127.0.0.1:9/v1", "m", "KEY")
