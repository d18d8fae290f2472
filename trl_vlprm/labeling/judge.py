"""A VLM judge over any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, a hosted API).

The judge sees the question with its images (inline base64 data URLs) and the steps of a solution in the format of
`JudgeConfig.judge_prompt` (`trl_vlprm.labeling.judge_prompts`: the paper's verification prompt, or by default the
following). With the default "json" prompt it must answer with one JSON object::

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
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai

from trl_vlprm.guidance.policy import Question
from trl_vlprm.labeling.judge_prompts import (
    JUDGE_PROMPTS,
    UNKNOWN,
    JudgeParseError,
)
from trl_vlprm.utils.http import retry_after_seconds


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
        judge_prompt: the prompt and answer format, a name in `trl_vlprm.labeling.judge_prompts.JUDGE_PROMPTS`:
            "json" (a JSON verdict per step) or "paper" (the paper's verification prompt and parsing rule).
        judge_batch_poll_seconds / judge_batch_completion_window / judge_batch_max_requests / judge_batch_max_bytes /
            judge_batch_max_resubmits: the batch judge (`LabelConfig.judge="batch"`,
            `trl_vlprm.labeling.batch_judge`): seconds between status polls, the Batch API's completion window,
            the API's limits per input file (50,000 requests, 200 MB), and how often a request left unanswered (a
            failed or expired batch, an error line) is submitted again before it is reported.
        judge_input_price_per_mtok / judge_output_price_per_mtok: the price in dollars per million prompt /
            completion tokens the batch judge reports costs at (default: o4-mini's Batch API price, half its list
            price of $1.10 / $4.40, as listed in 2025; state yours).
        judge_azure_endpoint / judge_azure_api_version: set the endpoint to reach an Azure OpenAI deployment (the
            client is built as `AzureOpenAI`, `judge_model` is the deployment name); None: OpenAI or a compatible
            server at `judge_base_url`.
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
    judge_prompt: str = field(
        default="json",
        metadata={
            "help": "The judge's prompt and answer format: 'json' (a JSON verdict per step) or 'paper' (the paper's "
            "verification prompt, read by its rule: the last analysis block of an Incorrect answer is the first "
            "error)."
        },
    )
    judge_batch_poll_seconds: float = field(
        default=60.0, metadata={"help": "Batch judge: seconds between two polls of a submitted batch's status."}
    )
    judge_batch_completion_window: str = field(
        default="24h", metadata={"help": "Batch judge: the completion window asked of the Batch API."}
    )
    judge_batch_max_requests: int = field(
        default=50_000, metadata={"help": "Batch judge: most requests per input file (the Batch API's limit)."}
    )
    judge_batch_max_bytes: int = field(
        default=200_000_000, metadata={"help": "Batch judge: largest input file in bytes (the Batch API's 200 MB)."}
    )
    judge_batch_max_resubmits: int = field(
        default=3,
        metadata={
            "help": "Batch judge: how often a request left unanswered (failed or expired batch, error line) is "
            "submitted again before it is reported by its custom_id."
        },
    )
    judge_input_price_per_mtok: float = field(
        default=0.55,
        metadata={"help": "Dollars per million prompt tokens the batch judge reports costs at (o4-mini batch, 2025)."},
    )
    judge_output_price_per_mtok: float = field(
        default=2.20,
        metadata={
            "help": "Dollars per million completion tokens the batch judge reports costs at (o4-mini batch, 2025)."
        },
    )
    judge_azure_endpoint: str | None = field(
        default=None,
        metadata={
            "help": "An Azure OpenAI endpoint: the client is built as AzureOpenAI and judge_model names the "
            "deployment; None reaches judge_base_url."
        },
    )
    judge_azure_api_version: str = field(
        default="2025-03-01-preview", metadata={"help": "API version of an Azure OpenAI endpoint (the paper's)."}
    )

    def __post_init__(self):
        checks = {
            "judge_timeout": self.judge_timeout > 0,
            "judge_max_retries": isinstance(self.judge_max_retries, int) and self.judge_max_retries >= 0,
            "judge_backoff": self.judge_backoff >= 0,
            "judge_max_retry_wait": self.judge_max_retry_wait >= 0,
            "judge_max_concurrency": isinstance(self.judge_max_concurrency, int) and self.judge_max_concurrency >= 1,
            "judge_batch_max_requests": self.judge_batch_max_requests >= 1,
            "judge_batch_max_bytes": self.judge_batch_max_bytes >= 1,
            "judge_batch_max_resubmits": self.judge_batch_max_resubmits >= 0,
            "judge_batch_poll_seconds": self.judge_batch_poll_seconds >= 0,
        }
        rules = {
            "judge_timeout": "> 0",
            "judge_max_retries": "an integer >= 0",
            "judge_backoff": ">= 0",
            "judge_max_retry_wait": ">= 0",
            "judge_batch_max_resubmits": ">= 0",
            "judge_batch_poll_seconds": ">= 0",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"JudgeConfig.{name}={getattr(self, name)!r}; must be {rules.get(name, 'an integer >= 1')}"
                )
        JUDGE_PROMPTS.check(self.judge_prompt, "JudgeConfig.judge_prompt")


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


RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx, as the openai client itself retries
REPLY_SAMPLE_CHARS = 300


def judge_argument(name: str, default: Any, help_text: str | None = None) -> Any:
    """A run config's field for the `JudgeConfig` setting `judge_<name>` under its own default: the same help sentence,
    unless `help_text` says what that default means."""
    declared = JudgeConfig.__dataclass_fields__[f"judge_{name}"]
    return field(default=default, metadata={"help": help_text or declared.metadata["help"]})


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
        self.prompt = JUDGE_PROMPTS.get(config.judge_prompt, "JudgeConfig.judge_prompt")
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
        answer: str | None = None,
    ) -> JudgeResult:
        step_types = list(step_types) if step_types is not None else [None] * len(steps)
        result = JudgeResult(verdicts=[UNKNOWN] * len(steps))
        if not steps:
            return result
        start = time.monotonic()
        try:
            request = self.prompt.request_body(self.config, question, steps, step_types, answer)
        except ValueError as err:  # steps the prompt's format cannot hold: nothing to ask, every step unknown
            self._error(result, "render", f"render: {err}")
            self._count(result)
            return result
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
                result.verdicts = self.prompt.parse(content, step_types)
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
            except (
                JudgeParseError,
                openai.APIResponseValidationError,
                AttributeError,
                KeyError,
                IndexError,
                TypeError,
                ValueError,
            ) as err:
                self._error(result, "parse", f"parse: {_sample(str(err))}")
        result.seconds = time.monotonic() - start
        self._count(result)
        return result

    def _count(self, result: JudgeResult) -> None:
        self.counts["requests"] += result.attempts
        self.counts["solutions"] += 1
        self.counts["failed_solutions"] += int(result.failed)
        self.counts.update("error " + error.split(":")[0] for error in result.errors)
        self.counts.update("steps " + verdict for verdict in result.verdicts)

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

    def judge_many(self, items: Sequence[tuple]) -> list[JudgeResult]:
        """`judge` on many solutions with at most `max_concurrency` requests in flight; results in input order.

        Each item is `(question, steps, step_types)` or `(question, steps, step_types, answer)`: the solution's final
        answer, which the paper's prompt shows in its `<correct_answer>` block.
        """
        if not items:
            return []
        return _run(lambda: self._judge_all(items))
