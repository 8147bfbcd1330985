"""Fault injection on a real Ray cluster: faults are caused (SIGKILL, drain, node loss), not mocked.

``scripted_cluster`` is one module-scoped cluster of three scripted replicas behind the
router. The scripted engine's next token depends only on the sequence so far, so every
stream has one exact expected output (``expected``) whatever replica serves it and however
often it moves.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import grpc
import ray

from tests.runtime.conftest import greedy, run, stub_for  # noqa: F401 - shared with the fault tests
from ttdist.runtime.scripted_engine import ScriptedEngineConfig, next_token
from ttdist.v1 import generation_pb2 as pb

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

VOCAB = 1000
SCRIPTED = ScriptedEngineConfig(vocab_size=VOCAB, step_s=0.02, max_context=4096, page_size=16, num_pages=512)


def expected(prompt: list[int], n: int, vocab: int = VOCAB) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(next_token(seq, vocab))
    return seq[len(prompt):]


def actor_pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


@dataclass
class Outcome:
    ids: list[int] = field(default_factory=list)
    complete: pb.Complete | None = None
    error: grpc.RpcError | None = None


class Streams:
    """``len(prompts)`` concurrent streams through ``stub``; ``wait_started`` returns once each
    has received ``started_after`` tokens (or finished)."""

    def __init__(self, stub, prompts: list[list[int]], max_tokens: int, started_after: int = 2, timeout: float = 180):
        self.prompts, self.max_tokens = prompts, max_tokens
        self.outcomes = [Outcome() for _ in prompts]
        self._started = [threading.Event() for _ in prompts]
        self._threads = [threading.Thread(target=self._run, args=(stub, i, started_after, timeout), daemon=True)
                         for i in range(len(prompts))]
        for t in self._threads:
            t.start()

    def _run(self, stub, i: int, started_after: int, timeout: float) -> None:
        out = self.outcomes[i]
        try:
            for resp in stub.Generate(greedy(self.prompts[i], self.max_tokens), timeout=timeout):
                if resp.WhichOneof("kind") == "chunk":
                    out.ids.extend(resp.chunk.token_ids)
                    if len(out.ids) >= started_after:
                        self._started[i].set()
                else:
                    out.complete = resp.complete
        except grpc.RpcError as err:
            out.error = err
        finally:
            self._started[i].set()

    def wait_started(self, timeout: float = 120) -> None:
        for event in self._started:
            assert event.wait(timeout), "a stream never started"

    def join(self, timeout: float = 240) -> list[Outcome]:
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), "a stream never ended"
        return self.outcomes

    def assert_exact(self) -> None:
        """Every stream finished with exactly the undisturbed output: none lost, none duplicated."""
        for prompt, out in zip(self.prompts, self.join()):
            assert out.error is None, (out.error.code(), out.error.details())
            want = expected(prompt, self.max_tokens)
            assert out.ids == want, (len(out.ids), len(want))
            assert list(out.complete.output_ids) == want and out.complete.usage.completion_tokens == self.max_tokens


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
