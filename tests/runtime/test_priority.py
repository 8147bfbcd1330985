"""A worker's nice level set from inside it (``runtime/priority.py``), in child processes of
the test (so the test's own level never changes): every thread, relative to the parent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SET_LEVEL = """
import os, threading, time
from ttdist.runtime import priority
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in threads:
    t.start()
done, level = priority.set_level(4)
later = []
t = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
t.start(); t.join()
levels = {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")}
stop.set()
print(done, level, ",".join(map(str, sorted(levels))), later[0], os.getpriority(os.PRIO_PROCESS, os.getppid()))
"""

PROBE = """
import os, sys
from ttdist.runtime import priority
os.nice(5)                       # as Ray's worker: 5 levels below its parent
if sys.argv[1:] == ["unprivileged"]:
    os.setresuid(65534, 65534, 65534)   # nobody: no CAP_SYS_NICE any more
before = os.nice(0)
print(priority.can_reach(5), priority.can_reach(0), before == os.nice(0))
"""


def child(code: str, *args: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_set_level_moves_every_thread_and_the_threads_started_later():
    done, level, levels, later, parent = child(SET_LEVEL)
    want = int(parent) + 4
    assert done == "True" and int(level) == want
    assert levels == str(want) and int(later) == want


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the probe as root and as an unprivileged user")
def test_can_reach_says_whether_a_worker_may_raise_its_priority_and_changes_nothing():
    # root may go back to its parent's level; nobody may only stay or go further down
    assert child(PROBE) == ["True", "True", "True"]
    assert child(PROBE, "unprivileged") == ["True", "False", "True"]
