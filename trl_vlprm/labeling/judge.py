"""A VLM judge over any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, a hosted API).

The judge sees the question with its images (inline base64 data URLs) and the numbered steps of a solution, and must
answer with one JSON object::

    {"steps": [{"index": 0, "correct": true, "matches_image": true}, {"index": 1, "correct": false}, ...]}

`matches_image` is asked for perception steps only (does the step describe the image faithfully); a perception step
is correct only when both are true. Parsing is strict: any other shape (a missing or repeated index, a non-boolean,
no JSON) is a failure, retried like a server error. After the last retry every step of that solution gets the
verdict "unknown": the judge never guesses.

Transport is the official `openai` client (`AsyncOpenAI`, its own retries off so every attempt is counted and
parse failures are retried alike): each attempt has a total deadline of `timeout` seconds (a server dripping its
body byte by byte cannot hold a request longer), connection errors and HTTP 408/409/429/5xx are retried after the
server's `Retry-After` when it sends one (else an exponential backoff with jitter), other HTTP errors (401, 403,
404, 400...) are not retried, and at most `max_concurrency` requests are in flight.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai

from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, PERCEPTION, load_image
from trl_vlprm.data.steps_block import write_steps_block
from trl_vlprm.guidance.policy import Question
from trl_vlprm.utils.http import retry_after_seconds

CORRECT, INCORRECT, UNKNOWN = "correct", "incorrect", "unknown"

SYSTEM_PROMPT = (
    "You are a meticulous grader of step-by-step solutions to visual questions. For every step decide whether it is "
    "correct given the image, the question and the previous steps. For a perception step (one that describes the "
    "image) also decide whether it matches the image. Answer with one JSON object and nothing else: "
    '{"steps": [{"index": <int>, "correct": <true|false>, "matches_image": <true|false, perception steps only>}]} '
    "with exactly one entry per step, indices as given."
)


@dataclass
class JudgeConfig:
    """Settings of the judge client (`JudgeClient`, and the answer judge of the evaluation).

    `trl-vlprm label` parses it beside `LabelConfig` (as TRL scripts parse their script arguments beside a training
    config), so every field is a flag and a YAML key of a labelling recipe: `--judge_base_url`, `judge_model: ...`.

    Args:
        judge_base_url: server root, e.g. "http://127.0.0.1:8000/v1" (the client posts to
            `{judge_base_url}/chat/completions`).
        judge_model: model name sent in the request.
        judge_api_key_env: name of the environment variable holding the bearer token ("EMPTY" is sent when it is
            unset).
        judge_timeout: total deadline in seconds of one HTTP request, body included (> 0).
        judge_max_retries: retries after the first attempt (on retryable HTTP errors, network errors, timeouts and
            unparseable answers; >= 0).
        judge_backoff: base of the exponential backoff in seconds (attempt a waits backoff * 2**a, with jitter) when
            the server sends no `Retry-After`.
        judge_max_concurrency: requests in flight at once (>= 1).
        judge_temperature: sampling temperature of the judge.
        judge_max_tokens: answer token budget of the judge.
        judge_max_retry_wait: longest wait a `Retry-After` header may impose, in seconds.
    """

    judge_base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={
            "help": "Root of the judge server, e.g. http://127.0.0.1:8000/v1 (the client posts to "
            "{judge_base_url}/chat/completions)."
        },
    )
    judge_model: str = field(default="judge", metadata={"help": "Model name sent to the judge server."})
    judge_api_key_env: str = field(
        default="JUDGE_API_KEY",
        metadata={"help": "Environment variable holding the judge's bearer token ('EMPTY' is sent when it is unset)."},
    )
    judge_timeout: float = field(
        default=60.0, metadata={"help": "Total deadline in seconds of one judge request, body included (> 0)."}
    )
    judge_max_retries: int = field(
        default=3,
        metadata={
            "help": "Retries of a judge request after the first attempt, on retryable HTTP errors, network errors, "
            "timeouts and unparseable answers (>= 0)."
        },
    )
    judge_backoff: float = field(
        default=1.0,
        metadata={
            "help": "Base in seconds of the exponential backoff between judge attempts (attempt a waits "
            "backoff * 2**a, with jitter) when the server sends no Retry-After."
        },
    )
    judge_max_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight at once (>= 1)."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the judge."})
    judge_max_tokens: int = field(default=2048, metadata={"help": "Answer token budget of the judge."})
    judge_max_retry_wait: float = field(
        default=60.0, metadata={"help": "Longest wait in seconds a Retry-After header from the judge may impose."}
    )

    def __post_init__(self):
        checks = {
            "judge_timeout": self.judge_timeout > 0,
            "judge_max_retries": isinstance(self.judge_max_retries, int) and self.judge_max_retries >= 0,
            "judge_backoff": self.judge_backoff >= 0,
            "judge_max_retry_wait": self.judge_max_retry_wait >= 0,
            "judge_max_concurrency": isinstance(self.judge_max_concurrency, int) and self.judge_max_concurrency >= 1,
        }
        rules = {
            "judge_timeout": "> 0",
            "judge_max_retries": "an integer >= 0",
            "judge_backoff": ">= 0",
            "judge_max_retry_wait": ">= 0",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"JudgeConfig.{name}={getattr(self, name)!r}; must be {rules.get(name, 'an integer >= 1')}"
                )


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
    text = (
        f"Question:\n{_question_text(question)}\n\n"
        + (f"Options: {list(question['options'])}\n\n" if question.get("options") else "")
        + f"Solution steps (JSON):\n{write_steps_block(question.get('id', ''), steps, step_types)}\n\n"
        "Grade every step."
    )
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in question.get("images") or []
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


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


RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx, as the openai client itself retries
REPLY_SAMPLE_CHARS = 300


def _sample(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REPLY_SAMPLE_CHARS else text[:REPLY_SAMPLE_CHARS] + "..."


def _run(coroutine_function):
    """Run a coroutine from synchronous code, also when the caller already runs an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_function())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine_function()).result()


