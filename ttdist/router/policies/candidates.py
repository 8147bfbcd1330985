"""The replicas a policy chooses among, kept so that a pick makes no pass in Python over them all.

``Pool`` holds every replica a router knows, in replica-id order: its ``ReplicaView`` and, as
arrays, the running / waiting / pending-prefill figures a load is computed from, plus a
``PrefixIndex`` of the page hashes each holds on its chips and one of those its KV tiers could
restore. The router keeps one up to date: a whole table at a time (``set_views``, a few times a
second) and one replica at a time as its own streams start and end (``update``). A plain list
of views makes a throwaway one (``Pool(views)``).

``Candidates`` is what a policy's ``select`` gets: the ready replicas of a pool that the request
may go to (not ``blocked``: suspects, replicas it must avoid), in replica-id order. It is a
``Sequence[ReplicaView]`` (round_robin indexes it, power_of_two samples positions) with the
queries the load and cache policies need answered over arrays and the index: ``least`` (the
lowest load, then the lowest id), ``load_range``, ``holders`` / ``tier_holders`` / ``among``
(which replicas hold a page hash, on chips / in tiers) and ``best`` (the lowest load, then id,
among some of them). Loads are computed as ``LoadWeights.loads`` over the arrays: the same
float operations, in the same order, as ``LoadWeights.load`` on one view, so every pick is the
one a pass over the views would make.

``route``: health filtering (ready, not excluded), then the policy.
"""

from __future__ import annotations

from typing import Collection, Iterable, Iterator, Sequence, overload

import numpy as np

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.router.policies.base import LoadWeights, NoReplicaError, Policy, ReplicaView, RequestInfo
from ttdist.router.policies.prefix_index import PrefixIndex


class Pool:
    def __init__(self, views: Iterable[ReplicaView] = ()) -> None:
        self.index = PrefixIndex()
        self.tier_index = PrefixIndex()
        self.views: list[ReplicaView] = []
        self.positions: dict[str, int] = {}
        self.running = self.waiting = self.pending = np.zeros(0)
        self.ready = np.zeros(0, dtype=bool)
        self.ready_ids: frozenset[str] = frozenset()
        self.set_views(views)

    def set_views(self, views: Iterable[ReplicaView]) -> None:
        """Take a whole new set of views (a new table); the index changes by the hashes that changed."""
        ordered = sorted(views, key=lambda v: v.replica_id)
        positions = {v.replica_id: k for k, v in enumerate(ordered)}
        if len(positions) != len(ordered):
            raise ValueError("replica ids in a routing table must be unique")
        held = {v.replica_id: v for v in self.views}
        for v in ordered:
            old = held.pop(v.replica_id, None)
            self.index.replace(v.replica_id, old.prefix_hashes if old else frozenset(), v.prefix_hashes)
            self.tier_index.replace(v.replica_id, old.tier_prefix_hashes if old else frozenset(), v.tier_prefix_hashes)
        for replica_id, old in held.items():   # left the table
            self.index.replace(replica_id, old.prefix_hashes, frozenset())
            self.tier_index.replace(replica_id, old.tier_prefix_hashes, frozenset())
        self.views, self.positions = ordered, positions
        n = len(ordered)
        self.running = np.fromiter((v.running for v in ordered), np.float64, n)
        self.waiting = np.fromiter((v.waiting for v in ordered), np.float64, n)
        self.pending = np.fromiter((v.pending_prefill_tokens for v in ordered), np.float64, n)
        self.ready = np.fromiter((v.state == ReplicaState.READY for v in ordered), bool, n)
        self.ready_ids = frozenset(v.replica_id for v in ordered if v.state == ReplicaState.READY)

    def update(self, view: ReplicaView) -> None:
        """One replica's view changed (its load, as this router counts it); unknown ids are ignored."""
        k = self.positions.get(view.replica_id)
        if k is None:
            return
        old = self.views[k]
        self.views[k] = view
        self.running[k], self.waiting[k], self.pending[k] = view.running, view.waiting, view.pending_prefill_tokens
        self.index.replace(view.replica_id, old.prefix_hashes, view.prefix_hashes)
        self.tier_index.replace(view.replica_id, old.tier_prefix_hashes, view.tier_prefix_hashes)
        ready = view.state == ReplicaState.READY
        if ready != (old.state == ReplicaState.READY):
            self.ready[k] = ready
            self.ready_ids = self.ready_ids | {view.replica_id} if ready else self.ready_ids - {view.replica_id}

    def candidates(self, blocked: Collection[str] = (), labels: dict[str, str] | None = None) -> Candidates:
        """The ready replicas not in ``blocked``; ``labels`` names the state of some (in errors)."""
        return Candidates(self, frozenset(blocked), labels or {})


