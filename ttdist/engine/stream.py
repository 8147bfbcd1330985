"""One request's outputs, handed from a producer thread to the asyncio task that reads them.

A producer (the engine's step thread, or the thread that reads an engine process's outputs)
``put``s outputs; the reader ``await``s ``get``, which returns every output waiting, merged into
one. Inside ``wake_together()`` the streams filled are woken once the block ends, with one
callback per event loop instead of one per token, so every reader of one engine step runs in the
same loop turn (each turn a loop waits for the GIL behind a busy thread costs ~1 ms).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable

from ttdist.engine.request import RequestOutput

_wakeups = threading.local()


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


def _wake_readers(loop: asyncio.AbstractEventLoop, events: list[asyncio.Event]) -> None:
    try:
        loop.call_soon_threadsafe(_set_all, events)
    except RuntimeError:
        pass   # the consumer's loop is closed; nobody is left to read


@contextlib.contextmanager
def wake_together():
    """Readers of the streams filled in this block (on this thread) wake together when it ends."""
    _wakeups.pending = pending = {}
    try:
        yield
    finally:
        _wakeups.pending = None
        for loop, events in pending.items():
            _wake_readers(loop, events)


class OutputStream:
    """Outputs of one request: filled by a producer thread, read by one asyncio task."""

    def __init__(self) -> None:
        self._items: collections.deque[RequestOutput] = collections.deque()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    def put(self, out: RequestOutput) -> None:
        with self._lock:
            self._items.append(out)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``: ``get`` raises it once the outputs before it are read."""
        with self._lock:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            loop, ready = self._loop, self._ready
        if loop is None or ready is None:
            return
        pending = getattr(_wakeups, "pending", None)
        if pending is None:
            _wake_readers(loop, [ready])
        else:
            pending.setdefault(loop, []).append(ready)

    async def get(self) -> RequestOutput:
        """Every output waiting, merged into one (``RequestOutput.merge``); waits for the next
        when none is: the first token is never held back, a reader behind catches up at once."""
        with self._lock:
            if self._ready is None:
                self._loop, self._ready = asyncio.get_running_loop(), asyncio.Event()
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return RequestOutput.merge(items)
                if self._error is not None:
                    raise self._error
                self._ready.clear()
            await self._ready.wait()

    async def follow(self, on_leave: Callable[[], None]) -> AsyncIterator[RequestOutput]:
        """Every output until one has ``finished`` set; ``on_leave()`` when the reader leaves
        before that (break, an exception, cancellation): the engine aborts the request then."""
        finished = False
        try:
            while not finished:
                out = await self.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                on_leave()
