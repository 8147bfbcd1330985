"""A real local Ray cluster through the project's ``deploy()``, and streams driven through it.

``running_cluster(config)`` deploys ``config`` (on a new local Ray, or joining ``address``),
waits until the public port serves, yields the ``Deployment`` and shuts it down however the
block ends. ``Streams`` runs greedy streams concurrently and checks them token for token
against the scripted engine's continuation.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import grpc

from tests.support.generation import greedy
from tests.support.scripted import VOCAB, expected_tokens
from ttdist.router.deploy import Deployment, deploy, wait_serving
from ttdist.runtime.config import ClusterConfig
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb

# the fault tests' scripted replicas: steps slow enough that a fault lands mid-stream
SCRIPTED = ScriptedEngineConfig(vocab_size=VOCAB, step_s=0.02, max_context=4096, page_size=16, num_pages=512)


@contextmanager
def running_cluster(config: ClusterConfig, *, address: str | None = None,
                    serving_timeout_s: float = 30.0) -> Iterator[Deployment]:
    """``config`` deployed and serving until the block ends."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    deployment = deploy(config, address=address)
    try:
        wait_serving(deployment, serving_timeout_s)
        yield deployment
    finally:
        deployment.shutdown()


def actor_pid(actor) -> int:
    import ray

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
            want = expected_tokens(prompt, self.max_tokens)
            assert out.ids == want, (len(out.ids), len(want))
            assert list(out.complete.output_ids) == want and out.complete.usage.completion_tokens == self.max_tokens
