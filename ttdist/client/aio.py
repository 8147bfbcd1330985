"""The asyncio client: ``AsyncClient`` and the ``AsyncGenerationStream`` it returns.

    async with AsyncClient("127.0.0.1:50051") as client:
        done = await client.generate("The capital of France is", max_tokens=16)
        async for chunk in client.stream("Once upon a time", max_tokens=64):
            print(chunk.text, end="", flush=True)

The same surface as ``Client``. Cancelling the task that awaits a call, breaking out of
``async for`` (then ``aclose()`` or garbage collection) or leaving ``async with`` cancels
the gRPC call, which the server sees and turns into an abort of the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Unpack

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ttdist.client.calls import (
    USE_CLIENT_TIMEOUT,
    ClientBase,
    GenerateOptions,
    ReadyWait,
    StreamBase,
    check_batch,
)
from ttdist.client.errors import DeadlineExceeded, TtdistError, Unavailable, from_rpc_error
from ttdist.client.options import DEFAULT_TARGET, RetryPolicy, TLSConfig
from ttdist.client.types import Chunk, ClusterStatus, Completion, ModelInfo
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1.generation_pb2_grpc import GenerationStub


class AsyncGenerationStream(StreamBase):
    """The chunks of one generation as they arrive (``async for``); ``completion`` at the end."""

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> Chunk:
        try:
            return await self._next()
        except asyncio.CancelledError:
            self._cancel()
            raise

    async def _next(self) -> Chunk:
        while not self._done:
            call = self._call if self._call is not None else self._start_call()
            try:
                resp = await call.read()
            except grpc.RpcError as e:
                err = from_rpc_error(e, request_id=self.request_id)
            else:
                if resp is grpc.aio.EOF:
                    self._done = True
                    break
                chunk = self._state.on_response(resp)
                if chunk is not None:
                    return chunk
                continue
            await asyncio.sleep(self._retry_delay(err))
        self._end()
        raise StopAsyncIteration

    async def final(self) -> Completion:
        """Read the rest of the stream and return the Completion."""
        async for _ in self:
            pass
        return self._final()

    async def aclose(self) -> None:
        """Stop reading; an unfinished request is cancelled on the server. Idempotent."""
        self._cancel()

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc) -> None:
        self._cancel()


class AsyncClient(ClientBase):
    """asyncio client with the same surface as ``Client`` (every call is ``await``-ed)."""

    stream_type = AsyncGenerationStream

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None,
                 tls: bool | TLSConfig | None = None, timeout: float | None = None,
                 retry: RetryPolicy | None = None):
        super().__init__(target, token=token, tls=tls, timeout=timeout, retry=retry)
        if self.config.tls is not None:
            self.config.tls.credentials()  # bad TLS files fail here, not on first call
        self._channel: grpc.aio.Channel | None = None
        self._stubs: tuple[GenerationStub, health_pb2_grpc.HealthStub] | None = None

    def _stub(self) -> GenerationStub:
        return self._open()[0]

    def _open(self) -> tuple[GenerationStub, health_pb2_grpc.HealthStub]:
        """The channel is made on first use, inside the running event loop."""
        if self._stubs is None:
            options = self.config.channel_options()
            if self.config.tls is None:
                self._channel = grpc.aio.insecure_channel(self.config.target, options=options)
            else:
                self._channel = grpc.aio.secure_channel(self.config.target, self.config.tls.credentials(),
                                                        options=options)
            self._stubs = (GenerationStub(self._channel), health_pb2_grpc.HealthStub(self._channel))
        return self._stubs

    async def generate(self, prompt: str | Sequence[int] | None = None,
                       **options: Unpack[GenerateOptions]) -> Completion:
        """Generate and wait for the whole result (see ``GenerateOptions`` for the keywords)."""
        return await self._generation(prompt, options, stream=False).final()

    def stream(self, prompt: str | Sequence[int] | None = None,
               **options: Unpack[GenerateOptions]) -> AsyncGenerationStream:
        """Generate, yielding Chunks as tokens arrive (``async for``); ``.completion`` at the end."""
        return self._generation(prompt, options, stream=True)

    async def chat(self, messages: Sequence[dict], **options) -> Completion:
        """The assistant's reply to ``messages``, rendered by the router with the model's chat
        template (see ``Client.chat``)."""
        return await self._chat(messages, options, stream=False).final()

    def stream_chat(self, messages: Sequence[dict], **options) -> AsyncGenerationStream:
        """``chat``, yielding Chunks as tokens arrive (``async for``)."""
        return self._chat(messages, options, stream=True)

    async def generate_batch(self, prompts: Sequence[str | Sequence[int]], *, concurrency: int = 8,
                             return_exceptions: bool = False,
                             **options: Unpack[GenerateOptions]) -> list[Completion | TtdistError]:
        """Generate for every prompt, at most ``concurrency`` at a time; results in prompt order.

        With ``return_exceptions`` a failed prompt gives its exception in its place; otherwise
        the first failure is raised and the other prompts are cancelled.
        """
        items = check_batch(prompts, concurrency, options)
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt) -> Completion | TtdistError:
            async with gate:
                try:
                    return await self.generate(prompt, **options)
                except TtdistError as e:
                    if return_exceptions:
                        return e
                    raise

        tasks = [asyncio.ensure_future(one(p)) for p in items]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()

    async def abort(self, request_id: str, *, timeout=USE_CLIENT_TIMEOUT) -> bool:
        """Abort a request by id; True when it was running. Idempotent."""
        resp = await self._unary(self._stub().Abort, pb.AbortRequest(request_id=request_id), timeout)
        return resp.found

    async def models(self, *, timeout=USE_CLIENT_TIMEOUT) -> list[ModelInfo]:
        resp = await self._unary(self._stub().ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in resp.models]

    async def cluster_status(self, *, timeout=USE_CLIENT_TIMEOUT) -> ClusterStatus:
        resp = await self._unary(self._stub().GetClusterStatus, pb.ClusterStatusRequest(), timeout)
        return ClusterStatus.from_proto(resp)

    async def health(self, service: str = "", *, timeout=USE_CLIENT_TIMEOUT) -> str:
        """The server's grpc.health.v1 status: SERVING, NOT_SERVING, UNKNOWN, ..."""
        resp = await self._unary(self._open()[1].Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server reports SERVING; DeadlineExceeded after ``timeout`` seconds."""
        wait = ReadyWait(self.config, timeout)
        while (left := wait.remaining()) is not None:
            try:
                wait.last = await self.health(timeout=left)
                if wait.last == "SERVING":
                    return
            except (Unavailable, DeadlineExceeded) as e:
                wait.last = e.message
            await asyncio.sleep(wait.pause())
        raise wait.expired()

    async def _unary(self, rpc, request, timeout):
        attempts = self._attempts(timeout)
        while True:
            try:
                return await rpc(request, timeout=attempts.start(), metadata=self.config.metadata())
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            await asyncio.sleep(attempts.retry_delay(err))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stubs = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
