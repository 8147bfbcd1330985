"""What ``ttdist serve`` and ``ttdist launch`` print while the cluster runs: its replica events.

``ClusterConsole`` follows the coordinator's event log (``Coordinator.events_after``) from a
thread, from before the deploy until the cluster is torn down, and prints each replica failure,
restart and give-up on stderr as one line (``ttdist: replica-0 failed: start failed: ...``), so
a replica that cannot start says why as it happens instead of on the dashboard only. Once every
replica failed for good (``EventPage.none_can_start``) it records why and calls ``on_none_can_start``.

It calls Ray only while Ray is connected; the caller stops it before ``ray.shutdown``.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable, TextIO

import ray

from ttdist.runtime.replica import COORDINATOR_NAME, NAMESPACE

POLL_S = 0.5
CALL_TIMEOUT_S = 10.0
SHOWN = {   # event kind -> how the console line names it
    "replica_failed": "failed", "replica_cannot_start": "cannot start", "replica_crash_loop": "crash loop",
    "replica_restarted": "restarted", "scaled_up": "scaled up", "scaled_down": "scaled down",
    "cold_start": "cold start",
}


class ClusterConsole:
    def __init__(self, on_none_can_start: Callable[[], None] = lambda: None, out: TextIO | None = None) -> None:
        self.on_none_can_start = on_none_can_start
        self.out = out or sys.stderr
        self.none_can_start = ""   # why no replica can ever start, once the coordinator says so
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="ttdist-cluster-console", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop following (waits for a call in flight); call it before ``ray.shutdown``."""
        self._stop.set()
        self._thread.join(CALL_TIMEOUT_S + 5)

    def _follow(self) -> None:
        coordinator, seen = None, 0
        while not self._stop.wait(POLL_S):
            try:
                if coordinator is None:
                    coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
                page = ray.get(coordinator.events_after.remote(seen), timeout=CALL_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - not created yet, restarting or busy: ask again
                coordinator = None
                continue
            seen = page.last
            self._show(page.events)
            if page.none_can_start and not self.none_can_start:
                self.none_can_start = page.none_can_start
                self.on_none_can_start()

    def _show(self, events) -> None:
        for event in events:
            if event.kind in SHOWN:
                who = f"{event.replica_id} " if event.replica_id else ""
                print(f"ttdist: {who}{SHOWN[event.kind]}: {event.message}", file=self.out, flush=True)
