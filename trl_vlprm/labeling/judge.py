"""A VLM judge over any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, a hosted API).

The judge sees the question with its images (inline base64 data URLs) and the numbered steps of a solution, and must
answer with one JSON object::

    {"steps": [{"index": 0, "correct": true, "matches_image": true}, {"index": 1, "correct": false}, ...]}

`matches_image` is asked for perception steps only (does the step describe the image faithfully); a perception step
is correct only when both are true. Parsing is strict: any other shape (a missing or repeated index, a non-boolean,
no JSON) is a failure, retried like a server error. After the last retry every step of that solution gets the
verdict "unknown": the judge never guesses. Only the standard library is used (urllib + a thread pool).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, PERCEPTION, load_image
from trl_vlprm.guidance.policy import Question

CORRECT, INCORRECT, UNKNOWN = "correct", "incorrect", "unknown"
STEPS_BEGIN, STEPS_END = "<steps_json>", "</steps_json>"

SYSTEM_PROMPT = (
    "You are a meticulous grader of step-by-step solutions to visual questions. For every step decide whether it is "
    "correct given the image, the question and the previous steps. For a perception step (one that describes the "
    "image) also decide whether it matches the image. Answer with one JSON object and nothing else: "
    '{"steps": [{"index": <int>, "correct": <true|false>, "matches_image": <true|false, perception steps only>}]} '
    "with exactly one entry per step, indices as given."
)


@dataclass
class JudgeConfig:
    """Settings of the judge client.

    Args:
        base_url: server root, e.g. "http://127.0.0.1:8000/v1" (the client posts to `{base_url}/chat/completions`).
        model: model name sent in the request.
        api_key_env: name of the environment variable holding the bearer token (none sent when unset or empty).
        timeout: seconds to wait for one HTTP response.
        max_retries: retries after the first attempt (on HTTP errors, timeouts and unparseable answers).
        backoff: base of the exponential backoff in seconds (attempt a waits backoff * 2**a, with jitter).
        max_concurrency: requests in flight at once.
        temperature: sampling temperature of the judge.
        max_tokens: answer token budget.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key_env: str = "JUDGE_API_KEY"
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 1.0
    max_concurrency: int = 8
    temperature: float = 0.0
    max_tokens: int = 2048


@dataclass
class JudgeResult:
    """The judge's verdicts on one solution.

    Attributes:
        verdicts: per step "correct", "incorrect" or "unknown".
        attempts: HTTP requests made.
        errors: one short description per failed attempt ("http 500", "timeout", "parse: ...").
        prompt_tokens / completion_tokens: usage the server reported.
        seconds: wall time including retries.
    """

    verdicts: list[str]
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.verdicts) and all(v == UNKNOWN for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": self.verdicts,
            "attempts": self.attempts,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
        }


class JudgeParseError(ValueError):
    """The judge's answer is not the JSON object the prompt asks for."""


def image_data_url(image: Any) -> str:
    """A PNG `data:` URL of any image form a record may hold."""
    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _question_text(question: Question) -> str:
    prompt = question["prompt"]
    if isinstance(prompt, str):
        return prompt.replace(IMAGE_PLACEHOLDER, "").strip()
    parts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content.replace(IMAGE_PLACEHOLDER, ""))
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
    return "\n".join(p.strip() for p in parts if p.strip())


