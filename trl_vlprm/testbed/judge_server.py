"""A real chat-completions HTTP server that plays a VLM judge from hidden gold step correctness.

It serves `POST /v1/chat/completions` on 127.0.0.1 (port 0: the OS picks a free one) with a `ThreadingHTTPServer`,
reads the steps block the judge client embeds in its prompt, and answers the strict JSON verdict object from a lookup
`{step_key(question_id, steps[:i + 1]): bool}` it was built with. It imitates a real judge's flaws, all seeded:

* noise: each verdict is flipped with probability `flip_rate_perception` / `flip_rate_reasoning` (a property of the
  step, so retries give the same answer, as a temperature-0 judge would);
* slowness: every answer waits `delay` seconds;
* failures: with probabilities `error_rate` (HTTP 500), `hang_rate` (sleeps `hang_seconds`, longer than the client
  timeout), `malformed_rate` (answers text that is not the JSON object), drawn per request; and `failures`, a
  per-question-id mode (key "*": every question) applied to the first `failure_count` requests about that question
  (all of them when None). Modes: "500", "hang", "malformed", "401" (a rejected key), "429" (rate limited, with a
  `Retry-After: retry_after` header), "truncate" (the connection closes half-way through the body) and "drip" (a
  valid answer sent a byte at a time over `hang_seconds`, so no single socket read ever times out).

Steps missing from the lookup are answered without a verdict, which the strict client parser rejects. Used by the
tests, the label-quality benchmark and the testbed recipe; never a stand-in for a judge on real data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..data.paper_solution import section_positions, split_solution
from ..data.schema import PERCEPTION, RecordError
from ..data.steps_block import read_steps_block

_SOLUTION = re.compile(r"<solution>\n(.*?)\n</solution>", re.S)

FAILURE_MODES = ("500", "hang", "malformed", "401", "429", "truncate", "drip")


def step_key(question_id: str, prefix: Sequence[str]) -> str:
    """Lookup key of the last step of `prefix` in solution context (the same text can be right in one and wrong in
    another solution)."""
    digest = hashlib.sha256(str(question_id).encode())
    for step in prefix:
        digest.update(b"\x00" + step.encode())
    return digest.hexdigest()


class JudgeServer:
    """The server (see the module docstring). Use as a context manager or call `start()` / `stop()`.

    Args:
        gold: `{step_key(question_id, prefix): is_correct}`.
        flip_rate_perception / flip_rate_reasoning: probability a verdict on that step type is flipped.
        delay: seconds every answer waits.
        error_rate / hang_rate / malformed_rate: per-request probabilities of an HTTP 500, a hang, a malformed answer.
        hang_seconds: how long a hang lasts.
        failures: `{question_id: mode}` ("*" for every question), a mode from `FAILURE_MODES` forced on the
            requests about it.
        failure_count: how many requests about a question `failures` applies to (the first ones); None: all.
        retry_after: seconds the "429" mode asks the client to wait (its `Retry-After` header).
        seed: seed of the noise and failure draws.
    """

    def __init__(
        self,
        gold: Mapping[str, bool],
        flip_rate_perception: float = 0.0,
        flip_rate_reasoning: float = 0.0,
        delay: float = 0.0,
        error_rate: float = 0.0,
        hang_rate: float = 0.0,
        malformed_rate: float = 0.0,
        hang_seconds: float = 5.0,
        failures: Mapping[str, str] | None = None,
        seed: int = 0,
        failure_count: int | None = None,
        retry_after: float = 1.0,
    ):
        for qid, mode in (failures or {}).items():
            if mode not in FAILURE_MODES:
                raise ValueError(f"JudgeServer failures[{qid!r}]={mode!r}; expected one of {FAILURE_MODES}")
        self.gold = dict(gold)
        self.flip_rates = {PERCEPTION: flip_rate_perception}
        self.flip_rate_reasoning = flip_rate_reasoning
        self.delay = delay
        self.hang_seconds = hang_seconds
        self.rates = {"500": error_rate, "hang": hang_rate, "malformed": malformed_rate}
        self.failures = dict(failures or {})
        self.failure_count = failure_count
        self.retry_after = retry_after
        self._requests_about: Counter[str] = Counter()
        self._question_ids: set[str] = set()
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.counts: Counter[str] = Counter()
        self._in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("JudgeServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> JudgeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                server._handle(self)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def add_gold(self, entries: Mapping[str, bool]) -> None:
        """Teach the server more gold verdicts (e.g. of rollouts sampled after it started)."""
        with self._lock:
            self.gold.update(entries)

    def add_solution(self, question_id: str, steps: Sequence[str], gold_correct: Sequence[bool]) -> None:
        """Teach the server one solution's gold, remembering its question (the paper's prompt names none)."""
        self.add_gold(gold_lookup(question_id, steps, gold_correct))
        with self._lock:
            self._question_ids.add(str(question_id))

    def teaching(self, policy: Any) -> TeachingPolicy:
        """`policy`, teaching this server the gold of every solution it samples, so the server can judge them."""
        return TeachingPolicy(policy, self)

    def _flip(self, key: str, kind: str) -> bool:
        rate = self.flip_rates.get(kind, self.flip_rate_reasoning)
        draw = int(hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()[:8], 16) / 16**8
        return draw < rate

    def verdicts(self, question_id: str, steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The (noisy) verdict entries for a solution; steps absent from the gold lookup get none."""
        texts = [str(s["text"]) for s in steps]
        entries = []
        for i, step in enumerate(steps):
            key = step_key(question_id, texts[: i + 1])
            if key not in self.gold:
                continue
            kind = step.get("type")
            correct = bool(self.gold[key]) != self._flip(key, kind)
            entry: dict[str, Any] = {"index": int(step["index"]), "correct": correct}
            if kind == PERCEPTION:
                entry["matches_image"] = correct
            entries.append(entry)
        return entries

    def _draw_failure(self, question_id: str) -> str | None:
        with self._lock:
            self._requests_about[question_id] += 1
            seen = self._requests_about[question_id]
            draw = self._rng.random()
        forced = self.failures.get(question_id, self.failures.get("*"))
        if forced is not None and (self.failure_count is None or seen <= self.failure_count):
            return forced
        for mode, rate in self.rates.items():
            if draw < rate:
                return mode
            draw -= rate
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._in_flight += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self._in_flight)
        try:
            self._answer(handler)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        try:
            request = json.loads(handler.rfile.read(length))
        except ValueError as err:
            self._send(handler, 400, {"error": {"message": f"bad request: {err}"}})
            return
        status, body, headers, body_mode = self.respond(request, length)
        if body_mode == "hang":
            self._stopping.wait(self.hang_seconds)
            return  # the client has given up; closing without an answer
        self._send(handler, status, body, headers, body_mode=body_mode)

    def respond(
        self, request: Mapping[str, Any], size: int = 0, question_id: str | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
        """The reply to one chat-completions request body: (status, JSON body, headers, body mode).

        The steps are read from the JSON steps block of the default prompt, or else from the `<solution>` of the
        paper's prompt, answered in the paper's format (an analysis block per step up to the first incorrect one,
        then the conclusion). The paper's prompt carries no question id: `question_id` (the batch server passes the
        request's `custom_id` prefix) or else the one question whose gold knows every step of the solution.
        `size` is the request's size in bytes, for the usage it reports. Body modes: None, "hang", "truncate",
        "drip" (what the HTTP handler does with the body).
        """
        try:
            paper = False
            try:
                block = read_steps_block(request["messages"])
            except ValueError:
                block, paper = self._paper_block(request["messages"], question_id), True
        except (ValueError, KeyError, TypeError) as err:
            return 400, {"error": {"message": f"bad request: {err}"}}, {}, None
        question_id = str(block.get("question_id", ""))
        failure = self._draw_failure(question_id)
        with self._lock:
            self.counts["requests"] += 1
            self.counts[failure or "ok"] += 1
        if self.delay:
            time.sleep(self.delay)
        if failure == "500":
            return 500, {"error": {"message": "internal server error"}}, {}, None
        if failure == "hang":
            return 0, {}, {}, "hang"
        if failure == "401":
            return 401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}, {}, None
        if failure == "429":
            headers = {"Retry-After": f"{self.retry_after:g}"}
            return 429, {"error": {"message": "Rate limit reached, retry later"}}, headers, None
        if failure == "malformed":
            content = "I think the solution looks fine." if paper else '{"steps": [{"index": 0, "correct": tru'
        elif paper:
            content = paper_answer(block["steps"], self.verdicts(question_id, block["steps"]))
        else:
            content = json.dumps({"steps": self.verdicts(question_id, block.get("steps", []))})
        body = {
            "id": f"chatcmpl-{self.counts['requests']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": size // 4, "completion_tokens": len(content) // 4},
        }
        return 200, body, {}, failure if failure in ("truncate", "drip") else None

    def _paper_block(self, messages: Sequence[Mapping[str, Any]], question_id: str | None) -> dict[str, Any]:
        """The steps block of a request in the paper's prompt: its last `<solution>`, split by the paper's rule."""
        texts = [
            part.get("text", "") if isinstance(part, Mapping) else str(part)
            for message in messages
            for part in (message["content"] if isinstance(message["content"], list) else [message["content"]])
        ]
        solutions = [m for text in texts for m in _SOLUTION.findall(text)]
        if not solutions:
            raise ValueError("neither a steps block nor a <solution> in the messages")
        steps, types = split_solution(solutions[-1])
        listing = [{"index": i, "type": kind, "text": text} for i, (text, kind) in enumerate(zip(steps, types))]
        if question_id is None:
            with self._lock:
                known = [q for q in self._question_ids if step_key(q, steps) in self.gold]
            question_id = known[0] if len(known) == 1 else ""
        return {"question_id": question_id, "steps": listing}

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        body_mode: str | None = None,
    ) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            if body_mode == "truncate":  # half the promised bytes, then the connection goes away
                handler.wfile.write(data[: len(data) // 2])
                handler.wfile.flush()
                handler.close_connection = True
                return
            if body_mode == "drip":
                pause = self.hang_seconds / len(data)
                for i in range(len(data)):
                    if self._stopping.wait(pause):
                        return
                    handler.wfile.write(data[i : i + 1])
                    handler.wfile.flush()
                return
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left


class TeachingPolicy:
    """A policy whose sampled solutions (`sample_solutions`) are taught to a `JudgeServer` with their gold; every other
    attribute is the wrapped policy's. Labelling with the "testbed" judge samples through it, so the labeller itself
    knows nothing of the testbed."""

    def __init__(self, policy: Any, server: JudgeServer):
        self.policy = policy
        self.server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def sample_solutions(self, question: Mapping[str, Any], n: int) -> list[Any]:
        solutions = self.policy.sample_solutions(question, n)
        qid = str(question.get("id", "?"))
        for solution in solutions:
            if solution.gold_correct is None:
                raise RecordError(qid, "gold_correct", "the testbed judge needs a policy that knows step gold")
            self.server.add_solution(qid, solution.steps, solution.gold_correct)
        return solutions


def gold_lookup(question_id: str, steps: Sequence[str], gold_correct: Sequence[bool]) -> dict[str, bool]:
    """Lookup entries of one solution whose gold step correctness is known."""
    return {step_key(question_id, steps[: i + 1]): bool(g) for i, g in enumerate(gold_correct)}


def paper_answer(steps: Sequence[Mapping[str, Any]], verdicts: Sequence[Mapping[str, Any]]) -> str:
    """An answer in the paper's judge format: an `<analysis_k>` block per step under its section header, stopping at
    the first step judged incorrect, then `<conclusion>Correct|Incorrect</conclusion>`. A step without a verdict
    (absent from the gold) ends the analysis with no conclusion, which the paper's parser counts as unknown."""
    by_index = {entry["index"]: entry["correct"] for entry in verdicts}
    positions = section_positions([step.get("type") for step in steps])
    lines, current = [], None
    for step, (section, index) in zip(steps, positions):
        if section != current:
            lines.append(f"\n[{section}]" if current else f"[{section}]")
            current = section
        correct = by_index.get(step["index"])
        if correct is None:
            return "\n".join(lines)
        note = (
            "This step is consistent with the image and the previous steps."
            if correct
            else ("This step is wrong: it does not follow from the image and the previous steps.")
        )
        lines.append(f"<analysis_{index + 1}>\n{note}\n</analysis_{index + 1}>")
        if not correct:
            return "\n".join(lines) + "\n\n<conclusion>\nIncorrect\n</conclusion>"
    return "\n".join(lines) + "\n\n<conclusion>\nCorrect\n</conclusion>"
