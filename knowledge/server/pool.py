"""The thread pool gRPC runs the server's handlers on, and the read slots heavy reads take: the same
behaviour as concurrent.futures.ThreadPoolExecutor and threading.BoundedSemaphore with less Python per call.

gRPC's sync server submits every call to its pool and only adds a done callback to what `submit` returns
(its count of calls in flight). The stock executor builds a Future (a threading.Condition, Python code to
enter and notify) and takes and gives back an idle-thread semaphore (another Condition) per call; on this
server's unary calls, which are short, that was a tenth of the Python the server ran per call. Here a
call is a small future whose state a C lock guards, and the idle count is an int under another: the
Python left per call is the call itself.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from typing import Any

_PENDING, _DONE = 0, 1


class Call:
    """A submitted call: what `HandlerPool.submit` returns (done callbacks, result, exception, done)."""

    __slots__ = ("_fn", "_args", "_kwargs", "_state", "_result", "_exception", "_callbacks", "_lock", "_event",
                 "__weakref__")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Call], Any]] = []
        self._lock = threading.Lock()
        self._event: threading.Event | None = None

    def run(self) -> None:
        try:
            self._result = self._fn(*self._args, **self._kwargs)
        except BaseException as exc:  # noqa: BLE001 - kept for result(), as a Future keeps it
            self._exception = exc
        self._fn = self._args = self._kwargs = None  # type: ignore[assignment]
        with self._lock:
            self._state = _DONE
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for callback in callbacks:
            _call_back(callback, self)

    def add_done_callback(self, callback: Callable[[Call], Any]) -> None:
        with self._lock:
            if self._state != _DONE:
                self._callbacks.append(callback)
                return
        _call_back(callback, self)

    def done(self) -> bool:
        return self._state == _DONE

    def running(self) -> bool:
        return self._state != _DONE

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        """A call once submitted runs (gRPC cancels through the call's context instead): always False."""
        return False

    def _wait(self, timeout: float | None) -> None:
        with self._lock:
            if self._state == _DONE:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise futures.TimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exception


def _call_back(callback: Callable[[Call], Any], call: Call) -> None:
    try:
        callback(call)
    except Exception:  # noqa: BLE001 - as concurrent.futures does: logged, the other callbacks still run
        futures._base.LOGGER.exception("exception calling callback for %r", call)


class HandlerPool(futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor (same arguments; threads started as calls need them, up to `max_workers`,
    each running `initializer` first) whose `submit` returns a `Call`."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "",
                 initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix, initializer=initializer,
                         initargs=initargs)
        self._idle_lock = threading.Lock()
        self._idle = 0  # threads waiting for work

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Call:  # type: ignore[override]
        if self._shutdown or self._broken:
            raise RuntimeError("cannot schedule new calls after shutdown")
        call = Call(fn, args, kwargs)
        self._work_queue.put(call)
        with self._idle_lock:
            if self._idle:
                self._idle -= 1
                return call
        with self._shutdown_lock:
            if len(self._threads) < self._max_workers:
                thread = threading.Thread(name=f"{self._thread_name_prefix or 'pool'}_{len(self._threads)}",
                                          target=_worker, args=(weakref.ref(self), self._work_queue), daemon=True)
                thread.start()
                self._threads.add(thread)
        return call

    def _worker_done(self) -> None:
        with self._idle_lock:
            self._idle += 1


def _worker(pool_ref: weakref.ref[HandlerPool], work: queue.SimpleQueue[Any]) -> None:
    pool = pool_ref()
    if pool is None:
        return
    initializer, initargs = pool._initializer, pool._initargs
    del pool
    if initializer is not None:
        try:
            initializer(*initargs)
        except Exception:  # noqa: BLE001 - the thread still serves calls (the stock pool would break instead)
            futures._base.LOGGER.exception("exception in the initializer of a handler thread")
    while True:
        call = work.get()
        if call is None:  # shutdown(): pass it on to the next thread
            work.put(None)
            return
        call.run()
        del call
        pool = pool_ref()
        if pool is None:
            return
        pool._worker_done()
        del pool


class Slots:
    """At most `count` holders at once (a bounded semaphore): `acquire(timeout)` waits at most `timeout`
    seconds (None: for ever) and says whether it got one; `release()` gives one back."""

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()  # a C queue: waits without Python code
        for _ in range(count):
            self._tokens.put(None)

    def acquire(self, timeout: float | None = None) -> bool:
        try:
            self._tokens.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        self._tokens.put(None)
