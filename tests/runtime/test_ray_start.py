"""Starting a local Ray: a raylet that misses Ray's fixed 30 s registration window (a loaded host)
gets the start tried again, with the stalled attempt's processes killed by PID."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import ray

from tests.support.waiting import wait_for
from ttdist.router.deploy import connect
from ttdist.runtime.procs import alive, argv, descendants

pytestmark = pytest.mark.slow


def _raylets() -> list[int]:
    return [pid for pid in descendants() if alive(pid) and argv(pid)[:1] and argv(pid)[0].endswith(b"/raylet")]


def test_a_raylet_that_misses_registration_gets_a_second_start():
    assert not ray.is_initialized()
    stalled: list[int] = []

    def stall_the_first_raylet() -> None:
        pid = wait_for(lambda: next(iter(_raylets()), None), 60, "a raylet", every=0.005)
        os.kill(pid, signal.SIGSTOP)   # alive but silent: it never registers with the GCS
        stalled.append(pid)

    watcher = threading.Thread(target=stall_the_first_raylet, daemon=True)
    watcher.start()
    try:
        assert connect(None) is True
        watcher.join(timeout=5)
        assert len(stalled) == 1, "the first raylet was never seen"
        assert not alive(stalled[0])   # the stalled attempt's raylet was killed
        raylets = _raylets()
        assert len(raylets) == 1 and raylets[0] != stalled[0]
        assert [n["Alive"] for n in ray.nodes()] == [True]
        assert ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60) == 42
    finally:
        ray.shutdown()
