"""The engine's step loop in a process of its own; ``EngineProcess`` has the ``AsyncEngine`` surface.

A replica's serving loop (gRPC, asyncio, heartbeats) and the engine's step loop share no
interpreter, so a step (CPU-bound on the simulator, host dispatch on chips) never holds the GIL
that the serving loop needs to take a request or send a token. They share three channels:

- data (a socketpair, both ways): the parent sends ``add`` / ``abort`` / ``shutdown`` in order,
  from one writer thread, so no caller ever blocks on a child that is busy or stuck; the child
  sends one message per engine step holding every output of that step (the ids and text new in
  it; all output ids on a request's last output only), ``rejected`` when a request fails its
  checks, and ``stopped`` when the model failed;
- control (a socketpair, request and reply): ``stats``, ``prefix_hashes`` and ``inject``,
  answered by a thread of the child's own while a step runs;
- liveness (a memfd both map): when the step loop last made progress, its step count and
  whether it has work, written by the child's loop, read by the parent without a call, so a
  child stuck inside a step is still seen as stuck.

The child takes new requests and aborts between steps (a step in flight could not use them);
a request's queue time and TTFT count from the parent's ``generate`` call, so the engine's
latency figures hold the wait for the step in flight, as in ``AsyncEngine``. It blocks on the data channel while it has no work. It exits when the parent shuts it down or
goes away (end of file on either channel), so a killed replica leaves no engine behind. When
the child dies, every request the parent still has open ends with ABORT and the cause, as when
the model fails in ``AsyncEngine``, and ``liveness`` says the engine is not alive.

The child is started as ``python -m ttdist.engine.process`` with the parent's interpreter and
environment (a replica's ``TT_VISIBLE_DEVICES`` included) and the parent's ``sys.path``, and builds
its ``EngineCore`` with ``build(*args)``, a function it imports by name.
"""

from __future__ import annotations

import mmap
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Callable

from ttdist.engine.core import EngineCore
from ttdist.engine.errors import EngineError, EngineStoppedError, InvalidRequestError, OverloadedError
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput
from ttdist.engine.runner import RunnerInfo
from ttdist.engine.stats import EngineLiveness, EngineStats
from ttdist.engine.stream import OutputStream, wake_together
from ttdist.engine.tokenizer import Tokenizer
from ttdist.errors import PermanentError

CONTROL_TIMEOUT_S = 10.0   # a control call the child does not answer in this long fails
_LIVE = struct.Struct("<dddd")   # progress (monotonic s), steps, has work, failed
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class EngineStartError(EngineError):
    """The engine process could not build or start its engine; the message says why."""


class EngineCannotStartError(EngineStartError, PermanentError):
    """The engine's build failed with a ``PermanentError`` in the child: starting again cannot help."""


