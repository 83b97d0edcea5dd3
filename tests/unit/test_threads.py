"""The daemon-thread executor that runs blocking source calls: reused threads, and a stuck
call that never holds up another."""

from __future__ import annotations

import os
import threading

import pytest

from shovel._threads import DaemonThreads

WAIT_S = 10.0


def test_calls_run_on_reused_daemon_threads() -> None:
    executor = DaemonThreads()
    first = executor.submit(threading.current_thread).result(WAIT_S)
    again = [executor.submit(threading.current_thread).result(WAIT_S) for _ in range(20)]
    assert first.daemon
    assert first.name == "shovel-io"
    # One call at a time: every call found the first thread idle.
    assert {t.ident for t in again} == {first.ident}


def test_a_stuck_call_does_not_hold_up_the_next() -> None:
    executor = DaemonThreads()
    release = threading.Event()
    stuck = executor.submit(release.wait, WAIT_S)
    try:
        assert executor.submit(os.getpid).result(WAIT_S) == os.getpid()
        assert not stuck.done()
    finally:
        release.set()
    assert stuck.result(WAIT_S) is True


def test_an_exception_reaches_the_caller() -> None:
    executor = DaemonThreads()
    with pytest.raises(ZeroDivisionError):
        executor.submit(divmod, 1, 0).result(WAIT_S)
    # The thread survived it and serves the next call.
    assert executor.submit(sum, [1, 2]).result(WAIT_S) == 3


def test_a_forked_child_starts_threads_of_its_own() -> None:
    executor = DaemonThreads()
    executor.submit(os.getpid).result(WAIT_S)  # leaves one idle thread in this process
    pid = os.fork()
    if pid == 0:  # the child: the idle thread was not inherited, so a new one must serve
        code = 1
        try:
            code = 0 if executor.submit(os.getpid).result(WAIT_S) == os.getpid() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
