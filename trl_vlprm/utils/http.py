"""What every HTTP client of the project (the judge, `ServerPolicy`, `ServerPRMScorer`) reads the same way from a
server's reply, and `request_json`, the JSON transport of the clients that do not speak through the openai package."""

from __future__ import annotations

import email.utils
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429/503 reply asks to wait (`retry-after-ms`, `retry-after` in seconds or as an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ServerUnavailableError(RuntimeError):
    """A server gave no usable answer to any attempt (down, unreachable, or every reply bad) within the retries."""


class ServerContractError(RuntimeError):
    """The server answered, but not what the OpenAI contract promises (fewer choices than `n`): asking again would
    get the same, so it is not retried."""


class HTTPStatusError(OSError):
    """A reply with an error status, carrying what a retry policy reads: `status_code` and the reply's `headers`."""

    def __init__(self, url: str, status_code: int, headers: Mapping[str, str], body: str) -> None:
        super().__init__(f"{url} answered {status_code}: {reply_start(body)!r}")
        self.status_code = status_code
        self.headers = headers


def reply_start(text: str, limit: int = 200) -> str:
    """The start of a reply's body on one line, for an error message."""
    return " ".join(text.split())[:limit]


def request_json(url: str, body: Any = None, headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> Any:
    """GET `url` (no `body`) or POST `body` to it as JSON, and return the reply's JSON.

    The standard library's client: the openai package brings its own HTTP library, which differs between its
    releases, so a client outside it depends on none.

    Raises:
        HTTPStatusError: the server answered with an error status.
        OSError: no answer (refused, unreachable, timed out).
        ValueError: a success status with a body that is not JSON (an HTML page a proxy answers with), naming the
            URL and showing the body's start.
    """
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers={**sent, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        raise HTTPStatusError(url, err.code, err.headers, err.read().decode("utf-8", errors="replace")) from None
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{url} answered {status} with a body that is not JSON: {reply_start(text)!r}") from None