def build_messages(question: Question, steps: Sequence[str], step_types: Sequence[str | None]) -> list[dict]:
    """Chat messages asking the judge about every step; the steps travel as a JSON block a program can read back."""
    listing = [
        {"index": i, "type": kind or "unknown", "text": step} for i, (step, kind) in enumerate(zip(steps, step_types))
    ]
    payload = {"question_id": str(question.get("id", "")), "steps": listing}
    text = (
        f"Question:\n{_question_text(question)}\n\n"
        + (f"Options: {list(question['options'])}\n\n" if question.get("options") else "")
        + f"Solution steps (JSON):\n{STEPS_BEGIN}{json.dumps(payload)}{STEPS_END}\n\n"
        "Grade every step."
    )
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in question.get("images") or []
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def read_steps_block(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `{"question_id", "steps"}` block `build_messages` embeds (used by servers that answer from a lookup)."""
    for message in reversed(messages):
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
        for text in texts:
            match = re.search(re.escape(STEPS_BEGIN) + r"(.*?)" + re.escape(STEPS_END), text or "", re.S)
            if match:
                return json.loads(match.group(1))
    raise ValueError(f"no {STEPS_BEGIN}...{STEPS_END} block in the messages")


def parse_verdicts(text: str, step_types: Sequence[str | None]) -> list[str]:
    """Strictly parse the judge's answer into one "correct"/"incorrect" per step; raise `JudgeParseError` otherwise.

    A fenced ```json block is accepted; anything else around the single JSON object is not.
    """
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.S)
    if fenced:
        stripped = fenced.group(1)
    try:
        answer = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise JudgeParseError(f"not JSON ({err.msg} at char {err.pos})") from err
    if not isinstance(answer, dict) or not isinstance(answer.get("steps"), list):
        raise JudgeParseError("expected an object with a 'steps' list")
    verdicts: dict[int, str] = {}
    for entry in answer["steps"]:
        if not isinstance(entry, dict):
            raise JudgeParseError(f"step entry {entry!r} is not an object")
        index, correct = entry.get("index"), entry.get("correct")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(step_types):
            raise JudgeParseError(f"step index {index!r} is not an integer in [0, {len(step_types)})")
        if index in verdicts:
            raise JudgeParseError(f"step index {index} appears twice")
        if not isinstance(correct, bool):
            raise JudgeParseError(f"step {index}: 'correct' is {correct!r}, not a boolean")
        matches = entry.get("matches_image")
        if matches is not None and not isinstance(matches, bool):
            raise JudgeParseError(f"step {index}: 'matches_image' is {matches!r}, not a boolean")
        good = correct and (matches is not False or step_types[index] != PERCEPTION)
        verdicts[index] = CORRECT if good else INCORRECT
    missing = [i for i in range(len(step_types)) if i not in verdicts]
    if missing:
        raise JudgeParseError(f"no verdict for step(s) {missing}")
    return [verdicts[i] for i in range(len(step_types))]


class JudgeClient:
    """Asks an OpenAI-compatible chat-completions server to grade solution steps (see the module docstring)."""

    def __init__(self, config: JudgeConfig, seed: int = 0):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env or "", "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def judge(
        self, question: Question, steps: Sequence[str], step_types: Sequence[str | None] | None = None
    ) -> JudgeResult:
        """Verdicts on every step of one solution; "unknown" for all of them when every attempt failed."""
        step_types = list(step_types) if step_types is not None else [None] * len(steps)
        result = JudgeResult(verdicts=[UNKNOWN] * len(steps))
        if not steps:
            return result
        start = time.monotonic()
        body = json.dumps(
            {
                "model": self.config.model,
                "messages": build_messages(question, steps, step_types),
                "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens,
            }
        ).encode("utf-8")
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1) * (0.5 + self._rng.random()))
            result.attempts += 1
            try:
                response = self._post(body)
                usage = response.get("usage") or {}
                result.prompt_tokens += int(usage.get("prompt_tokens", 0))
                result.completion_tokens += int(usage.get("completion_tokens", 0))
                content = response["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise JudgeParseError("message content is not a string")
                result.verdicts = parse_verdicts(content, step_types)
                break
            except urllib.error.HTTPError as err:
                result.errors.append(f"http {err.code}")
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                result.errors.append("timeout" if isinstance(reason, TimeoutError) else f"network: {reason}")
            except (JudgeParseError, json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as err:
                result.errors.append(f"parse: {err}")
        result.seconds = time.monotonic() - start
        with self._lock:
            self.counts["requests"] += result.attempts
            self.counts["solutions"] += 1
            self.counts["failed_solutions"] += int(result.failed)
            self.counts.update("error " + error.split(":")[0] for error in result.errors)
            self.counts.update("steps " + verdict for verdict in result.verdicts)
        return result

    def judge_many(
        self, items: Sequence[tuple[Question, Sequence[str], Sequence[str | None] | None]]
    ) -> list[JudgeResult]:
        """`judge` on many solutions with at most `max_concurrency` requests in flight; results in input order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.config.max_concurrency)) as pool:
            return list(pool.map(lambda item: self.judge(*item), items))
