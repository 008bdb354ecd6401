"""knowledge.http_json.post_json against a real local HTTP server (http.server in a thread) that plays
scripted answers: retries on 5xx/429/408, connection failures and timeouts, Retry-After honoured and
bounded, no retry on other 4xx, the typed error after the last attempt, and unreadable answers."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from knowledge.errors import EmbedderUnavailable, ExtractionFailed, KnowledgeError, SchemaError
from knowledge.http_json import backoff_delay, post_json, retry_after_s, retryable


class Scripted:
    """A local JSON endpoint: each POST takes the next (status, body, headers, delay_s) of `script`
    (the last one repeats); records the requests' bodies and headers and when they came."""

    def __init__(self) -> None:
        self.script: list[tuple[int, bytes, dict[str, str], float]] = [(200, b'{"ok": true}', {}, 0.0)]
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    owner.requests.append({"at": time.monotonic(), "body": json.loads(body),
                                           "headers": dict(self.headers)})
                    status, payload, headers, delay = owner.script[0] if len(owner.script) == 1 else owner.script.pop(0)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timed out) and closed the connection
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/things"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Scripted()
    yield running
    running.close()


def unavailable(message: str, status: int | None) -> EmbedderUnavailable:
    error = EmbedderUnavailable(message)
    error.status = status  # type: ignore[attr-defined]
    return error


def post(server: Scripted, **options):
    options.setdefault("error", unavailable)
    options.setdefault("backoff_s", 0.0)
    options.setdefault("what", "things endpoint")
    return post_json(server.url, {"input": ["a"]}, **options)


def test_posts_json_with_headers_and_returns_the_decoded_answer(server):
    server.script = [(200, b'{"data": [1, 2]}', {}, 0.0)]
    assert post(server, headers={"Authorization": "Bearer sk-x"}) == {"data": [1, 2]}
    (request,) = server.requests
    assert request["body"] == {"input": ["a"]}
    assert request["headers"]["Authorization"] == "Bearer sk-x"
    assert request["headers"]["Content-Type"] == "application/json"


def test_retries_503_then_succeeds_counting_attempts(server):
    server.script = [(503, b'{"error": {"message": "busy"}}', {}, 0.0), (200, b'{"ok": 1}', {}, 0.0)]
    seen: list[int] = []
    assert post(server, retries=3, on_attempt=seen.append) == {"ok": 1}
    assert len(server.requests) == 2 and seen == [0, 1]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504, 529])
def test_retries_408_429_and_5xx(server, status):
    server.script = [(status, b"{}", {}, 0.0), (200, b'{"ok": 1}', {}, 0.0)]
    assert post(server, retries=1) == {"ok": 1}
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501])
def test_other_4xx_and_501_fail_at_once_with_the_servers_message(server, status):
    server.script = [(status, b'{"error": {"message": "input too long for model m"}}', {}, 0.0)]
    with pytest.raises(EmbedderUnavailable) as caught:
        post(server, retries=3)
    message = str(caught.value)
    assert len(server.requests) == 1
    assert caught.value.status == status
    assert f"things endpoint {server.url} answered HTTP {status}: input too long for model m" in message
    assert "after 1 attempt(s)" in message
    hint = {401: "API key", 403: "API key", 404: "base URL", 413: "fewer or shorter"}.get(status, "check the model")
    assert hint in message, message


def test_gives_up_after_the_last_attempt_with_the_typed_error(server):
    server.script = [(500, b"boom", {}, 0.0)]
    with pytest.raises(ExtractionFailed) as caught:
        post(server, retries=2, error=lambda message, status: ExtractionFailed(message, chunk="c1", status=status))
    assert len(server.requests) == 3
    assert (caught.value.status, caught.value.chunk) == (500, "c1")
    assert "answered HTTP 500: boom (after 3 attempt(s))" in str(caught.value)
    assert "overloaded" in str(caught.value)      # what to do about it
    assert isinstance(caught.value, KnowledgeError)


def test_retry_after_is_honoured(server):
    server.script = [(503, b"{}", {"Retry-After": "1"}, 0.0), (200, b'{"ok": 1}', {}, 0.0)]
    assert post(server, retries=1, backoff_s=0.0) == {"ok": 1}
    first, second = server.requests
    assert second["at"] - first["at"] >= 0.95


def test_retry_after_is_bounded(server):
    server.script = [(429, b"{}", {"Retry-After": "3600"}, 0.0), (200, b'{"ok": 1}', {}, 0.0)]
    started = time.monotonic()
    assert post(server, retries=1, backoff_s=0.0, retry_after_max_s=0.3) == {"ok": 1}
    first, second = server.requests
    assert second["at"] - first["at"] >= 0.25
    assert time.monotonic() - started < 30      # not the hour asked for


