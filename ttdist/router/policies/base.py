"""What every routing policy sees: one view per replica, one request summary.

A policy picks one replica for one request with ``select(replicas, request)``; ``Policy`` gives
every policy the hooks it may ignore (``on_complete``) as no-ops, so a policy file holds only its
algorithm. ``route`` (candidates.py) filters out replicas that are not ready (and any it must
avoid, such as the one a stream is migrating away from) before any policy runs, so a policy
never sees an unhealthy replica and always gets at least one: ``Candidates``, the ready ones in
id order, with the load and prefix queries answered without a pass in Python over every replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ttdist.dashboard.replica_state import ReplicaState


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the router sees it at routing time.

    ``running`` / ``waiting`` are the larger of the replica's last heartbeat and the
    router's own count of its streams there (fresher, but blind to other routers);
    ``pending_prefill_tokens`` are the prompt tokens of this router's streams that have
    not produced a first token yet. ``prefix_hashes`` are the chained page hashes the
    replica's prefix cache held at its last heartbeat; ``tier_prefix_hashes`` those its KV
    tiers could restore then (its host tier and the node tier of its host).
    """

    replica_id: str
    state: str = ReplicaState.READY
    running: int = 0
    waiting: int = 0
    pending_prefill_tokens: int = 0
    prefix_hashes: frozenset[int] = frozenset()
    tier_prefix_hashes: frozenset[int] = frozenset()


@dataclass(frozen=True)
class RequestInfo:
    """The part of a request that routing looks at."""

    request_id: str
    prompt_tokens: int = 0
    block_hashes: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LoadWeights:
    """How queue length and pending prefill combine into one load figure.

    A replica's load is ``running + waiting + pending_prefill_tokens / prefill_tokens_per_request``:
    ``prefill_tokens_per_request`` prompt tokens waiting for prefill weigh as much as one
    more request in the batch.
    """

    prefill_tokens_per_request: float = 512.0

    def load(self, replica: ReplicaView) -> float:
        pending = replica.pending_prefill_tokens / self.prefill_tokens_per_request
        return replica.running + replica.waiting + pending

    def loads(self, running: np.ndarray, waiting: np.ndarray, pending_prefill_tokens: np.ndarray) -> np.ndarray:
        """``load`` of many replicas at once (float arrays): the same operations in the same order."""
        return running + waiting + pending_prefill_tokens / self.prefill_tokens_per_request


class Policy:
    """The base of every routing policy: ``select`` to implement, the other hooks no-ops."""

    name = ""

    def select(self, replicas: Sequence[ReplicaView], request: RequestInfo) -> ReplicaView:
        """One of ``replicas`` (never empty, all ready, in id order: ``Candidates`` from ``route``,
        candidates.py) for ``request``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement select()")

    def on_complete(self, replica_id: str, request: RequestInfo) -> None:
        """The request finished on ``replica_id``; a policy that keeps no such state ignores it."""


class NoReplicaError(RuntimeError):
    """No replica is ready to take a request."""
