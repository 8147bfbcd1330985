"""The blocking client: ``Client`` and the ``GenerationStream`` it returns.

    with Client("127.0.0.1:50051") as client:
        print(client.generate("The capital of France is", max_tokens=16).text)
        for chunk in client.stream("Once upon a time", max_tokens=64):
            print(chunk.text, end="", flush=True)

Stopping early (``break``, ``close()``, leaving a ``with`` block, garbage collection)
cancels the gRPC call, which the server sees and turns into an abort of the request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Unpack

import grpc
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


class GenerationStream(StreamBase):
    """The chunks of one generation as they arrive; ``completion`` once it has finished.

    Iterate it, or call ``final()`` to wait for the ``Completion``. Usable as a context
    manager: leaving the block before the end cancels the request on the server.
    """

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> Chunk:
        while not self._done:
            call = self._call if self._call is not None else self._start_call()
            try:
                resp = next(call)
            except StopIteration:
                self._done = True
                break
            except grpc.RpcError as e:
                err = from_rpc_error(e, request_id=self.request_id)
            else:
                chunk = self._state.on_response(resp)
                if chunk is not None:
                    return chunk
                continue
            time.sleep(self._retry_delay(err))
        self._end()
        raise StopIteration

    def final(self) -> Completion:
        """Read the rest of the stream and return the Completion."""
        for _ in self:
            pass
        return self._final()

    def close(self) -> None:
        """Stop reading; an unfinished request is cancelled on the server. Idempotent."""
        self._cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc) -> None:
        self._cancel()


class Client(ClientBase):
    """Blocking client for a ttdist router (or any server of the ttdist.v1 Generation service).

    ``token`` is sent as ``authorization: Bearer <token>``; ``tls`` is True (system roots) or a
    ``TLSConfig``; ``timeout`` is the default deadline per call in seconds (None = none);
    ``retry`` sets the backoff for UNAVAILABLE before the first token.
    """

    stream_type = GenerationStream

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None,
                 tls: bool | TLSConfig | None = None, timeout: float | None = None,
                 retry: RetryPolicy | None = None):
        super().__init__(target, token=token, tls=tls, timeout=timeout, retry=retry)
        options = self.config.channel_options()
        if self.config.tls is None:
            self._channel = grpc.insecure_channel(self.config.target, options=options)
        else:
            self._channel = grpc.secure_channel(self.config.target, self.config.tls.credentials(), options=options)
        self._stub = GenerationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _open(self) -> tuple[GenerationStub, health_pb2_grpc.HealthStub]:
        return self._stub, self._health

    def generate(self, prompt: str | Sequence[int] | None = None, **options: Unpack[GenerateOptions]) -> Completion:
        """Generate and wait for the whole result (see ``GenerateOptions`` for the keywords)."""
        return self._generation(prompt, options, stream=False).final()

    def stream(self, prompt: str | Sequence[int] | None = None,
               **options: Unpack[GenerateOptions]) -> GenerationStream:
        """Generate, yielding Chunks as tokens arrive; ``.completion`` holds the final result."""
        return self._generation(prompt, options, stream=True)

    def chat(self, messages: Sequence[dict], **options) -> Completion:
        """The assistant's reply to ``messages`` (``[{"role": "user", "content": "..."}]``); the
        router renders them with the model's chat template. Keywords as ``generate``, plus
        ``add_generation_prompt`` (default True)."""
        return self._chat(messages, options, stream=False).final()

    def stream_chat(self, messages: Sequence[dict], **options) -> GenerationStream:
        """``chat``, yielding Chunks as tokens arrive."""
        return self._chat(messages, options, stream=True)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], *, concurrency: int = 8,
                       return_exceptions: bool = False,
                       **options: Unpack[GenerateOptions]) -> list[Completion | TtdistError]:
        """Generate for every prompt, at most ``concurrency`` at a time; results in prompt order.

        With ``return_exceptions`` a failed prompt gives its exception in its place; otherwise
        the first failure is raised and prompts not yet started are skipped.
        """
        items = check_batch(prompts, concurrency, options)
        if not items:
            return []
        pool = ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="ttdist-batch")
        futures = [pool.submit(self.generate, p, **options) for p in items]
        results: list[Completion | TtdistError] = []
        try:
            for f in futures:
                try:
                    results.append(f.result())
                except TtdistError as e:
                    if not return_exceptions:
                        raise
                    results.append(e)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def abort(self, request_id: str, *, timeout=USE_CLIENT_TIMEOUT) -> bool:
        """Abort a request by id; True when it was running. Idempotent."""
        resp = self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout)
        return resp.found

    def models(self, *, timeout=USE_CLIENT_TIMEOUT) -> list[ModelInfo]:
        resp = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in resp.models]

    def cluster_status(self, *, timeout=USE_CLIENT_TIMEOUT) -> ClusterStatus:
        return ClusterStatus.from_proto(self._unary(self._stub.GetClusterStatus, pb.ClusterStatusRequest(), timeout))

    def health(self, service: str = "", *, timeout=USE_CLIENT_TIMEOUT) -> str:
        """The server's grpc.health.v1 status: SERVING, NOT_SERVING, UNKNOWN, ..."""
        resp = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server reports SERVING; DeadlineExceeded after ``timeout`` seconds."""
        wait = ReadyWait(self.config, timeout)
        while (left := wait.remaining()) is not None:
            try:
                wait.last = self.health(timeout=left)
                if wait.last == "SERVING":
                    return
            except (Unavailable, DeadlineExceeded) as e:
                wait.last = e.message
            time.sleep(wait.pause())
        raise wait.expired()

    def _unary(self, rpc, request, timeout):
        attempts = self._attempts(timeout)
        while True:
            try:
                return rpc(request, timeout=attempts.start(), metadata=self.config.metadata())
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            time.sleep(attempts.retry_delay(err))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
