"""A `Policy` on any OpenAI-compatible chat-completions server: `vllm serve`, SGLang, hosted APIs.

Semantics match `VLLMPolicy`: the question goes as chat messages (images as PNG `data:` URLs, in placeholder order),
the steps of a prefix are the start of the assistant turn (each followed by the separator) which the server continues
(`continue_final_message`, a vLLM/SGLang chat option: the rendered prompt equals `VLLMPolicy`'s text exactly),
`sample_next_steps` stops each sample at the separator (an OpenAI `stop` string), and `complete` runs to the end of
the solution. The n samples of a call are one request with `n` (hosted APIs that cap n: `max_samples_per_request`).

Scale-out: `base_urls` may list several servers (a fleet of `vllm serve` replicas behind no load balancer); requests
go round-robin over them, a failed attempt retries on the next one (`trl_vlprm.guidance.server_fleet`). At most
`max_concurrency` requests are in flight over all threads that share the policy (the policy is thread-safe), every
attempt is bounded by `request_timeout` and one call's retries by `deadline` seconds in all, so a dead fleet fails a
call instead of hanging it.

End of a step vs end of the solution: vLLM reports which stop string ended a sample (`stop_reason`, SGLang
`matched_stop`); a server that reports neither gives `finish_reason == "stop"` for both, and then a sample counts as
finished when it stated an answer (`answer_extractor` finds one). Token counts per sample come from vLLM's
`token_ids` (requested with `return_token_ids`); otherwise the request's `usage.completion_tokens` is split over its
samples (the total, hence `PolicyStats.tokens`, stays exact).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from trl_vlprm.data.schema import image_data_url
from trl_vlprm.guidance.policy import Continuation, PolicyStats, Question
from trl_vlprm.guidance.sampling import SamplingConfig, SamplingPolicy
from trl_vlprm.guidance.server_fleet import ServerFleet
from trl_vlprm.guidance.solutions import question_messages, read_answer, split_steps
from trl_vlprm.utils.http import ServerContractError, ServerUnavailableError

MISSING_OPENAI_MESSAGE = "ServerPolicy needs the `openai` client: `pip install openai` (a trl_vlprm dependency)."

# Call i samples under seed `seed + i * _SEED_STRIDE` (as `VLLMPolicy`); a request of a split call adds its first
# sample's index, so the samples of one call keep distinct seeds however the call is split.
_SEED_STRIDE = 1 << 20


def chat_messages(
    question: Question, prefix: Sequence[str], step_separator: str, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """OpenAI chat messages of a question and a prefix of steps.

    Image placeholders become `image_url` parts (data URLs, in order); a non-empty prefix becomes a final assistant
    message holding the steps, each followed by the separator, for the server to continue.

    Raises ValueError naming the question and field when images and placeholders differ in number.
    """
    qid = question.get("id", "?")
    images = list(question.get("images") or [])
    messages = question_messages(question, system_prompt)
    placeholders = sum(
        1 for m in messages if not isinstance(m["content"], str) for p in m["content"] if p.get("type") == "image"
    )
    if placeholders != len(images):
        raise ValueError(
            f"question {qid}: field 'images': {len(images)} image(s) but {placeholders} placeholder(s) in 'prompt'"
        )
    urls = iter([image_data_url(image, qid, f"images[{i}]") for i, image in enumerate(images)])
    for message in messages:
        if not isinstance(message["content"], str):
            message["content"] = [
                {"type": "image_url", "image_url": {"url": next(urls)}} if part.get("type") == "image" else part
                for part in message["content"]
            ]
    if prefix:
        messages.append({"role": "assistant", "content": "".join(step + step_separator for step in prefix)})
    return messages


@dataclass
class _Sample:
    """What the policy reads of one returned choice."""

    text: str
    finish_reason: str | None
    stop_string: str | None  # the stop string that ended the sample, when the server says so
    reported_stop: bool  # the server reports stop strings (vLLM `stop_reason`, SGLang `matched_stop`)
    tokens: int


class ServerPolicy(SamplingPolicy):
    """Policy on OpenAI-compatible servers (see the module docstring).

    Args:
        base_urls: one base URL ("http://host:8000/v1") or several; requests go round-robin over them.
        model: the served model name; default: the first model the first server lists (`/v1/models`).
        api_key: the key sent as bearer token ("EMPTY" for a local `vllm serve`).
        sampling: the sampling settings (`SamplingConfig`); `settings` (its fields as keywords) replace some.
            With `seed`, call i samples under seed `seed + i * 2**20` (vLLM gives sample j of a request seed + j);
            `top_k` and `repetition_penalty` are sent only when they filter or penalise (vLLM and SGLang read them).
        answer_extractor: `(solution_text, question) -> answer` for finished solutions.
        max_concurrency: requests in flight at most, over every thread using this policy.
        max_samples_per_request: split a call's n over requests of at most this many samples (None: one request).
        request_timeout: seconds one HTTP attempt may take.
        max_retries: attempts after the first, per request.
        deadline: seconds one request may take over all its attempts and back-offs.
        backoff: first back-off in seconds (doubled each retry, jittered).
        max_retry_wait: longest wait in seconds a server's `Retry-After` may impose (within `deadline`).
        continue_prefix: send `continue_final_message` (vLLM, SGLang) so the server continues the prefix steps;
            False for servers without it (they then answer after the prefix as a new assistant turn).
        extra_body: more request fields (e.g. `{"top_k": 20}`).
    """

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model: str | None = None,
        api_key: str = "EMPTY",
        sampling: SamplingConfig | None = None,
        answer_extractor: Callable[[str, Question], str | None] = read_answer,
        max_concurrency: int = 8,
        max_samples_per_request: int | None = None,
        request_timeout: float = 120.0,
        max_retries: int = 3,
        deadline: float = 600.0,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        continue_prefix: bool = True,
        extra_body: Mapping[str, Any] | None = None,
        **settings: Any,
    ):
        try:
            import openai
        except ImportError as err:
            raise ImportError(MISSING_OPENAI_MESSAGE) from err
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.sampling = SamplingConfig.of(sampling, "ServerPolicy", **settings)
        if max_samples_per_request is not None and max_samples_per_request < 1:
            raise ValueError("ServerPolicy: max_samples_per_request must be >= 1")
        retry_on = (openai.APIError, ValueError, KeyError, IndexError)
        self.fleet = ServerFleet(
            urls,
            max_concurrency,
            request_timeout,
            max_retries,
            deadline,
            backoff,
            retry_on,
            self.sampling.seed,
            "ServerPolicy",
            max_retry_wait,
        )
        self.base_urls = self.fleet.base_urls
        self.requests_per_server = self.fleet.requests_per_server
        # The client's own retries are off: the fleet spreads attempts over the servers and respects the deadline.
        self.clients = [
            openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=request_timeout)
            for url in self.base_urls
        ]
        self.model = model or self._first_model()
        self.answer_extractor = answer_extractor
        self.max_samples_per_request = max_samples_per_request
        self.continue_prefix = continue_prefix
        self.extra_body = dict(extra_body or {})
        self.stats = PolicyStats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="server-policy")

    def _first_model(self) -> str:
        """The first model the first server lists (`/v1/models`), the default `model`."""
        import openai

        try:
            return self.clients[0].models.list().data[0].id
        except (openai.APIError, IndexError) as err:
            raise ServerUnavailableError(
                f"ServerPolicy: cannot list the models of {self.base_urls[0]}/models ({type(err).__name__}: {err}); "
                "is the server up? (or name the model: model=<name>)"
            ) from err

    # -- Policy protocol ---------------------------------------------------------------------------------------

    def sample_next_steps(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        results = []
        for sample in self._generate(question, prefix, n, self.sampling.max_step_tokens, stop_at_separator=True):
            step = sample.text.strip()
            steps = [step] if step else []
            if sample.reported_stop:
                finished = sample.finish_reason == "stop" and sample.stop_string is None
                answer = self.answer_extractor(self._solution(prefix, steps), question) if finished else None
            else:  # the server does not say which stop ended the sample: a stated answer ends the solution
                answer = self.answer_extractor(self._solution(prefix, steps), question)
                finished = sample.finish_reason == "stop" and answer is not None
                answer = answer if finished else None
            results.append(Continuation(steps=steps, finished=finished, answer=answer, num_tokens=sample.tokens))
        self._record(results)
        return results

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        results = []
        for sample in self._generate(question, prefix, n, self.sampling.max_new_tokens, stop_at_separator=False):
            steps = split_steps(sample.text, self.sampling.step_separator)
            # The policy stopped (end of text or budget): the solution is over either way; the answer may be missing.
            answer = self.answer_extractor(self._solution(prefix, steps), question)
            results.append(Continuation(steps=steps, finished=True, answer=answer, num_tokens=sample.tokens))
        self._record(results)
        return results

    def close(self) -> None:
        """Stop the request threads and close the HTTP clients."""
        self._pool.shutdown(wait=True)
        for client in self.clients:
            client.close()

    # -- requests ----------------------------------------------------------------------------------------------

    def build_request(self, question: Question, prefix: Sequence[str], n: int, max_tokens: int, stop: bool):
        """The chat-completions request body of one call (before splitting n and seeding)."""
        greedy = self.sampling.temperature == 0
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(question, prefix, self.sampling.step_separator, self.sampling.system_prompt),
            "n": 1 if greedy else n,
            "temperature": 0.0 if greedy else self.sampling.temperature,
            "top_p": 1.0 if greedy else self.sampling.top_p,
            "max_tokens": max_tokens,
        }
        if stop:
            body["stop"] = [self.sampling.step_separator]
        extra: dict[str, Any] = {"return_token_ids": True}  # vLLM: per-sample token ids; others ignore it
        # Sent only when they act, so a hosted API that knows neither field is not refused for a no-op.
        if self.sampling.top_k and not greedy:
            extra["top_k"] = self.sampling.top_k
        if self.sampling.repetition_penalty != 1.0:
            extra["repetition_penalty"] = self.sampling.repetition_penalty
        extra.update(self.extra_body)
        if prefix and self.continue_prefix:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        body["extra_body"] = extra
        return body

    def _record(self, results: Sequence[Continuation]) -> None:
        with self._lock:
            self.stats.record(results)

    def _generate(self, question: Question, prefix: Sequence[str], n: int, max_tokens: int, stop_at_separator: bool):
        if n < 1:
            raise ValueError(f"question {question.get('id', '?')}: n={n}; must be >= 1")
        body = self.build_request(question, prefix, n, max_tokens, stop_at_separator)
        with self._lock:  # the call counter picks the seed, as in VLLMPolicy
            call_seed = None if self.sampling.seed is None else self.sampling.seed + self.stats.calls * _SEED_STRIDE
        chunk = self.max_samples_per_request or body["n"]
        requests = []
        for first in range(0, body["n"], chunk):
            request = {**body, "n": min(chunk, body["n"] - first)}
            if call_seed is not None:
                request["seed"] = call_seed + first
            requests.append(request)
        label = f"question {question.get('id', '?')}"
        if len(requests) == 1:
            samples = self._send(requests[0], label)
        else:
            samples = [s for part in self._pool.map(lambda r: self._send(r, label), requests) for s in part]
        if body["n"] < n:  # greedy: n identical samples; their tokens were generated once
            samples += [_Sample(**{**samples[0].__dict__, "tokens": 0})] * (n - body["n"])
        return samples

    def _send(self, request: dict[str, Any], label: str) -> list[_Sample]:
        def send(index: int, timeout: float) -> list[_Sample]:
            samples = _samples(self.clients[index].chat.completions.create(**request, timeout=timeout))
            if len(samples) != request["n"]:
                raise ServerContractError(
                    f"ServerPolicy: {label}: the server at {self.base_urls[index]} returned {len(samples)} choice(s) "
                    f"for n={request['n']}; it ignores `n`: set max_samples_per_request=1 (in a spec: "
                    "server:<url>,max_samples_per_request=1) so each request asks for one sample"
                )
            return samples

        return self.fleet.request(send, label)


def _samples(response) -> list[_Sample]:
    """The samples of a chat-completions response, in choice order, with per-sample token counts.

    A reply that is no chat completion (an HTML page a proxy answers with status 200) or a choice without content is
    a `ValueError`: the fleet retries it, then reports it with the reply's start.
    """
    if not hasattr(response, "choices"):
        text = " ".join(str(response).split())
        raise ValueError(f"not a chat-completions reply: {text[:200]!r}")
    choices = sorted(response.choices or [], key=lambda c: c.index)
    if not choices:
        raise ValueError("the response has no choices")
    extra = [choice.model_extra or {} for choice in choices]
    counts = [len(e["token_ids"]) if isinstance(e.get("token_ids"), list) else None for e in extra]
    if None in counts:  # no per-sample ids: split the request's total so the sum stays exact
        total = getattr(response.usage, "completion_tokens", 0) or 0
        share, rest = divmod(total, len(choices))
        counts = [share + (i < rest) for i in range(len(choices))]
    samples = []
    for choice, more, tokens in zip(choices, extra, counts):
        if choice.message is None or choice.message.content is None:
            raise ValueError(
                f"choice {choice.index} has no message content (null; finish_reason {choice.finish_reason!r}): "
                "an empty solution would be graded as a wrong one"
            )
        reported = "stop_reason" in more or "matched_stop" in more
        stop = more.get("stop_reason", more.get("matched_stop"))
        samples.append(
            _Sample(
                text=choice.message.content,
                finish_reason=choice.finish_reason,
                stop_string=stop if isinstance(stop, str) else None,
                reported_stop=reported,
                tokens=tokens,
            )
        )
    return samples
