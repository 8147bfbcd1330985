"""Polling to a deadline: the one loop tests use to wait for a condition."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Callable, TypeVar, Union

T = TypeVar("T")
Message = Union[str, Callable[[], str]]


class _Deadline:
    def __init__(self, timeout: float, message: Message):
        self.timeout, self.message = timeout, message
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        """Fail once the deadline has passed."""
        if time.monotonic() >= self.at:
            described = self.message() if callable(self.message) else self.message
            raise AssertionError(f"timed out after {self.timeout} s waiting for {described}")


def wait_for(predicate: Callable[[], T], timeout: float, message: Message, every: float = 0.1) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something true and return that;
    past ``timeout`` seconds fail with ``message`` (a string, or a callable read at the timeout
    so it can show the last state)."""
    deadline = _Deadline(timeout, message)
    while not (value := predicate()):
        deadline.check()
        time.sleep(every)
    return value


async def wait_for_async(predicate: Callable[[], T], timeout: float, message: Message, every: float = 0.05) -> T:
    """``wait_for`` inside an event loop: sleeps with ``asyncio.sleep`` so the loop keeps running;
    ``predicate`` may be a coroutine function (its result is awaited)."""
    deadline = _Deadline(timeout, message)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await asyncio.sleep(every)
