"""The router's one long-lived stream to one replica, multiplexing every request it sends there.

A ``ReplicaLink`` opens ``Replica.ReplicaStream`` on the replica's channel once and keeps it:
each request is an ``OpenRequest`` with a key unique on the link; the replica answers with one
``ReplicaStreamBatch`` per engine step holding that step's entries (new ids and text, a
``Complete`` or an error) for every request of this router that produced output. So a decode
step of 32 users costs the router one message read instead of 32.

``generate`` returns a ``SubStream`` that behaves, for the router, as the per-request
``Generate`` call it replaces: iterating it yields entries (``WhichOneof("kind")`` is
``"chunk"`` or ``"complete"``); a failure raises the ``grpc.aio.AioRpcError`` the call would
have raised (the replica's own status code for a refused or failed request, UNAVAILABLE or
the transport's code for every request on a link that breaks, DEADLINE_EXCEEDED when its
timeout passes), and ``died_with`` says how many streams the failure took at once: the
requests open on a link that broke after it was up (a replica that died), the
``streams_failed`` the replica gave when its engine failed as a whole, 0 for an error of this
request alone or a replica that could not be reached; ``cancel()`` makes iteration raise ``asyncio.CancelledError`` and tells the
replica to drop the request (its pages are freed), as cancelling a call does. A broken link is
never reused: the next request opens a new one on the same channel.
"""

from __future__ import annotations

import asyncio
import collections
import itertools

import grpc

from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import replica_pb2 as rpb
from ttdist.v1 import replica_pb2_grpc as rpb_grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class SubStream:
    """One request's entries on a link, in order; the link fills it, one router task reads it."""

    def __init__(self, link: "ReplicaLink", key: int, timeout: float | None) -> None:
        self._link = link
        self.key = key
        self._items: collections.deque[rpb.StreamEntry] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._ended = self._cancelled = False
        self.died_with = 0     # streams the failure that ended this one took at once (0: its own)
        loop = asyncio.get_running_loop()
        self._timer = None if timeout is None else loop.call_later(timeout, self._expire)

    def done(self) -> bool:
        return self._ended or self._cancelled or self._error is not None

    def cancel(self) -> bool:
        """Stop reading and drop the request on the replica; False once it had ended."""
        if self.done():
            return False
        self._link.drop(self.key, tell_replica=True)
        self._cancelled = True
        self._close()
        self._wake()
        return True

    def __aiter__(self) -> "SubStream":
        return self

    async def __anext__(self) -> rpb.StreamEntry:
        while True:
            if self._cancelled:
                raise asyncio.CancelledError()
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take_ready_chunks(self) -> list[pb.Chunk]:
        """The chunks queued right behind the one just read (up to a ``Complete``): a reader
        that fell behind sends them on as one message, never waiting for more."""
        chunks = []
        while self._items and self._items[0].WhichOneof("kind") == "chunk" and not self._cancelled:
            chunks.append(self._items.popleft().chunk)
        return chunks

    # -- filled by the link --------------------------------------------------------------------
    def push(self, entry: rpb.StreamEntry) -> None:
        kind = entry.WhichOneof("kind")
        if kind == "error":
            self.fail(rpc_error(_CODES.get(entry.error.code, grpc.StatusCode.UNKNOWN), entry.error.message),
                      died_with=entry.error.streams_failed)
            return
        self._items.append(entry)
        if kind == "complete":
            self._ended = True
            self._close()
        self._wake()

    def fail(self, error: grpc.aio.AioRpcError, died_with: int = 0) -> None:
        if self.done():
            return
        self._error = error
        self.died_with = died_with
        self._close()
        self._wake()

    def _expire(self) -> None:
        self._timer = None
        if not self.done():
            self._link.drop(self.key, tell_replica=True)
            self.fail(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._link.drop(self.key, tell_replica=False)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class ReplicaLink:
    """The stream to one replica; ``broken`` once it failed (then open a new link)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._outgoing: asyncio.Queue[rpb.ReplicaStreamRequest | None] = asyncio.Queue()
        self._subs: dict[int, SubStream] = {}
        self._keys = itertools.count(1)
        self.broken = False
        self.up = False        # the replica answered: a break now is the replica going away
        self.batches_received = self.entries_received = 0
        self._call = rpb_grpc.ReplicaStub(channel).ReplicaStream(self._requests())
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def generate(self, request: pb.GenerateRequest, timeout: float | None = None) -> SubStream:
        """Open ``request`` on the replica; its entries arrive on the returned ``SubStream``."""
        key = next(self._keys)
        sub = SubStream(self, key, timeout)
        if self.broken:
            sub.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, "the stream to the replica is closed"))
            return sub
        self._subs[key] = sub
        self._outgoing.put_nowait(rpb.ReplicaStreamRequest(open=rpb.OpenRequest(key=key, request=request)))
        return sub

    def drop(self, key: int, tell_replica: bool) -> None:
        if self._subs.pop(key, None) is not None and tell_replica and not self.broken:
            self._outgoing.put_nowait(rpb.ReplicaStreamRequest(cancel=key))

    @property
    def open_requests(self) -> int:
        return len(self._subs)

    async def close(self) -> None:
        self._break(rpc_error(grpc.StatusCode.UNAVAILABLE, "the router closed its stream to the replica"))
        self._call.cancel()
        self._reader.cancel()

    async def _requests(self):
        while (msg := await self._outgoing.get()) is not None:
            yield msg

    async def _read(self) -> None:
        try:
            await self._call.initial_metadata()
            self.up = True
            async for batch in self._call:
                self.batches_received += 1
                self.entries_received += len(batch.entries)
                for entry in batch.entries:
                    sub = self._subs.get(entry.key)
                    if sub is not None:
                        sub.push(entry)
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the replica ended its stream")
        except grpc.aio.AioRpcError as err:
            error = err
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the router closed its stream to the replica")
        self._break(error)

    def _break(self, error: grpc.aio.AioRpcError) -> None:
        if self.broken:
            return
        self.broken = True
        self._outgoing.put_nowait(None)
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            sub.fail(error, died_with=len(subs) if self.up else 0)
