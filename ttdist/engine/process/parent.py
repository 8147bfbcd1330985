"""``EngineProcess``: the parent's side of an engine whose step loop runs in a child process.

Two threads of the parent talk to the child on the data channel: a writer sends the commands
(``generate``, ``abort``, ``shutdown`` only queue them, so no caller ever blocks on a child that
is busy or stuck) and a reader hands each step's outputs to their requests' streams. Control
calls (stats, prefix hashes, faults) are request and reply on the control channel, made by one
thread of the parent's own, so a caller on an event loop awaits them and never waits on the
socket itself, even when the child does not answer for ``CONTROL_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Callable

from ttdist.engine.core import EngineCore
from ttdist.engine.errors import EngineError, EngineStoppedError, InvalidRequestError
from ttdist.engine.faults import EngineFaults
from ttdist.engine.process.wire import (
    AbortRequest, AddRequest, ControlCall, ControlOp, ControlReply, EngineBuild, ErrorKind, EventKind, LivenessCell, Ready,
    Rejected, Shutdown, StartFailed, Startup, StepOutputs, Stopped,
)
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput
from ttdist.engine.runner import RunnerInfo
from ttdist.engine.stats import EngineLiveness, EngineStats
from ttdist.engine.stream import OutputStream, wake_together
from ttdist.engine.tokenizer import Tokenizer
from ttdist.errors import PermanentError

CONTROL_TIMEOUT_S = 10.0   # a control call the child does not answer in this long fails
CHILD_MODULE = "ttdist.engine.process"   # its __main__ runs the child
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


class EngineStartError(EngineError):
    """The engine process could not build or start its engine; the message says why."""


class EngineCannotStartError(EngineStartError, PermanentError):
    """The engine's build failed with a ``PermanentError`` in the child: starting again cannot help."""


