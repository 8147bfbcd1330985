"""What an ``EngineProcess`` and its child say to each other: typed messages, pickled whole.

Like vLLM v1's ``EngineCoreRequestType`` and ``EngineCoreOutputs``, every message is a small
dataclass whose ``kind`` (an enum member, one per class) is what the receiver dispatches on:

- data channel, parent -> child, in order (``CommandKind``): ``Startup`` once, then
  ``AddRequest`` / ``AbortRequest`` / ``Shutdown``;
- data channel, child -> parent (``EventKind``): ``Ready`` or ``StartFailed`` once, then
  ``StepOutputs`` (one per step: every output of that step), ``Rejected`` (a request failed its
  checks) and ``Stopped`` (the model failed);
- control channel: ``ControlCall`` (a ``ControlOp``) answered by ``ControlReply`` with the same
  ``seq``, while a step runs.

An error crosses as ``WireError`` (an ``ErrorKind`` and its text), never as a class name; the
receiver raises ``WireError.to_exception()``. The liveness cell is a memfd both processes map:
the child's step loop writes when it last made progress, its step count and whether it has
work; the parent reads it without a call.
"""

from __future__ import annotations

import enum
import mmap
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ttdist.engine.errors import EngineStoppedError, InvalidRequestError, OverloadedError
from ttdist.engine.request import GenerationRequest, RequestOutput
from ttdist.engine.runner import RunnerInfo
from ttdist.errors import PermanentError


class CommandKind(enum.Enum):
    """What the parent sends the child on the data channel."""

    STARTUP = "startup"     # the import path and the engine's build
    ADD = "add"             # queue a request
    ABORT = "abort"         # end a request now
    SHUTDOWN = "shutdown"   # end every request, then exit


class EventKind(enum.Enum):
    """What the child sends the parent on the data channel."""

    READY = "ready"                 # the engine is built and steps from now on
    START_FAILED = "start_failed"   # the engine could not be built or started
    OUTPUTS = "outputs"             # one step's outputs
    REJECTED = "rejected"           # a request failed its checks
    STOPPED = "stopped"             # the model failed: every request ends, new ones are refused


class ControlOp(enum.Enum):
    """What the parent asks the child's control thread."""

    STATS = "stats"
    PREFIX_HASHES = "prefix_hashes"
    TIER_HASHES = "tier_hashes"
    INJECT = "inject"


class ErrorKind(enum.Enum):
    INVALID_REQUEST = "invalid_request"   # InvalidRequestError (``field`` names the field)
    OVERLOADED = "overloaded"             # OverloadedError
    STOPPED = "stopped"                   # EngineStoppedError
    PERMANENT = "permanent"               # a PermanentError: trying again cannot help
    INTERNAL = "internal"                 # anything else: a RuntimeError on the other side


@dataclass(frozen=True)
class WireError:
    """An exception as data: its kind, its text (and the request field it names)."""

    kind: ErrorKind
    message: str
    field: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> WireError:
        if isinstance(exc, InvalidRequestError):
            return cls(ErrorKind.INVALID_REQUEST, exc.reason, exc.field)
        if isinstance(exc, OverloadedError):
            return cls(ErrorKind.OVERLOADED, str(exc))
        if isinstance(exc, EngineStoppedError):
            return cls(ErrorKind.STOPPED, str(exc))
        if isinstance(exc, PermanentError):
            return cls(ErrorKind.PERMANENT, f"{type(exc).__name__}: {exc}")
        return cls(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")

    def to_exception(self) -> Exception:
        if self.kind is ErrorKind.INVALID_REQUEST:
            return InvalidRequestError(self.field, self.message)
        if self.kind is ErrorKind.OVERLOADED:
            return OverloadedError(self.message)
        if self.kind is ErrorKind.STOPPED:
            return EngineStoppedError(self.message)
        return RuntimeError(self.message)


# -- parent -> child ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineBuild:
    """How the child builds its engine: ``build(*args)``; ``measure_memory(core)``, when given,
    is the memory report the parent gets in ``Ready``."""

    build: Callable[..., Any]
    args: tuple = ()
    measure_memory: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Startup:
    """The first message: the parent's ``sys.path``, then the pickled ``EngineBuild`` (unpickled
    once that path is in place, so the child imports ``build`` as the parent does)."""

    kind: ClassVar = CommandKind.STARTUP
    sys_path: list[str]
    engine_build: bytes


@dataclass(frozen=True)
class AddRequest:
    kind: ClassVar = CommandKind.ADD
    request: GenerationRequest
    sent_s: float   # the parent's ``generate`` call (monotonic: one clock for every process of a host)


@dataclass(frozen=True)
class AbortRequest:
    kind: ClassVar = CommandKind.ABORT
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    kind: ClassVar = CommandKind.SHUTDOWN
    reason: str


# -- child -> parent ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    kind: ClassVar = EventKind.READY
    info: RunnerInfo
    memory: Any = None


@dataclass(frozen=True)
class StartFailed:
    kind: ClassVar = EventKind.START_FAILED
    error: WireError


@dataclass(frozen=True)
class StepOutputs:
    """Every output of one step (the ids and text new in it; all output ids on a request's last
    output only)."""

    kind: ClassVar = EventKind.OUTPUTS
    outputs: list[RequestOutput] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    kind: ClassVar = EventKind.REJECTED
    request_id: str
    error: WireError


@dataclass(frozen=True)
class Stopped:
    kind: ClassVar = EventKind.STOPPED
    reason: str


# -- control channel ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlCall:
    seq: int
    op: ControlOp
    arg: Any = None


@dataclass(frozen=True)
class ControlReply:
    seq: int
    value: Any = None
    error: WireError | None = None


# -- liveness -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """The step loop's last mark: when (monotonic s), after how many steps, with work or not."""

    at_s: float
    steps: int
    has_work: bool


class LivenessCell:
    """The memfd both processes map: the child's step loop ``mark``s it, the parent ``read``s it."""

    LAYOUT = struct.Struct("<ddd")   # progress (monotonic s), steps, has work
    SIZE = LAYOUT.size

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, self.SIZE)

    def mark(self, steps: int, has_work: bool) -> None:
        self.LAYOUT.pack_into(self._map, 0, time.monotonic(), float(steps), float(has_work))

    def read(self) -> Progress:
        at_s, steps, has_work = self.LAYOUT.unpack_from(self._map)
        return Progress(at_s, int(steps), bool(has_work))