class Candidates(Sequence[ReplicaView]):
    def __init__(self, pool: Pool, blocked: frozenset[str], labels: dict[str, str]) -> None:
        self._pool = pool
        self._labels = labels
        self._blocked = pool.ready_ids & blocked   # only ready ones change anything
        if self._blocked:
            self._mask = pool.ready.copy()
            self._mask[[pool.positions[b] for b in self._blocked]] = False
        else:
            self._mask = pool.ready
        self._where: np.ndarray | None = None

    def without(self, exclude: Collection[str]) -> Candidates:
        """These candidates less ``exclude``."""
        if not exclude:
            return self
        return Candidates(self._pool, self._blocked | frozenset(exclude), self._labels)

    def __len__(self) -> int:
        return len(self._pool.ready_ids) - len(self._blocked)

    @overload
    def __getitem__(self, k: int) -> ReplicaView: ...
    @overload
    def __getitem__(self, k: slice) -> list[ReplicaView]: ...
    def __getitem__(self, k):
        views = self._pool.views
        if isinstance(k, slice):
            return [views[p] for p in self._positions()[k]]
        return views[self._positions()[k]]

    def __iter__(self) -> Iterator[ReplicaView]:
        views = self._pool.views
        return (views[p] for p in self._positions())

    def _positions(self) -> np.ndarray:
        if self._where is None:
            self._where = np.flatnonzero(self._mask)
        return self._where

    def describe(self) -> str:
        """Every replica of the pool and its state, for an error that none could be chosen."""
        return ", ".join(f"{v.replica_id}={self._labels.get(v.replica_id, v.state)}" for v in self._pool.views)

    def _loads(self, weights: LoadWeights) -> np.ndarray:
        pool = self._pool
        return weights.loads(pool.running, pool.waiting, pool.pending)

    def least(self, weights: LoadWeights) -> ReplicaView:
        """The candidate with the lowest load; a tie goes to the lowest id."""
        loads = np.where(self._mask, self._loads(weights), np.inf)
        return self._pool.views[int(np.argmin(loads))]

    def load_range(self, weights: LoadWeights) -> tuple[float, float]:
        """The lowest and the highest load among the candidates."""
        loads = self._loads(weights)[self._mask]
        return float(loads.min()), float(loads.max())

    def holders(self, page_hash: int) -> Collection[str]:
        """The ids of the pool's replicas whose prefix set holds ``page_hash`` (candidates or not)."""
        return self._pool.index.holders(page_hash)

    def tier_holders(self, page_hash: int) -> Collection[str]:
        """The ids of the pool's replicas whose KV tiers could restore ``page_hash`` (candidates or not)."""
        return self._pool.tier_index.holders(page_hash)

    def among(self, replica_ids: Iterable[str]) -> set[str]:
        """Those of ``replica_ids`` that are candidates."""
        chosen = self._pool.ready_ids.intersection(replica_ids)
        chosen -= self._blocked
        return chosen

    def best(self, replica_ids: Collection[str], weights: LoadWeights) -> ReplicaView:
        """Among ``replica_ids`` (candidates, at least one), the lowest load; a tie goes to the lowest id."""
        pool = self._pool
        if len(replica_ids) == 1:
            return pool.views[pool.positions[next(iter(replica_ids))]]
        at = np.fromiter(map(pool.positions.__getitem__, replica_ids), np.intp, len(replica_ids))
        loads = weights.loads(pool.running[at], pool.waiting[at], pool.pending[at])
        return pool.views[int(at[loads == loads.min()].min())]


def route(
    policy: Policy,
    replicas: Candidates | Sequence[ReplicaView],
    request: RequestInfo,
    exclude: frozenset[str] = frozenset(),
) -> ReplicaView:
    """Health filtering, then the policy: the replica that gets ``request``. ``replicas``: the
    router's candidates, or any views (made into candidates here, a pass over them)."""
    if not isinstance(replicas, Candidates):
        replicas = Pool(replicas).candidates()
    healthy = replicas.without(exclude)
    if not healthy:
        raise NoReplicaError(f"no replica is ready (replicas: {healthy.describe() or 'none registered'})")
    return policy.select(healthy, request)