class EngineProcess:
    """An engine whose step loop runs in a child process (see ``ttdist.engine.process``).

    ``build(*args)`` runs in the child and returns the ``EngineCore``; ``measure_memory(core)``,
    when given, runs there too and its result is ``memory()`` here (a replica's DRAM ledger).
    ``tokenizer`` is the parent's own copy, for callers that tokenize before they submit.
    """

    def __init__(
        self, build: Callable[..., EngineCore], args: tuple = (), *,
        measure_memory: Callable[[EngineCore], Any] | None = None,
        tokenizer: Tokenizer | None = None, start_timeout_s: float = 1800.0,
    ) -> None:
        self._engine_build = EngineBuild(build, args, measure_memory)
        self.tokenizer = tokenizer
        self.start_timeout_s = start_timeout_s
        self.info: RunnerInfo | None = None
        self._memory: Any = None
        self._proc: subprocess.Popen | None = None
        self._data: Connection | None = None
        self._ctl: Connection | None = None
        self._live: LivenessCell | None = None
        self._lock = threading.Lock()          # guards _streams and _stopped_reason
        self._streams: dict[str, OutputStream] = {}
        self._stopped_reason: str | None = "not started"
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()   # pickled commands for the child, None: stop
        self._control = ThreadPoolExecutor(1, thread_name_prefix="ttdist-engine-control")
        self._ctl_seq = 0
        self._last_stats: EngineStats | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle --------------------------------------------------------------------------
    async def launch(self) -> None:
        await asyncio.to_thread(self.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def start(self) -> None:
        """Start the child and wait until its engine is built (blocking: ``launch`` on an event loop).

        Raises EngineStartError with the child's own error when it cannot build or start."""
        if self._proc is not None:
            return
        data, data_child = socket.socketpair()
        ctl, ctl_child = socket.socketpair()
        live_fd = os.memfd_create("ttdist-engine-liveness")
        os.ftruncate(live_fd, LivenessCell.SIZE)
        fds = (data_child.fileno(), ctl_child.fileno(), live_fd)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, *map(str, fds)], pass_fds=fds, env=env)
            self._live = LivenessCell(live_fd)
        finally:
            data_child.close()
            ctl_child.close()
            os.close(live_fd)
        self._data, self._ctl = Connection(data.detach()), Connection(ctl.detach())
        try:
            # the path first, so the child imports ``build`` as this process does
            self._data.send(Startup(list(sys.path), pickle.dumps(self._engine_build)))
            ready = self._wait_ready()
        except BaseException:
            self._kill()
            raise
        self.info, self._memory = ready.info, ready.memory
        with self._lock:
            self._stopped_reason = None
        threading.Thread(target=self._read, name="ttdist-engine-outputs", daemon=True).start()
        threading.Thread(target=self._write, name="ttdist-engine-inputs", daemon=True).start()

    def _wait_ready(self) -> Ready:
        deadline = time.monotonic() + self.start_timeout_s
        while not self._data.poll(0.2):
            code = self._proc.poll()
            if code is not None:
                raise EngineStartError(f"the engine process exited with code {code} before it was ready")
            if time.monotonic() > deadline:
                raise EngineStartError(f"the engine process was not ready in {self.start_timeout_s:.0f} s")
        try:
            msg: Ready | StartFailed = self._data.recv()
        except (EOFError, OSError):
            raise EngineStartError(f"the engine process exited with code {self._proc.wait()} before it was ready") from None
        if msg.kind is EventKind.START_FAILED:
            error = EngineCannotStartError if msg.error.kind is ErrorKind.PERMANENT else EngineStartError
            raise error(f"the engine process could not start its engine: {msg.error.message}")
        return msg

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """End every request with ABORT now, then wait up to ``timeout_s`` for the child to exit
        (it is killed after that). Blocking: ``stop`` on an event loop. Calling it again is harmless."""
        with self._lock:
            if self._stopped_reason is None:
                self._stopped_reason = "engine shut down"
            reason = self._stopped_reason
        if self._proc is None:
            return
        self._outbox.put(ForkingPickler.dumps(Shutdown(reason)))
        self._outbox.put(None)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
        self._end_streams(reason)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def liveness(self) -> EngineLiveness:
        with self._lock:
            reason = self._stopped_reason
        if self._live is None:
            return EngineLiveness(False, False, 0.0, 0, reason or "the engine process is not running")
        progress = self._live.read()
        code = self._proc.poll()
        alive = code is None and reason is None
        error = "" if alive else reason or f"the engine process exited with code {code}"
        return EngineLiveness(alive, progress.has_work, time.monotonic() - progress.at_s, progress.steps, error)

    def memory(self) -> Any:
        """What ``measure_memory`` found in the child (None without it)."""
        return self._memory

    # -- requests ---------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Queue ``request`` and iterate its outputs until one has ``finished`` set.

        A stopped engine or a request id already in flight raises here; the engine's own checks
        (InvalidRequestError, OverloadedError) raise from the first iteration. Leaving the loop
        early aborts the request, as with ``AsyncEngine.generate``."""
        rid = request.request_id
        if not isinstance(rid, str):
            raise InvalidRequestError("request_id", f"must be a string, got {type(rid).__name__}")
        try:   # pickled here, so a request that cannot cross fails at the call, not in the writer
            message = ForkingPickler.dumps(AddRequest(request, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - whatever pickling raised: this request only
            raise InvalidRequestError("request", f"cannot be sent to the engine process: {type(exc).__name__}: {exc}") from None
        stream = OutputStream()
        with self._lock:
            if self._stopped_reason is not None:
                raise EngineStoppedError(f"the engine is not running ({self._stopped_reason})")
            if rid in self._streams:
                raise InvalidRequestError("request_id", f"{rid!r} is already in flight")
            self._streams[rid] = stream
        self._outbox.put(message)
        return stream.follow(lambda: self._left(rid, stream))

    def _left(self, rid: str, stream: OutputStream) -> None:
        """The reader of ``rid`` left before its end: abort it in the child (if still this stream's)."""
        with self._lock:
            mine = self._streams.get(rid) is stream
            if mine:
                del self._streams[rid]
        if mine:
            self._outbox.put(ForkingPickler.dumps(AbortRequest(rid)))

    def abort(self, request_id: str) -> bool:
        """End a request now (its pages are freed in the child before its next step); False when
        it is not in flight here. Its stream ends with ABORT."""
        with self._lock:
            found = request_id in self._streams
        if found:
            self._outbox.put(ForkingPickler.dumps(AbortRequest(request_id)))
        return found

    # -- control calls ----------------------------------------------------------------------
    async def read_stats(self) -> EngineStats:
        """The child's ``EngineStats``; the last ones it gave once it cannot answer."""
        return await self._on_control_thread(self._stats)

    async def read_prefix_hashes(self) -> list[int]:
        return await self._on_control_thread(self._hashes, ControlOp.PREFIX_HASHES)

    async def read_tier_hashes(self) -> list[int]:
        return await self._on_control_thread(self._hashes, ControlOp.TIER_HASHES)

    async def inject_faults(self, faults: EngineFaults) -> None:
        """Cause ``faults`` in the child's engine from now on (tests)."""
        await self._on_control_thread(self._call, ControlOp.INJECT, faults)

    async def _on_control_thread(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    def _stats(self) -> EngineStats:
        try:
            self._last_stats = self._call(ControlOp.STATS)
        except EngineStoppedError:
            if self._last_stats is None:
                raise
        return self._last_stats

    def _hashes(self, op: ControlOp) -> list[int]:
        try:
            return self._call(op)
        except EngineStoppedError:
            return []

    def _call(self, op: ControlOp, arg: Any = None) -> Any:
        """One control call (on the control thread only: calls never interleave)."""
        if self._ctl is None:
            raise EngineStoppedError("the engine process is not running")
        self._ctl_seq += 1
        seq = self._ctl_seq
        try:
            self._ctl.send(ControlCall(seq, op, arg))
            deadline = time.monotonic() + CONTROL_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._ctl.poll(left):
                    raise EngineStoppedError(f"the engine process did not answer {op.value!r} in {CONTROL_TIMEOUT_S:.0f} s")
                reply: ControlReply = self._ctl.recv()
                if reply.seq == seq:
                    break
        except (EOFError, OSError) as exc:
            raise EngineStoppedError(f"the engine process is gone ({type(exc).__name__})") from None
        if reply.error is not None:
            raise RuntimeError(f"the engine process failed on {op.value!r}: {reply.error.message}")
        return reply.value

    # -- the parent's two threads -----------------------------------------------------------
    def _write(self) -> None:
        while (msg := self._outbox.get()) is not None:
            try:
                self._data.send_bytes(msg)
            except OSError:
                return   # the child is gone: the reader ends the streams

    def _read(self) -> None:
        handle = {EventKind.OUTPUTS: self._dispatch, EventKind.REJECTED: self._reject, EventKind.STOPPED: self._stopped}
        try:
            while True:
                event: StepOutputs | Rejected | Stopped = self._data.recv()
                handle[event.kind](event)
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - an output this side cannot read: no stream may hang on it
            traceback.print_exc()
            self._kill()
        code = self._proc.wait()
        self._end_streams(f"the engine process exited with code {code}")

    def _dispatch(self, event: StepOutputs) -> None:
        with wake_together():   # one step's readers wake in one loop turn
            for out in event.outputs:
                with self._lock:
                    stream = self._streams.pop(out.request_id, None) if out.finished else self._streams.get(out.request_id)
                if stream is not None:
                    stream.put(out)

    def _reject(self, event: Rejected) -> None:
        with self._lock:
            stream = self._streams.pop(event.request_id, None)
        if stream is not None:
            stream.fail(event.error.to_exception())

    def _stopped(self, event: Stopped) -> None:
        with self._lock:
            self._stopped_reason = self._stopped_reason or event.reason

    def _end_streams(self, reason: str) -> None:
        """The child is gone: end every request still open here with ABORT and ``reason``."""
        with self._lock:
            self._stopped_reason = self._stopped_reason or reason
            reason = self._stopped_reason
            streams, self._streams = self._streams, {}
        with wake_together():
            for rid, stream in streams.items():
                stream.put(RequestOutput(rid, [], "", True, FinishReason.ABORT, error=reason))
