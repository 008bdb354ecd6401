"""The background index worker: jobs run off the lock, install under it, newest queued job wins, stop works."""

from __future__ import annotations

import threading

from knowledge.index.indexer import IndexBuilder


class Recorder:
    def __init__(self, value, gate=None, fits=True, fail=False):
        self.value, self.gate, self.fits, self.fail = value, gate, fits, fail
        self.ran = self.installed = False
        self.held_lock_while_running = None

    def run(self, stop):
        self.ran = True
        if self.fail:
            raise RuntimeError("build failed")
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if stop.is_set():
                    return None
        return self.value

    def install(self, result):
        self.installed = self.fits
        return self.fits


def test_jobs_run_then_install_under_the_lock():
    lock = threading.RLock()
    builder = IndexBuilder(lock)
    job = Recorder(1)
    original_install = job.install

    def install(result):
        assert lock._is_owned()  # install runs under the store's state lock
        return original_install(result)

    job.install = install
    builder.submit("a", job)
    assert builder.wait_idle(5)
    assert job.ran and job.installed and builder.installed == 1
    builder.close()


def test_a_newer_job_replaces_one_still_queued():
    builder = IndexBuilder(threading.RLock())
    gate = threading.Event()
    blocker, old, new = Recorder(0, gate), Recorder(1), Recorder(2)
    builder.submit("busy", blocker)
    while not blocker.ran:
        threading.Event().wait(0.001)
    builder.submit("a", old)
    builder.submit("a", new)
    gate.set()
    assert builder.wait_idle(5)
    assert not old.ran and new.installed
    builder.close()


def test_a_result_that_no_longer_fits_is_dropped_and_a_failure_is_counted():
    builder = IndexBuilder(threading.RLock())
    stale, broken = Recorder(1, fits=False), Recorder(1, fail=True)
    builder.submit("a", stale)
    builder.submit("b", broken)
    assert builder.wait_idle(5)
    assert builder.installed == 0 and builder.failures == 1
    builder.close()


def test_close_stops_a_running_job_without_installing():
    builder = IndexBuilder(threading.RLock())
    job = Recorder(1, gate=threading.Event())
    builder.submit("a", job)
    while not job.ran:
        threading.Event().wait(0.001)
    builder.close(timeout_s=5)
    assert not job.installed and builder.pending() == 0
    builder.submit("b", Recorder(2))  # ignored after close
    assert builder.pending() == 0