# -- parent side ----------------------------------------------------------------------------
class EngineProcess:
    """An engine whose step loop runs in a child process (see the module docstring).

    ``build(*args)`` runs in the child and returns the ``EngineCore``; ``report(core)``, when
    given, runs there too and its (picklable) result is ``self.report`` here: what the parent
    needs to know of the engine beyond ``info`` (a replica's DRAM ledger). ``tokenizer`` is the
    parent's own copy, for callers that tokenize before they submit.
    """

    def __init__(
        self, build: Callable[..., EngineCore], args: tuple = (), *, report: Callable[[EngineCore], Any] | None = None,
        tokenizer: Tokenizer | None = None, start_timeout_s: float = 1800.0,
    ) -> None:
        self._build, self._args, self._report = build, args, report
        self.tokenizer = tokenizer
        self.start_timeout_s = start_timeout_s
        self.info: RunnerInfo | None = None
        self.report: Any = None
        self._proc: subprocess.Popen | None = None
        self._data: Connection | None = None
        self._ctl: Connection | None = None
        self._live: mmap.mmap | None = None
        self._lock = threading.Lock()          # guards _streams and _stopped_reason
        self._streams: dict[str, OutputStream] = {}
        self._stopped_reason: str | None = "not started"
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()   # pickled commands for the child, None: stop
        self._ctl_lock = threading.Lock()
        self._ctl_seq = 0
        self._last_stats: EngineStats | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child and wait until its engine is built (blocking: call it off the event loop).

        Raises EngineStartError with the child's own error when it cannot build or start."""
        if self._proc is not None:
            return
        data, data_child = socket.socketpair()
        ctl, ctl_child = socket.socketpair()
        live_fd = os.memfd_create("ttdist-engine-liveness")
        os.ftruncate(live_fd, _LIVE.size)
        fds = (data_child.fileno(), ctl_child.fileno(), live_fd)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "ttdist.engine.process", *map(str, fds)],
                                          pass_fds=fds, env=env)
            self._live = mmap.mmap(live_fd, _LIVE.size)
        finally:
            data_child.close()
            ctl_child.close()
            os.close(live_fd)
        self._data, self._ctl = Connection(data.detach()), Connection(ctl.detach())
        try:
            self._data.send(list(sys.path))   # so the child imports ``build`` as this process does
            self._data.send((self._build, self._args, self._report))
            self.info, self.report = self._wait_ready()
        except BaseException:
            self._kill()
            raise
        with self._lock:
            self._stopped_reason = None
        threading.Thread(target=self._read, name="ttdist-engine-outputs", daemon=True).start()
        threading.Thread(target=self._write, name="ttdist-engine-inputs", daemon=True).start()

    def _wait_ready(self) -> tuple[RunnerInfo, Any]:
        deadline = time.monotonic() + self.start_timeout_s
        while not self._data.poll(0.2):
            code = self._proc.poll()
            if code is not None:
                raise EngineStartError(f"the engine process exited with code {code} before it was ready")
            if time.monotonic() > deadline:
                raise EngineStartError(f"the engine process was not ready in {self.start_timeout_s:.0f} s")
        try:
            msg = self._data.recv()
        except (EOFError, OSError):
            raise EngineStartError(f"the engine process exited with code {self._proc.wait()} before it was ready") from None
        if msg[0] != "ready":   # ("failed", why, permanent): the kind the child's error had
            error = EngineCannotStartError if msg[2] else EngineStartError
            raise error(f"the engine process could not start its engine: {msg[1]}")
        return msg[1], msg[2]

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """End every request with ABORT now, then wait up to ``timeout_s`` for the child to exit
        (it is killed after that). Calling it again is harmless."""
        with self._lock:
            if self._stopped_reason is None:
                self._stopped_reason = "engine shut down"
            reason = self._stopped_reason
        if self._proc is None:
            return
        self._outbox.put(ForkingPickler.dumps(("shutdown", reason)))
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

    def inject(self, faults) -> None:
        """Cause ``faults`` in the child's engine from now on (tests)."""
        self._call("inject", faults)

    def liveness(self) -> EngineLiveness:
        with self._lock:
            reason = self._stopped_reason
        if self._live is None:
            return EngineLiveness(False, False, 0.0, 0, reason or "the engine process is not running")
        progress_s, steps, has_work, _failed = _LIVE.unpack_from(self._live)
        code = self._proc.poll()
        alive = code is None and reason is None
        error = "" if alive else reason or f"the engine process exited with code {code}"
        return EngineLiveness(alive, bool(has_work), time.monotonic() - progress_s, int(steps), error)

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
            message = ForkingPickler.dumps(("add", request, time.monotonic()))
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
            self._outbox.put(ForkingPickler.dumps(("abort", rid)))

    def abort(self, request_id: str) -> bool:
        """End a request now (its pages are freed in the child before its next step); False when
        it is not in flight here. Its stream ends with ABORT."""
        with self._lock:
            found = request_id in self._streams
        if found:
            self._outbox.put(ForkingPickler.dumps(("abort", request_id)))
        return found

    def stats(self) -> EngineStats:
        """The child's ``EngineStats`` (a call); the last ones it gave once it cannot answer."""
        try:
            self._last_stats = self._call("stats")
        except EngineStoppedError:
            if self._last_stats is None:
                raise
        return self._last_stats

    def prefix_hashes(self) -> list[int]:
        try:
            return self._call("prefix_hashes")
        except EngineStoppedError:
            return []

    def _call(self, op: str, arg: Any = None) -> Any:
        if self._ctl is None:
            raise EngineStoppedError("the engine process is not running")
        with self._ctl_lock:
            self._ctl_seq += 1
            seq = self._ctl_seq
            try:
                self._ctl.send((seq, op, arg))
                deadline = time.monotonic() + CONTROL_TIMEOUT_S
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._ctl.poll(left):
                        raise EngineStoppedError(f"the engine process did not answer {op!r} in {CONTROL_TIMEOUT_S:.0f} s")
                    got, ok, value = self._ctl.recv()
                    if got == seq:
                        break
            except (EOFError, OSError) as exc:
                raise EngineStoppedError(f"the engine process is gone ({type(exc).__name__})") from None
        if not ok:
            raise RuntimeError(f"the engine process failed on {op!r}: {value}")
        return value

    # -- the parent's two threads -----------------------------------------------------------
    def _write(self) -> None:
        while (msg := self._outbox.get()) is not None:
            try:
                self._data.send_bytes(msg)
            except OSError:
                return   # the child is gone: the reader ends the streams

    def _read(self) -> None:
        try:
            while True:
                msg = self._data.recv()
                if msg[0] == "out":
                    self._dispatch(msg[1])
                elif msg[0] == "rejected":
                    with self._lock:
                        stream = self._streams.pop(msg[1], None)
                    if stream is not None:
                        stream.fail(_decode_error(msg[2]))
                elif msg[0] == "stopped":
                    with self._lock:
                        self._stopped_reason = self._stopped_reason or msg[1]
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - an output this side cannot read: no stream may hang on it
            traceback.print_exc()
            self._kill()
        code = self._proc.wait()
        self._end_streams(f"the engine process exited with code {code}")

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        with wake_together():   # one step's readers wake in one loop turn
            for out in outputs:
                with self._lock:
                    stream = self._streams.pop(out.request_id, None) if out.finished else self._streams.get(out.request_id)
                if stream is not None:
                    stream.put(out)

    def _end_streams(self, reason: str) -> None:
        """The child is gone: end every request still open here with ABORT and ``reason``."""
        with self._lock:
            self._stopped_reason = self._stopped_reason or reason
            reason = self._stopped_reason
            streams, self._streams = self._streams, {}
        with wake_together():
            for rid, stream in streams.items():
                stream.put(RequestOutput(rid, [], "", True, FinishReason.ABORT, error=reason))


