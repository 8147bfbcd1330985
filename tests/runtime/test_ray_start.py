"""Starting a local Ray: a raylet that misses Ray's fixed 30 s registration window (a loaded host)
gets the start tried once more, with the stalled attempt's processes killed by PID."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import ray

from ttdist.router.deploy import _child_pids, connect

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    """Running (a killed child stays a zombie until its parent reaps it: that is not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _raylets() -> list[int]:
    found = []
    for pid in _child_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"/raylet") and _alive(pid):
            found.append(pid)
    return found


def test_a_raylet_that_misses_registration_gets_a_second_start():
    assert not ray.is_initialized()
    stalled: list[int] = []

    def stall_the_first_raylet() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for pid in _raylets():
                os.kill(pid, signal.SIGSTOP)   # alive but silent: it never registers with the GCS
                stalled.append(pid)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=stall_the_first_raylet, daemon=True)
    watcher.start()
    try:
        assert connect(None) is True
        watcher.join(timeout=5)
        assert len(stalled) == 1, "the first raylet was never seen"
        assert not _alive(stalled[0])   # the stalled attempt's raylet was killed
        raylets = _raylets()
        assert len(raylets) == 1 and raylets[0] != stalled[0]
        assert [n["Alive"] for n in ray.nodes()] == [True]
        assert ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60) == 42
    finally:
        ray.shutdown()
