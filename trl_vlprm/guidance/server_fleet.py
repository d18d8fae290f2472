"""`ServerFleet`: requests to one or more OpenAI-compatible servers, round-robin, bounded in flight, retried.

`ServerPolicy` (chat completions) and `ServerPRMScorer` (`/pooling`) send every request through one; only the
`send(server_index, timeout)` callable differs.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from trl_vlprm.utils.http import ServerUnavailableError, retry_after_seconds

T = TypeVar("T")


def _status(err: BaseException) -> int | None:
    """The HTTP status of a failed request (openai errors, `utils.http.HTTPStatusError`), if the server answered."""
    status = getattr(err, "status_code", None)
    return status if status is not None else getattr(getattr(err, "response", None), "status_code", None)


class ServerFleet:
    """Round-robin over base URLs with at most `max_concurrency` requests in flight (over all threads), each request
    retried on the next server until it succeeds, `max_retries` retries are spent, or `deadline` seconds passed.

    `request(send, label)` calls `send(server_index, timeout)`; an exception of a type in `retry_on` is an attempt's
    failure (a 4xx answer other than 408/409/429 is final: the request itself is wrong). A reply that says how long
    to wait (`Retry-After`, `retry-after-ms`, as a 429 or 503 does) is waited for, up to `max_retry_wait` seconds and
    the deadline, instead of the backoff.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        max_concurrency: int = 8,
        request_timeout: float = 120.0,
        max_retries: int = 3,
        deadline: float = 600.0,
        backoff: float = 0.5,
        retry_on: tuple[type[BaseException], ...] = (OSError,),
        seed: int | None = None,
        name: str = "ServerFleet",
        max_retry_wait: float = 60.0,
    ):
        if not base_urls:
            raise ValueError(f"{name}: base_urls is empty")
        if max_concurrency < 1:
            raise ValueError(f"{name}: max_concurrency must be >= 1")
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.deadline = deadline
        self.backoff = backoff
        self.retry_on = retry_on
        self.name = name
        self.max_retry_wait = max_retry_wait
        self.requests_per_server = [0] * len(self.base_urls)  # attempts sent to each base URL (for load checks)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self._next_server = itertools.count()
        self._rng = random.Random(seed)

    def request(self, send: Callable[[int, float], T], label: str) -> T:
        """`send(server_index, timeout)` until it succeeds; raises RuntimeError listing every attempt's error."""
        start, errors = time.monotonic(), []
        for attempt in range(self.max_retries + 1):
            server_wait = None
            index = next(self._next_server) % len(self.base_urls)
            remaining = self.deadline - (time.monotonic() - start)
            if remaining <= 0:
                break
            try:
                with self._slots:
                    with self._lock:
                        self.requests_per_server[index] += 1
                    return send(index, min(remaining, self.request_timeout))
            except self.retry_on as err:
                status = _status(err)
                errors.append(f"{self.base_urls[index]}: {type(err).__name__}{f' {status}' if status else ''}: {err}")
                if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                    break
                headers = getattr(err, "headers", None) or getattr(getattr(err, "response", None), "headers", None)
                server_wait = retry_after_seconds(headers) if headers is not None else None
            if attempt < self.max_retries:
                pause = self.backoff * 2**attempt * (0.5 + self._rng.random())
                if server_wait is not None:  # the server said when to come back: earlier would be refused again
                    pause = min(server_wait, self.max_retry_wait)
                time.sleep(max(0.0, min(pause, self.deadline - (time.monotonic() - start))))
        raise ServerUnavailableError(
            f"{self.name}: {label}: no answer after {len(errors)} attempt(s) in {time.monotonic() - start:.1f} s "
            f"(deadline {self.deadline} s); check that the server is up at that URL: " + " | ".join(errors)
        )