def _encode_error(exc: Exception) -> tuple:
    if isinstance(exc, InvalidRequestError):
        return ("invalid", exc.field, exc.reason)
    if isinstance(exc, (OverloadedError, EngineStoppedError)):
        return (type(exc).__name__, str(exc))
    return ("error", f"{type(exc).__name__}: {exc}")


def _decode_error(code: tuple) -> Exception:
    if code[0] == "invalid":
        return InvalidRequestError(code[1], code[2])
    if code[0] == "OverloadedError":
        return OverloadedError(code[1])
    if code[0] == "EngineStoppedError":
        return EngineStoppedError(code[1])
    return RuntimeError(code[1])


# -- child side -----------------------------------------------------------------------------
class _Liveness:
    """The child's side of the liveness cell (written by the step loop only)."""

    def __init__(self, cell: mmap.mmap) -> None:
        self.cell = cell
        self.steps = 0
        self.failed = 0.0

    def mark(self, has_work: bool) -> None:
        _LIVE.pack_into(self.cell, 0, time.monotonic(), float(self.steps), float(has_work), self.failed)


class _StepLoop:
    """The child's main thread: apply the parent's commands between steps, step, send outputs."""

    def __init__(self, core: EngineCore, conn: Connection, live: _Liveness) -> None:
        self.core, self.conn, self.live = core, conn, live
        self.outputs: list[RequestOutput] = []
        self.stopped: str | None = None

    def run(self) -> None:
        try:
            while True:
                busy = self.stopped is None and self.core.has_work()
                if not busy:
                    self.live.mark(has_work=False)
                if not self._take_commands(wait=not busy):
                    return
                if self.stopped is None and self.core.has_work():
                    self._step()
                self._flush()
        except (EOFError, OSError):
            return   # the parent is gone

    def _take_commands(self, wait: bool) -> bool:
        """Apply every command waiting (waiting for the first one when idle); False: stop now."""
        if wait:
            self.conn.poll(None)
        while self.conn.poll():
            msg = self.conn.recv()
            if msg[0] == "add":
                self._add(msg[1], msg[2])
            elif msg[0] == "abort":
                self.core.abort(msg[1])
            elif msg[0] == "shutdown":
                self.core.abort_all(error=msg[1])
                self._flush()
                return False
        return True

    def _add(self, request: GenerationRequest, sent_s: float) -> None:
        """Queue ``request``, its arrival the parent's ``generate`` call (``sent_s``, monotonic:
        one clock for every process of the host), so its queue time and TTFT hold the wait for
        the step that was in flight, as in ``AsyncEngine``."""
        try:
            if self.stopped is not None:
                raise EngineStoppedError(f"the engine is not running ({self.stopped})")
            arrival = sent_s if self.core.clock is time.monotonic else None
            self.core.add_request(request, sink=self._collect, arrival_s=arrival)
        except Exception as exc:  # noqa: BLE001 - this request alone: the parent raises it to its caller
            self.conn.send(("rejected", request.request_id, _encode_error(exc)))

    def _collect(self, out: RequestOutput) -> None:
        self.outputs.append(out)

    def _step(self) -> None:
        self.live.mark(has_work=True)   # the age the parent reads from now on is this step's
        try:
            self.core.step()
            self.live.steps += 1
            self.live.mark(has_work=self.core.has_work())
        except Exception as exc:  # the model failed: end every request, refuse new ones
            traceback.print_exc()
            self.stopped = f"engine failed: {type(exc).__name__}: {exc}"
            self.live.failed = 1.0
            self.live.mark(has_work=False)
            self.conn.send(("stopped", self.stopped))
            self.core.abort_all(error=self.stopped)

    def _flush(self) -> None:
        if not self.outputs:
            return
        outputs = list(self.outputs)
        self.outputs.clear()
        for out in outputs:   # every id so far only on the last output (the view would pickle the prompt too)
            out.output_ids = list(out.output_ids) if out.finished else []
        self.conn.send(("out", outputs))


