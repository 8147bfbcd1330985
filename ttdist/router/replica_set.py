"""The replicas as one router knows them: the routing table, a channel and a stream to each,
the replicas it suspects, and its own count of the streams it has on each.

``ReplicaSet`` keeps the last table (``apply``) and drops the channel and ``ReplicaLink`` of a
replica that left it. Its ``views`` are what a routing policy sees: per replica the larger of
the heartbeat's load and this router's own (fresher) count, and ``SUSPECT`` as the state of a
replica a request just moved away from, for ``suspect_s`` or until it restarts (a new pid).
It keeps them in a ``Pool`` (policies/candidates.py): rebuilt with each table, and one
replica's view at a time as this router's streams there queue, start and end, so that
``candidates`` (the ready ones, less suspects) costs no pass over every replica.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import grpc

from ttdist.router.policies import ReplicaView
from ttdist.router.policies.candidates import Candidates, Pool
from ttdist.router.replica_link import ReplicaLink
from ttdist.runtime.auth import cluster_channel
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.runtime.routing_table import WHOLE, ReplicaEntry, RoutingTable, TableVersion
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

SUSPECT = "suspect"
ABORT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Suspect:
    """A replica incarnation (address + pid) the router skips until ``until`` (monotonic)."""

    address: str
    pid: int
    until: float

    def covers(self, entry: ReplicaEntry, now: float) -> bool:
        return (entry.address, entry.pid) == (self.address, self.pid) and now < self.until


@dataclass
class Load:
    """This router's streams on one replica: waiting for a first token (with their prompt
    tokens) or running. ``on_change`` is called after each change (the set's pool follows it)."""

    running: int = 0
    waiting: int = 0
    pending_prefill_tokens: int = 0
    on_change: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def queued(self, prompt_tokens: int) -> None:
        self.waiting += 1
        self.pending_prefill_tokens += prompt_tokens
        self._changed()

    def started(self, prompt_tokens: int) -> None:
        """The stream's first token came: it runs now."""
        self._unqueue(prompt_tokens)
        self.running += 1
        self._changed()

    def ended(self, prompt_tokens: int, started: bool) -> None:
        if started:
            self.running -= 1
        else:
            self._unqueue(prompt_tokens)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _unqueue(self, prompt_tokens: int) -> None:
        self.waiting -= 1
        self.pending_prefill_tokens -= prompt_tokens


class ReplicaSet:
    def __init__(self, cluster_token: str, suspect_s: float) -> None:
        self.cluster_token = cluster_token
        self.suspect_s = suspect_s
        self._table: RoutingTable | None = None
        self._by_id: dict[str, ReplicaEntry] = {}
        self._whole: TableVersion | None = None   # the version of the whole table held (None: ask for it whole)
        self.pool = Pool()   # the table's views with this router's loads, no suspects
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.GenerationStub]] = {}
        self.links: dict[str, ReplicaLink] = {}
        self.loads: dict[str, Load] = {}
        self.suspects: dict[str, Suspect] = {}

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            raise RuntimeError("the router has no routing table yet: call start()")
        return self._table

    def apply(self, table: RoutingTable) -> None:
        """Take ``table`` (a whole one, or the changes since the one held: merged into it); the
        channels and links to addresses no longer in it close. An entry whose prefix set is
        unchanged gets its hashes from the entry held."""
        changed = None
        if table.changes_since != WHOLE:
            changed = {e.replica_id for e in table.replicas}
            merged = self._merged(table)
            if merged is None:
                return
            table = merged
        if any(e.prefix_unchanged for e in table.replicas):
            table = replace(table, replicas=tuple(self._with_prefixes(e) for e in table.replicas))
        same_ids = (changed is not None and len(table.replicas) == len(self._by_id)
                    and all(r in self._by_id for r in changed))
        self._table = table
        self._whole = table.version
        self._by_id = {e.replica_id: e for e in table.replicas}
        if same_ids:   # the same replicas: only the changed views change
            for replica_id in changed:
                self.pool.update(self._view(self._by_id[replica_id]))
        else:
            self.pool.set_views(self._view(e) for e in table.replicas)
        self._close_gone({e.address for e in table.replicas})

    def _merged(self, table: RoutingTable) -> RoutingTable | None:
        """The table held with ``table``'s changes; None when they cannot apply to it (another
        registry's, older than it, or after changes it does not have): the next report asks for
        the whole table."""
        held = self._table.version if self._table is not None else None
        if (held is None or table.version is None or held.epoch != table.version.epoch
                or held.change < table.changes_since):
            self._whole = None
            return None
        if table.version.change <= held.change:   # a concurrent refresh's older answer: nothing new
            return None
        changed = {e.replica_id: e for e in table.replicas}
        if any(r not in changed and r not in self._by_id for r in table.replica_ids):
            self._whole = None
            return None
        entries = tuple(changed.get(r) or self._by_id[r] for r in table.replica_ids)
        return replace(table, replicas=entries, changes_since=WHOLE, replica_ids=())

    @property
    def table_version(self) -> TableVersion | None:
        """The version of the whole table held (for the coordinator's next table; None: send it whole)."""
        return self._whole

    def _close_gone(self, addresses: set[str]) -> None:
        for address in [a for a in self._stubs if a not in addresses]:
            link = self.links.pop(address, None)
            if link is not None:
                asyncio.get_running_loop().create_task(link.close())
            channel, _ = self._stubs.pop(address)
            asyncio.get_running_loop().create_task(channel.close())

    def _with_prefixes(self, entry: ReplicaEntry) -> ReplicaEntry:
        if not entry.prefix_unchanged:
            return entry
        held = self._by_id.get(entry.replica_id)
        if held is not None and (held.pid, held.prefix_seq) == (entry.pid, entry.prefix_seq):
            return replace(entry, prefix_hashes=held.prefix_hashes, tier_prefix_hashes=held.tier_prefix_hashes,
                           prefix_unchanged=False)
        # not the set held (a concurrent refresh took another): none now, the whole set next time
        return replace(entry, prefix_seq=-1, prefix_unchanged=False)

    def prefix_held(self) -> dict[str, tuple[int, int]]:
        """Per replica, the (pid, prefix_seq) of the prefix set held (for the coordinator's next table)."""
        if self._table is None:
            return {}
        return {e.replica_id: (e.pid, e.prefix_seq) for e in self._table.replicas if e.prefix_seq >= 0}

    def gone(self, replica_id: str) -> bool:
        """The replica left the table or the table marks it failed."""
        entry = self._by_id.get(replica_id)
        return entry is None or entry.state == ReplicaState.FAILED

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
        self.links.clear()
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()

    def entry(self, replica_id: str) -> ReplicaEntry | None:
        """The table's entry for ``replica_id`` (None: not in it)."""
        return self._by_id.get(replica_id)

    def _view(self, e: ReplicaEntry) -> ReplicaView:
        load = self.loads.get(e.replica_id)
        if load is None:
            return ReplicaView(e.replica_id, e.state, e.running, e.waiting, 0, e.prefix_hashes, e.tier_prefix_hashes)
        return ReplicaView(e.replica_id, e.state, max(e.running, load.running), max(e.waiting, load.waiting),
                           load.pending_prefill_tokens, e.prefix_hashes, e.tier_prefix_hashes)

    def _load_changed(self, replica_id: str) -> None:
        entry = self._by_id.get(replica_id)
        if entry is not None:
            self.pool.update(self._view(entry))

    def _suspected(self) -> frozenset[str]:
        """The replicas suspect now (their incarnation moved a request away within ``suspect_s``)."""
        if not self.suspects:
            return frozenset()
        now = time.monotonic()
        for replica_id in [r for r, s in self.suspects.items() if now >= s.until]:   # expired for good
            del self.suspects[replica_id]
        return frozenset(r for r, s in self.suspects.items() if r in self._by_id and s.covers(self._by_id[r], now))

    def views(self) -> list[ReplicaView]:
        """One view per replica, in id order (``SUSPECT`` the state of a suspect one)."""
        suspected = self._suspected()
        return [replace(v, state=SUSPECT) if v.replica_id in suspected else v for v in self.pool.views]

    def candidates(self) -> Candidates:
        """The ready replicas a policy may choose among now: suspects left out."""
        suspected = self._suspected()
        return self.pool.candidates(suspected, dict.fromkeys(suspected, SUSPECT))

    def load(self, replica_id: str) -> Load:
        load = self.loads.get(replica_id)
        if load is None:
            load = self.loads[replica_id] = Load(on_change=partial(self._load_changed, replica_id))
        return load

    def suspect(self, entry: ReplicaEntry) -> None:
        """Skip ``entry``'s incarnation for ``suspect_s``."""
        self.suspects[entry.replica_id] = Suspect(entry.address, entry.pid, time.monotonic() + self.suspect_s)

    def stub(self, address: str) -> pb_grpc.GenerationStub:
        if address not in self._stubs:
            channel = cluster_channel(address, self.cluster_token)
            self._stubs[address] = (channel, pb_grpc.GenerationStub(channel))
        return self._stubs[address][1]

    def link(self, address: str) -> ReplicaLink:
        """The one stream to ``address`` that all of this router's requests there share."""
        link = self.links.get(address)
        if link is None or link.broken:
            self.stub(address)
            link = self.links[address] = ReplicaLink(self._stubs[address][0])
        return link

    async def abort(self, address: str, request_id: str) -> bool | None:
        """Abort ``request_id`` on the replica at ``address``: whether it was there, None when
        the replica did not answer."""
        try:
            return (await self.stub(address).Abort(pb.AbortRequest(request_id=request_id),
                                                   timeout=ABORT_TIMEOUT_S)).found
        except grpc.aio.AioRpcError:
            return None

    async def live_entry(self, entry: ReplicaEntry, timeout_s: float) -> ReplicaEntry:
        """``entry`` with the load its replica reports now (as it was when it does not answer)."""
        if entry.state not in (ReplicaState.READY, ReplicaState.UNHEALTHY) or not entry.address:
            return entry
        try:
            answer = await self.stub(entry.address).GetClusterStatus(pb.ClusterStatusRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return entry
        live = next((r for r in answer.replicas if r.replica_id == entry.replica_id), None)
        if live is None:
            return entry
        return replace(entry, running=live.running, waiting=live.waiting, kv_pages_free=live.kv_pages_free,
                       tokens_per_second=live.tokens_per_second, kv_user_groups=live.kv_user_groups or 1,
                       kv_pages_free_per_group=tuple(live.kv_pages_free_per_group))
