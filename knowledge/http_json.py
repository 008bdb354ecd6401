"""`post_json`: one JSON POST to an HTTP endpoint (OpenAI-compatible APIs: embeddings, chat completions),
retried the one way the package retries HTTP.

    answer = post_json(url, {"model": "m", "input": ["a"]}, headers={"Authorization": "Bearer ..."},
                       error=lambda message, status: EmbedderUnavailable(message), what="embeddings endpoint")

What is retried (up to `retries` times after the first attempt, `retries + 1` attempts in all):
- a connection that cannot be made or drops, and a request with no answer within `timeout_s`;
- HTTP 408 and 429, and every 5xx except 501 and 505 (the server says it will never do it);
- when `retry_unreadable`: an answer that is not JSON, or that `read` rejects (raises ValueError, KeyError,
  IndexError, TypeError or AttributeError), e.g. a model that did not answer the JSON asked for.
Every other 4xx fails at once. The wait before retry n (n = 1, 2, ...) is `backoff_s * 2**(n-1)`, capped at
`backoff_max_s`, with jitter (a uniform draw from its upper half, so clients that failed together do not
retry together); a Retry-After header (seconds or an HTTP date) raises the wait to what it asks, bounded by
`retry_after_max_s`.

Failures raise `error(message, status)`: the caller's typed error from knowledge.errors, given a message
that names the URL, what went wrong, the attempts made and what to fix, and the last HTTP status seen (None
when no answer came). A KnowledgeError that `read` raises (the caller's own check of the answer) passes
through unchanged and is not retried.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from knowledge.errors import KnowledgeError

T = TypeVar("T")
ErrorFactory = Callable[[str, int | None], Exception]
"""Builds the caller's typed error from (message, last HTTP status or None)."""

RETRIES = 3
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0
RETRY_STATUSES = frozenset({408, 429})
"""4xx statuses retried; every 5xx is retried too, except NEVER_RETRY_5XX."""
NEVER_RETRY_5XX = frozenset({501, 505})
DETAIL_CHARS = 300
UNREADABLE = (ValueError, KeyError, IndexError, TypeError, AttributeError)
"""What `read` raises for an answer that is not what was asked (json.JSONDecodeError is a ValueError)."""


def retryable(status: int) -> bool:
    """Whether an HTTP status is worth another attempt: 408, 429, and 5xx other than 501 and 505."""
    return status in RETRY_STATUSES or (500 <= status <= 599 and status not in NEVER_RETRY_5XX)


def backoff_delay(retry: int, backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait before retry number `retry` (1 for the first): backoff_s * 2**(retry-1), capped at
    backoff_max_s, drawn uniformly from the upper half of that (jitter)."""
    ceiling = min(backoff_max_s, backoff_s * 2 ** (retry - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header value asks for (delta-seconds or an HTTP date), None when absent or
    unreadable; a date in the past asks for 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def error_detail(error: urllib.error.HTTPError) -> str:
    """What an error answer says: its JSON `error.message` (or `error`, or the whole JSON), else its text,
    else the reason phrase."""
    try:
        raw = error.read() or b""
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        payload = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:DETAIL_CHARS] if text else str(error.reason)
    message = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(message, dict):
        message = message.get("message", message)
    return str(message)[:DETAIL_CHARS]


def _hint(status: int) -> str:
    if status in (401, 403):
        return "check that the API key is set (its environment variable) and valid for this endpoint"
    if status in (404, 405):
        return "check the base URL (the API root, e.g. http://host:port/v1) and the model name"
    if status == 413:
        return "the request is too large: send fewer or shorter inputs per request"
    if retryable(status):
        return ("the endpoint is overloaded or failing: try again later, lower the request rate or allow more "
                "retries")
    return "the endpoint refused the request: check the model name and the request's parameters"


def _is_timeout(error: BaseException) -> bool:
    reason = getattr(error, "reason", None)
    return isinstance(error, TimeoutError) or isinstance(reason, TimeoutError)


def post_json(url: str, payload: Any, *, error: ErrorFactory, headers: Mapping[str, str] | None = None,
              what: str = "endpoint", timeout_s: float = 60.0, retries: int = RETRIES,
              backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S,
              retry_after_max_s: float = RETRY_AFTER_MAX_S, read: Callable[[Any], T] | None = None,
              retry_unreadable: bool = False, on_attempt: Callable[[int], None] | None = None) -> T:
    """POST `payload` as JSON to `url` and return `read(answer)` (the decoded JSON answer when `read` is
    None), retrying as the module docstring says; `what` names the endpoint in messages ("embeddings
    endpoint"), `on_attempt(n)` is called before attempt n (0 first), e.g. to count requests. Raises
    `error(message, status)` when the attempts are spent or the failure is not worth another."""
    if retries < 0 or timeout_s <= 0 or backoff_s < 0 or backoff_max_s < 0 or retry_after_max_s < 0:
        raise ValueError("retries >= 0, timeout_s > 0 and backoff_s, backoff_max_s, retry_after_max_s >= 0 "
                         "are required")
    data = json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    status: int | None = None
    for attempt in range(retries + 1):
        if on_attempt is not None:
            on_attempt(attempt)
        attempts = f"after {attempt + 1} attempt(s)"
        asked: float | None = None  # what a Retry-After header asked for
        request = urllib.request.Request(url, data=data, headers=sent, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
                raw = response.read()
        except urllib.error.HTTPError as e:
            try:
                status = e.code
                message = f"{what} {url} answered HTTP {e.code}: {error_detail(e)} ({attempts}); {_hint(e.code)}"
                asked = retry_after_s(e.headers.get("Retry-After") if e.headers else None)
            finally:
                e.close()  # the error holds the connection's socket
            if not retryable(e.code) or attempt == retries:
                raise error(message, status) from e
        except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timed out, cut short
            if _is_timeout(e):
                message = (f"{what} {url} did not answer within {timeout_s:g}s ({attempts}); raise timeout_s, "
                           f"or check that the server is up and not overloaded")
            else:
                reason = getattr(e, "reason", None) or e
                message = (f"cannot reach {what} {url} (connection failed: {reason}) ({attempts}); check that "
                           f"the server is running and that the URL's host and port are right")
            if attempt == retries:
                raise error(message, status) from e
        else:
            try:
                answer = json.loads(raw)
            except ValueError as e:
                message = (f"{what} {url} answered with invalid JSON ({e}) ({attempts}); check that the URL is "
                           f"an OpenAI-compatible API and not a web page or a proxy's error page")
                if not retry_unreadable or attempt == retries:
                    raise error(message, status) from e
            else:
                if read is None:
                    return answer  # type: ignore[no-any-return]
                try:
                    return read(answer)
                except KnowledgeError:
                    raise
                except UNREADABLE as e:
                    message = (f"{what} {url} answered something that is not the requested JSON "
                               f"({type(e).__name__}: {e}) ({attempts}); check that the model and endpoint "
                               f"produce the answer asked for")
                    if not retry_unreadable or attempt == retries:
                        raise error(message, status) from e
        wait = backoff_delay(attempt + 1, backoff_s, backoff_max_s)
        if asked is not None:
            wait = max(wait, min(asked, retry_after_max_s))
        time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises


__all__ = ["BACKOFF_MAX_S", "BACKOFF_S", "RETRIES", "RETRY_AFTER_MAX_S", "ErrorFactory", "backoff_delay",
           "error_detail", "post_json", "retry_after_s", "retryable"]
