"""A Ray worker's nice level, set from inside the worker.

Ray starts a worker process ``RAY_worker_niceness`` (15 by default) nice levels below its raylet.
A replica that asked for another level through its actor's ``runtime_env`` got it, but a
``runtime_env`` of its own makes Ray start a fresh worker through its runtime-env agent and
``setup_worker`` (a second interpreter start) rather than hand it a pre-started one: that was
most of a scripted replica's cold start. So a replica takes Ray's plain worker and sets its
own level (``set_level``): ``levels`` below its raylet (the worker's parent), on every thread
(on Linux a nice level is per thread; threads started later inherit their creator's).
Lowering a level (raising the priority) needs ``CAP_SYS_NICE`` (or ``RLIMIT_NICE``):
``can_reach`` tells the coordinator beforehand, from a thread of its own process (a Ray worker
of the same node and user), whether a worker can; where it cannot, the coordinator gives the
replicas the ``runtime_env`` as before.
"""

from __future__ import annotations

import os
import threading


def raylet_level() -> int:
    """The nice level of this worker's raylet (its parent process): Ray's own level."""
    return os.getpriority(os.PRIO_PROCESS, os.getppid())


def set_level(levels: int) -> tuple[bool, int]:
    """Every thread of this process to ``levels`` below its raylet; (done, the level it is at)."""
    wanted = raylet_level() + levels
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), wanted)
            except ProcessLookupError:
                pass   # a thread that ended meanwhile
    except PermissionError:
        return False, os.getpriority(os.PRIO_PROCESS, 0)
    return True, wanted


def can_reach(levels: int) -> bool:
    """Whether a worker of this node may set itself ``levels`` below its raylet (probed on a
    short-lived thread of this process: no other thread's level changes)."""
    result: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, raylet_level() + levels)
            result.append(True)
        except PermissionError:
            result.append(False)

    thread = threading.Thread(target=probe, name="nice-probe")
    thread.start()
    thread.join()
    return result[0]
