"""Faults caused on purpose, so tests and chaos benchmarks exercise the real failure paths.

An engine given ``EngineFaults`` really fails where a real fault would strike: a request whose
id starts with ``fail_request_prefix`` raises inside its output step (the engine ends that
request alone with an internal error), the step loop raises after ``raise_after_steps`` steps
(the engine fails and ends every request), or hangs after ``stall_after_steps`` steps while it
has work (no step progress: the replica's health turns unhealthy), and ``fail_start`` makes the
engine's start raise (a replica that can never come up: a crash loop). The default is no fault.
"""

from __future__ import annotations

from dataclasses import dataclass


class InjectedFault(RuntimeError):
    """The error an injected fault raises."""


@dataclass(frozen=True)
class EngineFaults:
    fail_request_prefix: str = ""
    raise_after_steps: int | None = None
    stall_after_steps: int | None = None
    stall_s: float = 3600.0
    fail_start: bool = False

    def check_request(self, request_id: str) -> None:
        """Raise for a request chosen to fail (called in its per-request output step)."""
        if self.fail_request_prefix and request_id.startswith(self.fail_request_prefix):
            raise InjectedFault(f"injected fault in request {request_id!r}")

    def before_step(self, steps_done: int) -> float:
        """Raise once ``steps_done`` steps have run; else the seconds the loop must hang now (0: none).

        The caller hangs (``time.sleep`` in a thread, ``asyncio.sleep`` in a task), so the fault
        stalls the step loop the way a stuck device would, while the rest of the process lives on.
        """
        if self.raise_after_steps is not None and steps_done >= self.raise_after_steps:
            raise InjectedFault(f"injected engine fault after {steps_done} steps")
        if self.stall_after_steps is not None and steps_done >= self.stall_after_steps:
            return self.stall_s
        return 0.0

    def on_start(self) -> None:
        if self.fail_start:
            raise InjectedFault("injected start fault")


NO_FAULTS = EngineFaults()
