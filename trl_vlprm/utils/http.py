"""What every HTTP client of the project (the judge, `ServerPolicy`) reads the same way from a server's reply."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping


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
