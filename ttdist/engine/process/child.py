"""The engine process itself, run as ``python -m ttdist.engine.process DATA_FD CONTROL_FD LIVENESS_FD``.

Its main thread is the step loop: it applies the parent's commands between steps (a step in
flight could not use them), steps, and sends each step's outputs in one ``StepOutputs``; it
blocks on the data channel while it has no work. A thread of its own answers control calls
while a step runs. It exits when the parent shuts it down or goes away (end of file on either
channel), so a killed replica leaves no engine behind.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

from ttdist.engine.core import EngineCore
from ttdist.engine.errors import EngineStoppedError
from ttdist.engine.process.wire import (
    AbortRequest, AddRequest, CommandKind, ControlCall, ControlOp, ControlReply, EngineBuild, LivenessCell, Ready,
    Rejected, Shutdown, StartFailed, Startup, StepOutputs, Stopped, WireError,
)
from ttdist.engine.request import RequestOutput


class StepLoop:
    """The child's main thread: apply the parent's commands between steps, step, send outputs."""

    def __init__(self, core: EngineCore, conn: Connection, live: LivenessCell) -> None:
        self.core, self.conn, self.live = core, conn, live
        self.outputs: list[RequestOutput] = []
        self.stopped: str | None = None
        self.steps = 0
        self._apply = {CommandKind.ADD: self._add, CommandKind.ABORT: self._abort, CommandKind.SHUTDOWN: self._shutdown}

    def run(self) -> None:
        try:
            while True:
                busy = self.stopped is None and self.core.has_work()
                if not busy:
                    self.live.mark(self.steps, has_work=False)
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
            command = self.conn.recv()
            if self._apply[command.kind](command) is False:
                return False
        return True

    def _add(self, command: AddRequest) -> None:
        """Queue the request, its arrival the parent's ``generate`` call, so its queue time and
        TTFT hold the wait for the step that was in flight, as in ``AsyncEngine``."""
        request = command.request
        try:
            if self.stopped is not None:
                raise EngineStoppedError(f"the engine is not running ({self.stopped})")
            arrival = command.sent_s if self.core.clock is time.monotonic else None
            self.core.add_request(request, sink=self.outputs.append, arrival_s=arrival)
        except Exception as exc:  # noqa: BLE001 - this request alone: the parent raises it to its caller
            self.conn.send(Rejected(request.request_id, WireError.of(exc)))

    def _abort(self, command: AbortRequest) -> None:
        self.core.abort(command.request_id)

    def _shutdown(self, command: Shutdown) -> bool:
        self.core.abort_all(error=command.reason)
        self._flush()
        return False

    def _step(self) -> None:
        self.live.mark(self.steps, has_work=True)   # the age the parent reads from now on is this step's
        try:
            self.core.step()
            self.steps += 1
            self.live.mark(self.steps, has_work=self.core.has_work())
        except Exception as exc:  # the model failed: end every request, refuse new ones
            traceback.print_exc()
            self.stopped = f"engine failed: {type(exc).__name__}: {exc}"
            self.live.mark(self.steps, has_work=False)
            self.conn.send(Stopped(self.stopped))
            self.core.abort_all(error=self.stopped)

    def _flush(self) -> None:
        if not self.outputs:
            return
        outputs = list(self.outputs)
        self.outputs.clear()
        for out in outputs:   # every id so far only on the last output (the view would pickle the prompt too)
            out.output_ids = list(out.output_ids) if out.finished else []
        self.conn.send(StepOutputs(outputs))


def _control_value(core: EngineCore, call: ControlCall):
    if call.op is ControlOp.STATS:
        return core.stats()
    if call.op is ControlOp.PREFIX_HASHES:
        return core.prefix_hashes()
    if call.op is ControlOp.TIER_HASHES:
        return core.tier_hashes()
    core.faults = call.arg   # ControlOp.INJECT
    return None


def serve_control(core: EngineCore, conn: Connection) -> None:
    while True:
        try:
            call: ControlCall = conn.recv()
        except (EOFError, OSError):
            os._exit(0)   # the parent is gone, even while a step holds the main thread
        try:
            reply = ControlReply(call.seq, _control_value(core, call))
        except Exception as exc:  # noqa: BLE001 - the parent raises it to its caller
            reply = ControlReply(call.seq, error=WireError.of(exc))
        conn.send(reply)


def _startup(data: Connection) -> EngineBuild:
    """The parent's ``Startup``: its import path in place, then what to build."""
    startup: Startup = data.recv()
    sys.path.extend(p for p in startup.sys_path if p not in sys.path)
    return pickle.loads(startup.engine_build)


def _build(spec: EngineBuild) -> tuple[EngineCore, Ready]:
    core = spec.build(*spec.args)
    core.faults.on_start()
    memory = spec.measure_memory(core) if spec.measure_memory is not None else None
    return core, Ready(core.runner.info, memory)


def main(argv: list[str]) -> int:
    from ttdist.engine.engine import GIL_SWITCH_INTERVAL_S

    data, ctl = Connection(int(argv[0])), Connection(int(argv[1]))
    live_fd = int(argv[2])
    live = LivenessCell(live_fd)
    os.close(live_fd)
    live.mark(0, has_work=False)
    try:
        spec = _startup(data)
    except (EOFError, OSError):
        return 0   # the parent went away before it asked for anything
    try:
        core, ready = _build(spec)
    except Exception as exc:  # noqa: BLE001 - the parent raises EngineStartError with this text
        traceback.print_exc()
        data.send(StartFailed(WireError.of(exc)))
        return 1
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)   # the control thread answers within ~1 ms of a step
    data.send(ready)
    threading.Thread(target=serve_control, args=(core, ctl), name="ttdist-engine-control", daemon=True).start()
    StepLoop(core, data, live).run()
    return 0