def openai_client(config: JudgeConfig, asynchronous: bool = True, max_retries: int | None = None):
    """The `openai` client every judge of the project uses: `config`'s endpoint, bearer token from
    `config.judge_api_key_env` ("EMPTY" when unset, as local servers expect), `config.judge_timeout` per request."""
    client_class = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return client_class(
        base_url=config.judge_base_url,
        api_key=os.environ.get(config.judge_api_key_env or "", "") or "EMPTY",
        max_retries=config.judge_max_retries if max_retries is None else max_retries,
        timeout=config.judge_timeout,
    )


class JudgeClient:
    """Asks an OpenAI-compatible chat-completions server to grade solution steps (see the module docstring).

    Attributes:
        counts: requests, solutions, failed solutions, errors by kind and verdicts, over the client's life.
        error_samples: the first full error text of each kind (status code and a sample of the server's reply), so
            a caller can say why the judge failed.
    """

    def __init__(self, config: JudgeConfig, seed: int = 0):
        self.config = config
        self.url = config.judge_base_url.rstrip("/") + "/chat/completions"
        self._rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}

    def _client(self) -> openai.AsyncOpenAI:
        # Retried here, with parse failures, so every attempt is counted.
        return openai_client(self.config, asynchronous=True, max_retries=0)

    async def _judge(
        self,
        client: openai.AsyncOpenAI,
        slots: asyncio.Semaphore,
        question: Question,
        steps: Sequence[str],
        step_types: Sequence[str | None] | None,
    ) -> JudgeResult:
        step_types = list(step_types) if step_types is not None else [None] * len(steps)
        result = JudgeResult(verdicts=[UNKNOWN] * len(steps))
        if not steps:
            return result
        start = time.monotonic()
        request = {
            "model": self.config.judge_model,
            "messages": build_messages(question, steps, step_types),
            "temperature": self.config.judge_temperature,
            "max_tokens": self.config.judge_max_tokens,
        }
        wait = 0.0
        for attempt in range(self.config.judge_max_retries + 1):
            if attempt:
                await asyncio.sleep(wait)
            wait = self.config.judge_backoff * 2**attempt * (0.5 + self._rng.random())
            result.attempts += 1
            try:
                async with slots:  # a slot only while the request is in flight, not while backing off
                    response = await asyncio.wait_for(
                        client.chat.completions.create(**request), timeout=self.config.judge_timeout
                    )
                usage = response.usage
                result.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                result.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
                content = response.choices[0].message.content
                if not isinstance(content, str):
                    raise JudgeParseError("message content is not a string")
                result.verdicts = parse_verdicts(content, step_types)
                break
            except (asyncio.TimeoutError, openai.APITimeoutError):
                self._error(result, "timeout", f"timeout: no complete reply within {self.config.judge_timeout} s")
            except openai.APIStatusError as err:
                self._error(result, f"http {err.status_code}", f"http {err.status_code}: {_sample(err.response.text)}")
                if err.status_code not in RETRYABLE_STATUS and err.status_code < 500:
                    break  # a bad key or a wrong URL does not heal by asking again
                server_wait = retry_after_seconds(err.response.headers)
                if server_wait is not None:
                    wait = min(server_wait, self.config.judge_max_retry_wait)
            except openai.APIConnectionError as err:
                cause = err.__cause__ or err
                self._error(result, "network", f"network: {type(cause).__name__}: {_sample(str(cause))}")
            except (JudgeParseError, openai.APIResponseValidationError, AttributeError, KeyError, IndexError,
                    TypeError, ValueError) as err:  # fmt: skip
                self._error(result, "parse", f"parse: {_sample(str(err))}")
        result.seconds = time.monotonic() - start
        self.counts["requests"] += result.attempts
        self.counts["solutions"] += 1
        self.counts["failed_solutions"] += int(result.failed)
        self.counts.update("error " + error.split(":")[0] for error in result.errors)
        self.counts.update("steps " + verdict for verdict in result.verdicts)
        return result

    def _error(self, result: JudgeResult, kind: str, text: str) -> None:
        result.errors.append(text)
        self.error_samples.setdefault(kind, text)

    async def _judge_all(self, items) -> list[JudgeResult]:
        slots = asyncio.Semaphore(max(1, self.config.judge_max_concurrency))
        async with self._client() as client:
            return list(await asyncio.gather(*(self._judge(client, slots, *item) for item in items)))

    def judge(
        self, question: Question, steps: Sequence[str], step_types: Sequence[str | None] | None = None
    ) -> JudgeResult:
        """Verdicts on every step of one solution; "unknown" for all of them when every attempt failed."""
        return self.judge_many([(question, steps, step_types)])[0]

    def judge_many(
        self, items: Sequence[tuple[Question, Sequence[str], Sequence[str | None] | None]]
    ) -> list[JudgeResult]:
        """`judge` on many solutions with at most `max_concurrency` requests in flight; results in input order."""
        if not items:
            return []
        return _run(lambda: self._judge_all(items))
