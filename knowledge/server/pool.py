"""The thread pool gRPC runs the server's handlers on, and the read slots heavy reads take: the same
behaviour as concurrent.futures.ThreadPoolExecutor and threading.BoundedSemaphore with less Python per call.

gRPC's sync server submits every call to its pool and only adds a done callback to what `submit` returns
(its count of calls in flight). The stock executor builds a Future (a threading.Condition, Python code to
enter and notify) and takes and gives back an idle-thread semaphore (another Condition) per call; on this
server's unary calls, which are short, that was a tenth of the Python the server ran per call. Here a
call is a small future whose state a C lock guards, and the idle count is an int under another: the
Python left per call is the call itself.

Reads run on their own small pools (`lanes`, `ServerConfig.read_workers` threads each: one for light reads,
one for heavy ones), not on the server's big pool: 8 concurrent searches on 8 threads spend the one
interpreter lock handing it between them (and gRPC's polling thread); queued behind 4 threads, the same
searches wait without Python, and the server spends less CPU per call (bench/server.py). A call that waits
for something outside the server (read-your-writes on a lagging replica) marks the wait with `blocking()`,
so its pool may run one more thread meanwhile and the reads queued behind it do not wait with it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

_PENDING, _DONE = 0, 1
_local = threading.local()  # .pool: a weak reference to the HandlerPool whose thread this is


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
        self._start_thread()
        return call

    def _start_thread(self) -> None:
        with self._shutdown_lock:
            if len(self._threads) < self._max_workers and not self._shutdown:
                # as the stock pool's: once the pool is collected (or shut down) its idle threads end
                ref = weakref.ref(self, lambda _, work=self._work_queue: work.put(None))
                thread = threading.Thread(name=f"{self._thread_name_prefix or 'pool'}_{len(self._threads)}",
                                          target=_worker, args=(ref, self._work_queue), daemon=True)
                thread.start()
                self._threads.add(thread)

    def _worker_done(self) -> bool:
        """After a call: False if this thread is one more than the pool now allows (it ends), else counted idle."""
        with self._shutdown_lock:
            if len(self._threads) > self._max_workers:
                self._threads.discard(threading.current_thread())
                return False
        with self._idle_lock:
            self._idle += 1
        return True

    @contextlib.contextmanager
    def _blocking(self) -> Iterator[None]:
        with self._shutdown_lock:
            self._max_workers += 1
        with self._idle_lock:
            idle = self._idle
        if not idle and not self._work_queue.empty():
            self._start_thread()  # a call queued behind this one runs now
        try:
            yield
        finally:
            with self._shutdown_lock:
                self._max_workers -= 1


def blocking() -> contextlib.AbstractContextManager[None]:
    """Around a wait of unknown length inside a pool's call: the pool may run one more thread meanwhile (a
    no-op outside a HandlerPool thread)."""
    ref = getattr(_local, "pool", None)
    pool = ref() if ref is not None else None
    return pool._blocking() if pool is not None else contextlib.nullcontext()


def _worker(pool_ref: weakref.ref[HandlerPool], work: queue.SimpleQueue[Any]) -> None:
    pool = pool_ref()
    if pool is None:
        return
    initializer, initargs = pool._initializer, pool._initargs
    del pool
    _local.pool = pool_ref
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
        if pool is None or not pool._worker_done():
            return
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
