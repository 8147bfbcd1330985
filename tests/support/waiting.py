"""Polling to a deadline: the one loop tests use to wait for a condition."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar, Union

T = TypeVar("T")
Message = Union[str, Callable[[], str]]


def _describe(message: Message) -> str:
    return message() if callable(message) else message


def wait_for(predicate: Callable[[], T], timeout: float, message: Message, every: float = 0.1) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something true and return that;
    past ``timeout`` seconds fail with ``message`` (a string, or a callable read at the timeout
    so it can show the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {_describe(message)}")
        time.sleep(every)


async def wait_for_async(predicate: Callable[[], T], timeout: float, message: Message, every: float = 0.05) -> T:
    """``wait_for`` inside an event loop: sleeps with ``asyncio.sleep`` so the loop keeps running."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {_describe(message)}")
        await asyncio.sleep(every)
