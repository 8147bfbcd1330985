"""An executor whose tasks run only when a test says so (``run_all``): races made deterministic."""

from __future__ import annotations

from concurrent.futures import Future


class ManualExecutor:
    def __init__(self) -> None:
        self.queue: list[tuple[Future, object, tuple]] = []
        self.auto = False    # set: every task runs as it is submitted

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self.queue.append((future, fn, args))
        if self.auto:
            self.run_all()
        return future

    def run_all(self) -> int:
        """Run every queued task not cancelled; how many ran."""
        ran = 0
        queue, self.queue = self.queue, []
        for future, fn, args in queue:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the future's reader
                future.set_exception(exc)
            ran += 1
        return ran

    def shutdown(self, wait: bool = True) -> None:
        self.run_all()
