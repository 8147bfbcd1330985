"""The replica's async engine: a worker thread steps ``EngineCore``; asyncio code streams outputs.

The step loop runs in its own thread so an asyncio server in the same process stays responsive
while the model computes. Each request's outputs reach its consumer through a stream that the
worker feeds with ``loop.call_soon_threadsafe``. ``generate`` aborts its request (freeing its
pages) when the consumer stops iterating or is cancelled. If the model raises, every request
ends with ``FinishReason.ABORT`` and the error text, and the engine refuses new work.
``liveness()`` tells whether the step loop is alive and when it last made progress, so a
replica can report a dead or stuck loop instead of a constant "ready". It is a
``ServingEngine``; its own ``start``, ``shutdown`` and ``stats`` serve callers off an event loop.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Callable

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import EngineStoppedError
from ttdist.engine.faults import EngineFaults
from ttdist.engine.page_pool import block_hashes
from ttdist.engine.request import GenerationRequest, RequestOutput
from ttdist.engine.runner import ModelRunner, RunnerInfo
from ttdist.engine.sequence import Sequence
from ttdist.engine.serving import InProcessEngine
from ttdist.engine.stats import EngineLiveness, EngineStats
from ttdist.engine.stream import OutputStream, wake_together
from ttdist.engine.tokenizer import Tokenizer

__all__ = ["AsyncEngine", "EngineConfig", "EngineStats", "block_hashes"]

_UNCLAIMED_LIMIT = 1024   # streams of submitted requests nobody asked for, kept for late readers
# The worker thread and the process's event loop (streams, new requests) share the GIL; CPython
# hands it over every 5 ms by default, so each loop turn that waits on a busy step can add up to
# 5 ms to TTFT and inter-token gaps. 1 ms keeps the loop's turns short at a small cost in switches.
GIL_SWITCH_INTERVAL_S = 0.001


class AsyncEngine(InProcessEngine):
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer | None, config: EngineConfig | None = None) -> None:
        self._init(EngineCore(runner, tokenizer, config or EngineConfig()), None)

    def _init(self, core: EngineCore, measure_memory: Callable[[EngineCore], Any] | None) -> None:
        self.core = core
        self._measure_memory = measure_memory
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped_reason: str | None = "not started"
        self._unclaimed: collections.OrderedDict[str, tuple[OutputStream, Sequence]] = collections.OrderedDict()
        self._progress_s = time.monotonic()    # the loop last finished a step or found no work
        self._steps = 0

    @classmethod
    def around(cls, core: EngineCore, measure_memory: Callable[[EngineCore], Any] | None = None) -> "AsyncEngine":
        """An engine stepping ``core`` (built elsewhere, e.g. by a replica's ``build_core``);
        ``measure_memory(core)`` is its ``memory()`` report (a replica's DRAM ledger)."""
        engine = cls.__new__(cls)
        engine._init(core, measure_memory)
        return engine

    @property
    def info(self) -> RunnerInfo:
        return self.core.runner.info

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.core.tokenizer

    def memory(self) -> Any:
        return self._measure_memory(self.core) if self._measure_memory is not None else None

    # -- lifecycle --------------------------------------------------------------------------
    async def launch(self) -> None:
        self.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.shutdown)   # waits for the step in flight

    def start(self) -> None:
        self.core.faults.on_start()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        with self._wake:
            if self._thread is not None:
                return
            self._progress_s = time.monotonic()
            self._stopped_reason = None
            self._thread = threading.Thread(target=self._run, name="ttdist-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """End every request with ABORT now, then wait up to ``timeout_s`` for the step loop.

        A step already on the model finishes in the background; its tokens are dropped.
        Calling it again is harmless.
        """
        with self._wake:
            self._stopping = True
            if self._stopped_reason is None:
                self._stopped_reason = "engine shut down"
            self._wake.notify_all()
            thread = self._thread
        self.core.abort_all(error=self._stopped_reason)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self.core.close()

    def inject(self, faults: EngineFaults) -> None:
        """Cause ``faults`` from now on (tests)."""
        self.core.faults = faults

    def liveness(self) -> EngineLiveness:
        with self._wake:
            thread, reason = self._thread, self._stopped_reason
        alive = thread is not None and thread.is_alive() and reason is None
        return EngineLiveness(
            alive=alive, has_work=self.core.has_work(), last_step_age_s=time.monotonic() - self._progress_s,
            steps_total=self._steps, error="" if alive else (reason or "the step loop is not running"),
        )

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.core.has_work():
                    self._wake.wait()
                if self._stopping:
                    return
                self._progress_s = time.monotonic()   # the age below is the current step's
            with wake_together():   # the step's readers wake in one loop turn once it ends
                try:
                    self.core.step()
                    self._steps += 1
                    self._progress_s = time.monotonic()
                except Exception as exc:  # the model failed: end every request, refuse new ones
                    with self._wake:
                        self._stopping = True
                        self._stopped_reason = f"engine failed: {type(exc).__name__}: {exc}"
                    self.core.abort_all(error=self._stopped_reason)
                    return

    # -- requests ---------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        """Validate and queue ``request``; read its outputs with ``outputs(request_id)``.

        Raises InvalidRequestError, OverloadedError, or EngineStoppedError.
        """
        self._unclaimed[request.request_id] = self._submit(request)
        while len(self._unclaimed) > _UNCLAIMED_LIMIT:
            self._unclaimed.popitem(last=False)

    def outputs(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """The outputs of a request queued with ``submit`` (once; aborts it if left early)."""
        submitted = self._unclaimed.pop(request_id, None)
        if submitted is None:
            raise KeyError(f"no submitted request {request_id!r} is waiting to be read")
        stream, seq = submitted
        return stream.follow(lambda: self.core.abort_sequence(seq))

    def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Queue ``request`` now and iterate its outputs until one has ``finished`` set.

        Use as ``async for out in engine.generate(request)``. Validation errors raise here, at
        the call. Leaving the loop early (break, an exception, cancellation) aborts the request
        once the iterator is closed: at once under ``contextlib.aclosing``, else when collected.
        """
        stream, seq = self._submit(request)
        return stream.follow(lambda: self.core.abort_sequence(seq))

    def abort(self, request_id: str) -> bool:
        """End a request now and free its pages; False when it is not in flight (idempotent)."""
        return self.core.abort(request_id)

    def stats(self) -> EngineStats:
        return self.core.stats()

    def prefix_hashes(self) -> list[int]:
        return self.core.prefix_hashes()

    def tier_hashes(self) -> list[int]:
        return self.core.tier_hashes()

    def _submit(self, request: GenerationRequest) -> tuple[OutputStream, Sequence]:
        with self._wake:
            if self._stopped_reason is not None:
                raise EngineStoppedError(f"the engine is not running ({self._stopped_reason})")
            stream = OutputStream()
            seq = self.core.add_request(request, sink=stream.put)
            self._wake.notify()
            return stream, seq