def test_backoff_grows_and_is_capped_and_jittered(server):
    server.script = [(503, b"{}", {}, 0.0)] * 3 + [(200, b'{"ok": 1}', {}, 0.0)]
    assert post(server, retries=3, backoff_s=0.1, backoff_max_s=0.2) == {"ok": 1}
    at = [r["at"] for r in server.requests]
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.1   # 0.1, 0.2, capped 0.2; jitter keeps >= half
    draws = [backoff_delay(3, 1.0, 30.0) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in draws) and len(set(draws)) > 100
    assert all(5.0 <= backoff_delay(10, 1.0, 10.0) <= 10.0 for _ in range(50))
    assert backoff_delay(1, 0.0) == 0.0


def test_timeout_is_retried_then_reported(server):
    server.script = [(200, b'{"ok": 1}', {}, 1.5)]
    started = time.monotonic()
    with pytest.raises(EmbedderUnavailable) as caught:
        post(server, retries=1, timeout_s=0.3)
    assert time.monotonic() - started < 1.4           # two 0.3 s waits, not the server's 1.5 s
    assert len(server.requests) == 2 and caught.value.status is None
    assert f"{server.url} did not answer within 0.3s (after 2 attempt(s)); raise timeout_s" in str(caught.value)


def test_a_slow_answer_within_the_timeout_is_fine(server):
    server.script = [(200, b'{"ok": 1}', {}, 0.3)]
    assert post(server, timeout_s=5) == {"ok": 1}


def test_unreachable_endpoint_is_retried_then_reported():
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}/v1/things"
    closed.server_close()
    seen: list[int] = []
    with pytest.raises(EmbedderUnavailable) as caught:
        post_json(url, {}, error=unavailable, what="things endpoint", retries=2, backoff_s=0.0, on_attempt=seen.append)
    assert seen == [0, 1, 2] and caught.value.status is None
    message = str(caught.value)
    assert f"cannot reach things endpoint {url} (connection failed:" in message
    assert "after 3 attempt(s)" in message and "host and port" in message


def test_status_is_the_last_http_status_seen(server):
    server.script = [(503, b"{}", {}, 0.0), (200, b'{"ok": 1}', {}, 1.0)]
    with pytest.raises(EmbedderUnavailable) as caught:
        post(server, retries=1, timeout_s=0.3)
    assert caught.value.status == 503 and "did not answer" in str(caught.value)


def test_invalid_json_is_not_retried_unless_asked(server):
    server.script = [(200, b"<html>proxy</html>", {}, 0.0)]
    with pytest.raises(EmbedderUnavailable, match="answered with invalid JSON") as caught:
        post(server, retries=3)
    assert len(server.requests) == 1 and "OpenAI-compatible" in str(caught.value)
    server.script = [(200, b"not json", {}, 0.0), (200, b'{"ok": 1}', {}, 0.0)]
    assert post(server, retries=3, retry_unreadable=True) == {"ok": 1}
    assert len(server.requests) == 3


def test_read_rejections_are_retried_when_asked_and_typed_errors_pass_through(server):
    server.script = [(200, b'{"answer": "garbage"}', {}, 0.0), (200, b'{"answer": 42}', {}, 0.0)]

    def read(answer):
        return int(answer["answer"])              # ValueError for "garbage"

    assert post(server, retries=2, read=read, retry_unreadable=True) == 42
    assert len(server.requests) == 2
    server.script = [(200, b'{"answer": "garbage"}', {}, 0.0)]
    with pytest.raises(EmbedderUnavailable, match=r"not the requested JSON \(ValueError") as caught:
        post(server, retries=2, read=read, retry_unreadable=True)
    assert "after 3 attempt(s)" in str(caught.value) and len(server.requests) == 5
    with pytest.raises(EmbedderUnavailable, match="after 1 attempt"):
        post(server, retries=2, read=read)        # not asked: no retry
    assert len(server.requests) == 6

    def strict(answer):
        raise SchemaError("the caller's own check")

    with pytest.raises(SchemaError, match="the caller's own check"):
        post(server, retries=2, read=strict, retry_unreadable=True)
    assert len(server.requests) == 7              # raised as is, not retried


def test_retry_after_values_and_statuses():
    assert retry_after_s("2") == 2.0 and retry_after_s(" 1.5 ") == 1.5 and retry_after_s("-3") == 0.0
    assert retry_after_s(None) is None and retry_after_s("") is None and retry_after_s("soon") is None
    now = time.time()
    assert retry_after_s(formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120, abs=1)
    assert retry_after_s(formatdate(now - 120, usegmt=True), now=now) == 0.0
    assert [s for s in (400, 401, 404, 408, 409, 425, 429, 500, 501, 503, 505, 529) if retryable(s)] == \
        [408, 429, 500, 503, 529]


def test_bad_options_are_refused(server):
    for options in ({"retries": -1}, {"timeout_s": 0}, {"backoff_s": -1.0}, {"retry_after_max_s": -1.0}):
        with pytest.raises(ValueError):
            post(server, **options)
    assert server.requests == []
