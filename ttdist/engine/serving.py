"""``ServingEngine``: what a replica needs of the engine it serves, whatever runs the step loop.

Three engines implement it: ``AsyncEngine`` (the step loop a thread of this process),
``EngineProcess`` (a child process) and the runtime's ``ScriptedEngine`` (a task of the event
loop, a token rule for a model). A replica is handed one by a factory and uses only this.

Every method here may be called on the replica's event loop, so none of them blocks: what
may wait on the engine (its start, its stop, a read of its figures) is a coroutine, and an
engine whose figures sit across a channel reads them off the loop. ``liveness`` and
``memory`` answer from what this process already holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from ttdist.engine.faults import EngineFaults
from ttdist.engine.request import GenerationRequest, RequestOutput
from ttdist.engine.stats import EngineLiveness, EngineStats
from ttdist.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from ttdist.model.kv_budget import ReplicaMemory


class ServingEngine(Protocol):
    tokenizer: Tokenizer | None   # for callers that tokenize before they submit (long prompts)

    async def launch(self) -> None:
        """Start the step loop; returns once the engine takes requests (raises if it cannot)."""

    async def stop(self) -> None:
        """End every request with ABORT and stop the step loop (calling it again is harmless)."""

    async def read_stats(self) -> EngineStats:
        """The engine's figures now."""

    async def read_prefix_hashes(self) -> list[int]:
        """The chained hashes of the pages its prefix cache holds."""

    async def read_tier_hashes(self) -> list[int]:
        """The chained hashes of the pages its KV tiers could restore (host tier, node tier)."""

    async def inject_faults(self, faults: EngineFaults) -> None:
        """Cause ``faults`` from now on (tests)."""

    def liveness(self) -> EngineLiveness:
        """Whether the step loop is alive and when it last made progress."""

    def memory(self) -> ReplicaMemory | None:
        """The KV budget and chip DRAM of the engine's model (None without a mesh)."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Queue ``request`` and iterate its outputs until one has ``finished`` set; leaving early aborts it."""

    def abort(self, request_id: str) -> bool:
        """End a request now; False when it is not in flight."""


class InProcessEngine:
    """The reads of ``ServingEngine`` for an engine whose figures live in this process
    (``AsyncEngine``, ``ScriptedEngine``): its own ``stats``, ``prefix_hashes``, ``tier_hashes`` and ``inject``
    answer at once, so the coroutines only return them."""

    async def read_stats(self) -> EngineStats:
        return self.stats()

    async def read_prefix_hashes(self) -> list[int]:
        return self.prefix_hashes()

    async def read_tier_hashes(self) -> list[int]:
        return self.tier_hashes()

    async def inject_faults(self, faults: EngineFaults) -> None:
        self.inject(faults)
