"""The engine's step loop in a process of its own: ``EngineProcess`` is a ``ServingEngine``.

A replica's serving loop (gRPC, asyncio, heartbeats) and the engine's step loop share no
interpreter, so a step (CPU-bound on the simulator, host dispatch on chips) never holds the GIL
that the serving loop needs to take a request or send a token. They share three channels:

- data (a socketpair, both ways): the parent sends ``AddRequest`` / ``AbortRequest`` /
  ``Shutdown`` in order, from one writer thread, so no caller ever blocks on a child that is busy
  or stuck; the child sends one ``StepOutputs`` per engine step holding every output of that step,
  ``Rejected`` when a request fails its checks, and ``Stopped`` when the model failed;
- control (a socketpair, request and reply): stats, prefix hashes and faults, answered by a
  thread of the child's own while a step runs, and asked by a thread of the parent's own, so a
  caller on an event loop awaits them;
- liveness (a memfd both map): when the step loop last made progress, its step count and
  whether it has work, written by the child's loop, read by the parent without a call, so a
  child stuck inside a step is still seen as stuck.

The child takes new requests and aborts between steps (a step in flight could not use them);
a request's queue time and TTFT count from the parent's ``generate`` call, so the engine's
latency figures hold the wait for the step in flight, as in ``AsyncEngine``. When the child
dies, every request the parent still has open ends with ABORT and the cause, as when the model
fails in ``AsyncEngine``, and ``liveness`` says the engine is not alive.

``parent`` holds ``EngineProcess``; ``child`` is the process itself, started as
``python -m ttdist.engine.process`` with the parent's interpreter and environment (a
replica's ``TT_VISIBLE_DEVICES`` included) and the parent's ``sys.path``, which builds its
``EngineCore`` with ``build(*args)``, a function it imports by name; ``wire`` holds the messages.
"""

from ttdist.engine.process.parent import EngineCannotStartError, EngineProcess, EngineStartError

__all__ = ["EngineCannotStartError", "EngineProcess", "EngineStartError"]