def _serve_control(core: EngineCore, conn: Connection) -> None:
    while True:
        try:
            seq, op, arg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)   # the parent is gone, even while a step holds the main thread
        try:
            if op == "stats":
                value = core.stats()
            elif op == "prefix_hashes":
                value = core.prefix_hashes()
            elif op == "inject":
                core.faults = arg
                value = None
            else:
                raise ValueError(f"unknown control call {op!r}")
            reply = (seq, True, value)
        except Exception as exc:  # noqa: BLE001 - the parent raises it to its caller
            reply = (seq, False, f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def main(argv: list[str]) -> int:
    from ttdist.engine.engine import GIL_SWITCH_INTERVAL_S

    data, ctl = Connection(int(argv[0])), Connection(int(argv[1]))
    live_fd = int(argv[2])
    live = _Liveness(mmap.mmap(live_fd, _LIVE.size))
    os.close(live_fd)
    live.mark(has_work=False)
    try:
        sys.path.extend(p for p in data.recv() if p not in sys.path)
        build, args, report = data.recv()
    except (EOFError, OSError):
        return 0
    try:
        core = build(*args)
        core.faults.on_start()
        extra = report(core) if report is not None else None
    except Exception as exc:  # noqa: BLE001 - the parent raises EngineStartError with this text
        traceback.print_exc()
        data.send(("failed", f"{type(exc).__name__}: {exc}", isinstance(exc, PermanentError)))
        return 1
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)   # the control thread answers within ~1 ms of a step
    data.send(("ready", core.runner.info, extra))
    threading.Thread(target=_serve_control, args=(core, ctl), name="ttdist-engine-control", daemon=True).start()
    _StepLoop(core, data, live).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
