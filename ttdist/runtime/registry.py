"""The coordinator's registry of replicas and their health state machine (plain Python).

States: ``starting -> ready <-> unhealthy -> failed``; ``failed -> starting`` again when the
coordinator restarts the replica. Inputs are timestamps the caller passes in, so the
machine is tested without clocks or Ray:

- ``started``: the replica's server is up -> ready.
- ``heartbeat``: fresh stats; an unhealthy replica becomes ready again.
- ``tick(now)``: a ready replica whose last heartbeat is older than ``unhealthy_after_s``
  becomes unhealthy; one unhealthy for ``failed_after_s`` becomes failed; one starting for
  longer than ``start_timeout_s`` becomes failed.
- ``heartbeat`` for a ``recovering`` record (a restarted coordinator rebuilds its registry
  from the config, every record starting): the replica re-registers from the heartbeat's
  pid / node / address -> ready; one not heard from within ``unhealthy_after_s +
  failed_after_s`` -> failed.
- ``draining``: taken out of routing on purpose (restart or removal) -> draining; its streams
  finish or move before it stops.
- ``failed``: a definite failure (its process is gone, its start raised) -> failed at once.
- ``start_failed``: its start raised ``err``. A ``PermanentError`` (a missing or corrupt file, a
  mesh the model does not fit, a backend not installed: the error's class says so where it is
  raised) leaves it "failed (cannot start)": ``cannot_start`` set, never restarted, an event
  ``replica_cannot_start``. Any other error fails it like ``failed`` and the backoff below applies.
- ``heartbeat`` carrying the engine's liveness: a step loop that died -> failed at once; one
  that has work but made no step for ``stall_after_s`` -> unhealthy (and not ready again
  until it steps), then failed after ``failed_after_s`` like any unhealthy replica.
- ``due_restarts(now)``: the failed replicas to restart now: failed for ``restart_delay_s``
  (so operators and the dashboard see the failed state first), none when ``restart`` is off.
  The delay doubles with each failure in a row (``restart_backoff_max_s`` at most); a
  replica that stays ready ``stable_after_s`` starts the count again. After
  ``crash_loop_failures`` in a row it is "failed (crash loop)": ``crash_loop`` set, never
  restarted, ``reason`` saying why it last failed.
Every transition appends an ``Event``; ``events_after`` pages through them by number (the
serve console follows them), ``none_can_start`` says when no replica can ever serve.

Each record carries the number of its last change that a router would see (``change``, from one
clock: any assignment to a field its ``entry`` shows, when the value differs; a heartbeat whose
figures are the last one's changes nothing), so a router's next table lists only the replicas
changed after its last (table_changes.py).
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field, replace

from ttdist.dashboard.events import Event, EventKind
from ttdist.dashboard.replica_state import ReplicaState, state_label
from ttdist.dashboard.status import HistogramSnapshot
from ttdist.engine.kv_tiers.stats import KvTierStats
from ttdist.engine.stats import EngineLiveness
from ttdist.errors import PermanentError
from ttdist.model.kv_budget import ReplicaMemory
from ttdist.runtime.config import HealthConfig
from ttdist.runtime.prefix_delta import FULL, PrefixDelta, apply_delta, apply_tier_delta
from ttdist.runtime.routing_table import ReplicaEntry


@dataclass(frozen=True)
class Heartbeat:
    """What a replica reports every ``heartbeat_s`` (and when a request starts or ends).

    The histograms are the replica's TTFT and inter-token latencies since it started
    (None from a replica that does not measure them).
    """

    running: int
    waiting: int
    free_pages: int
    total_pages: int
    prefix_hit_rate: float
    tokens_per_second: float
    prompt_tokens_total: int
    generation_tokens_total: int
    requests_finished_total: int = 0
    prefix_hashes: frozenset[int] = frozenset()   # as the registry holds them (the replica sends ``prefix_delta``)
    prefix_delta: PrefixDelta | None = None       # what changed in the replica's cached page hashes
    tier_prefix_hashes: frozenset[int] = frozenset()   # pages its KV tiers could restore, as the registry holds them
    ttft_histogram: HistogramSnapshot | None = None
    inter_token_histogram: HistogramSnapshot | None = None
    engine: EngineLiveness | None = None   # the step loop's liveness (None: not reported)
    pid: int = 0              # the incarnation that sent it: a restarted coordinator
    node_id: str = ""         # re-registers the replica from these
    address: str = ""
    memory: ReplicaMemory | None = None   # KV budget and chip DRAM from the replica's ledger
    kv_user_groups: int = 1               # KV user groups (a Galaxy's column groups); pages above are totals
    kv_pages_free_per_group: tuple[int, ...] = ()   # group g's free pages, by group id (() from older replicas)
    kv_tiers: KvTierStats | None = None   # the replica's host and node KV tiers (None: not reported)


class ChangeClock:
    """Numbers changes in order: ``tick`` a new one, ``now`` the last."""

    def __init__(self) -> None:
        self._count = itertools.count(1)
        self.now = 0

    def tick(self) -> int:
        self.now = next(self._count)
        return self.now


CHANGES = ChangeClock()   # one clock for every record: a table's version is a point on it

# The record fields its routing-table entry shows: assigning a different value is a change.
ENTRY_FIELDS = frozenset({"replica_id", "address", "state", "pid", "model", "node_id", "mesh", "backend",
                          "kv_pages_total", "kv_pages_budget", "memory", "crash_loop", "prefix_seq", "prefix_hashes",
                          "tier_prefix_hashes"})
_UNSET = object()


def _figures(beat: Heartbeat | None) -> tuple | None:
    """The part of a heartbeat a routing-table entry shows."""
    if beat is None:
        return None
    return (beat.free_pages, beat.running, beat.waiting, beat.tokens_per_second, beat.prefix_hashes,
            beat.tier_prefix_hashes, beat.kv_user_groups, beat.kv_pages_free_per_group, beat.kv_tiers)


@dataclass
class ReplicaRecord:
    replica_id: str
    group: int
    mesh: str
    backend: str
    devices: tuple[int, ...] = ()
    state: ReplicaState = ReplicaState.STARTING
    since: float = 0.0
    pid: int = 0
    node_id: str = ""
    address: str = ""
    kv_pages_budget: int = 0
    kv_pages_total: int = 0
    weights_via: str = ""
    last_heartbeat: float = 0.0
    stats: Heartbeat | None = None
    restarts: int = 0
    memory: ReplicaMemory | None = None   # from the replica once started (and in its heartbeats)
    recovering: bool = False     # known from the config after a coordinator restart, not yet heard from
    reason: str = ""             # why it entered its state (the last transition's message)
    failures_in_row: int = 0     # failures without staying ready ``stable_after_s`` in between
    ready_since: float | None = None
    crash_loop: bool = False     # failed too often in a row: left failed, not restarted
    cannot_start: bool = False   # its start failed for good (a PermanentError): left failed, not restarted
    prefix_hashes: frozenset[int] = frozenset()   # its cached page hashes, built from heartbeat deltas
    prefix_seq: int = FULL                        # the number of that set (FULL: none held)
    tier_prefix_hashes: frozenset[int] = frozenset()   # the pages its KV tiers could restore (same deltas, same seq)
    model: str = ""                               # the served model's name (its pool; ``group`` indexes its groups)
    change: int = field(default=0, repr=False, compare=False)   # its entry's last change (``CHANGES``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "change", CHANGES.tick())   # a new record is a change

    def __setattr__(self, name: str, value) -> None:
        if name in ENTRY_FIELDS:
            old = self.__dict__.get(name, _UNSET)
            if old is not value and (old is _UNSET or old != value):
                object.__setattr__(self, "change", CHANGES.tick())
        elif name == "stats" and _figures(self.__dict__.get("stats")) != _figures(value):
            object.__setattr__(self, "change", CHANGES.tick())
        object.__setattr__(self, name, value)

    def prefix_missing(self, held: tuple[int, int] | None) -> bool:
        """Its entry has a numbered prefix set that a router holding ``held`` does not hold."""
        s = self.stats
        return (s is not None and self.prefix_seq != FULL and s.prefix_hashes is self.prefix_hashes
                and held != (self.pid, self.prefix_seq))

    @property
    def state_label(self) -> str:
        if self.cannot_start:
            return f"{self.state} (cannot start)"
        return state_label(self.state, self.crash_loop)

    def entry(self, held: tuple[int, int] | None = None) -> ReplicaEntry:
        """As the router needs it; ``held``: the (pid, prefix_seq) the asking router holds (its
        hashes are left out when they are still that set)."""
        s = self.stats
        numbered = s is not None and self.prefix_seq != FULL and s.prefix_hashes is self.prefix_hashes
        seq = self.prefix_seq if numbered else FULL
        unchanged = numbered and held == (self.pid, seq)
        return ReplicaEntry(
            replica_id=self.replica_id, address=self.address, state=self.state, pid=self.pid, model=self.model,
            node_id=self.node_id, mesh=self.mesh, backend=self.backend, kv_pages_total=self.kv_pages_total,
            kv_pages_free=s.free_pages if s else self.kv_pages_total, running=s.running if s else 0,
            waiting=s.waiting if s else 0, tokens_per_second=s.tokens_per_second if s else 0.0,
            prefix_hashes=s.prefix_hashes if s and not unchanged else frozenset(),
            tier_prefix_hashes=s.tier_prefix_hashes if s and not unchanged else frozenset(), kv_pages_budget=self.memory.kv_pages_budget if self.memory else self.kv_pages_budget,
            kv_pages_capped_by_host=bool(self.memory and self.memory.kv_pages_capped_by_host),
            dram=self.memory.dram if self.memory else None, crash_loop=self.crash_loop,
            kv_user_groups=s.kv_user_groups if s else 1, kv_pages_free_per_group=s.kv_pages_free_per_group if s else (),
            kv_tiers=s.kv_tiers if s else None, prefix_seq=seq, prefix_unchanged=unchanged,
        )


class NoReplicaCanStartError(PermanentError):
    """Every replica's start failed with a ``PermanentError``: the message gives their reasons."""


@dataclass(frozen=True)
class EventPage:
    """The events numbered after the caller's ``seen`` (those still held), and the number of the last."""

    last: int
    events: tuple[Event, ...]
    none_can_start: str = ""   # why no replica can ever start ("" while one can)


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line (a traceback-free reason for the dashboard and the console)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


@dataclass
class Registry:
    health: HealthConfig
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    max_events: int = 500
    logged: int = 0   # events appended so far: the number of the newest
    event_counts: dict[tuple[str, str], int] = field(default_factory=dict)   # (model, kind) -> events so far
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:12])   # numbers its changes (a restart: another)

    def add(self, record: ReplicaRecord, now: float) -> None:
        record.state, record.since = ReplicaState.STARTING, now
        self.replicas[record.replica_id] = record

    def event(self, kind: EventKind, replica_id: str, message: str, model: str = "") -> None:
        """Record one event; ``model`` names the served model of one with no replica (a scaling decision)."""
        self.record([Event(time.time(), kind, replica_id, message, model)])

    def record(self, events: list[Event]) -> None:
        """Append ``events`` (this registry's or a router's) to the bounded ring, numbering them."""
        self.events.extend(events)
        self.logged += len(events)
        for e in events:   # a replica's events count under its model (or the one named); cluster-wide ones under ""
            record = self.replicas.get(e.replica_id)
            key = (e.model or (record.model if record is not None else ""), str(e.kind))
            self.event_counts[key] = self.event_counts.get(key, 0) + 1
        del self.events[: -self.max_events]

    def events_after(self, seen: int) -> EventPage:
        """The events numbered above ``seen`` that the ring still holds (all of them when ``seen``
        is past the newest: a restarted coordinator numbers from 0 again)."""
        new = len(self.events) if seen > self.logged else min(self.logged - seen, len(self.events))   # a new log
        return EventPage(self.logged, tuple(self.events[len(self.events) - new:]), self.none_can_start())

    def none_can_start(self) -> str:
        """Why no replica can ever start (every one failed with a PermanentError); "" otherwise."""
        records = list(self.replicas.values())
        if not records or not all(r.cannot_start for r in records):
            return ""
        reasons = list(dict.fromkeys(r.reason for r in records))
        if len(reasons) == 1:
            return reasons[0]
        return "; ".join(f"{r.replica_id}: {r.reason}" for r in records)

    def may_serve(self, r: ReplicaRecord) -> bool:
        """Whether ``r`` is ready or may still become ready (not failed for good)."""
        return not (r.state == ReplicaState.FAILED and (r.cannot_start or r.crash_loop or not self.health.restart))

    def _move(self, record: ReplicaRecord, state: ReplicaState, now: float, kind: EventKind, why: str) -> None:
        if state == ReplicaState.FAILED:
            self._count_failure(record, now, why)
        record.state, record.since, record.reason = state, now, why
        self.event(kind, record.replica_id, why)

    def _count_failure(self, r: ReplicaRecord, now: float, why: str) -> None:
        stable = r.ready_since is not None and now - r.ready_since >= self.health.stable_after_s
        r.failures_in_row = 1 if stable else r.failures_in_row + 1
        r.ready_since = None
        if r.failures_in_row >= self.health.crash_loop_failures and self.health.restart and not r.cannot_start:
            r.crash_loop = True
            self.event(EventKind.REPLICA_CRASH_LOOP, r.replica_id,
                       f"failed {r.failures_in_row} times in a row; not restarted again (last: {why})")

    def restart_delay(self, r: ReplicaRecord) -> float:
        """How long a failed replica waits before its restart: doubling per failure in a row."""
        h = self.health
        cap = max(h.restart_backoff_max_s, h.restart_delay_s)
        return min(h.restart_delay_s * 2 ** max(0, r.failures_in_row - 1), cap)

    def started(self, replica_id: str, now: float, *, pid: int, node_id: str, address: str, kv_pages_total: int) -> None:
        r = self.replicas[replica_id]
        r.pid, r.node_id, r.address, r.kv_pages_total = pid, node_id, address, kv_pages_total
        r.last_heartbeat = now
        kind = EventKind.REPLICA_RESTARTED if r.restarts else EventKind.REPLICA_STARTED
        r.ready_since = now
        self._move(r, ReplicaState.READY, now, kind,
                   f"pid {pid} on {node_id[:12]} serving {address} ({r.mesh} {r.backend})")

    def heartbeat(self, replica_id: str, beat: Heartbeat, now: float) -> int:
        """Take ``beat``; returns the number of the prefix-hash set now held for the replica."""
        r = self.replicas.get(replica_id)
        if r is not None and beat.prefix_delta is not None:
            merged = apply_delta(r.prefix_hashes, r.prefix_seq, beat.prefix_delta)
            if merged is not None:
                r.prefix_hashes, r.prefix_seq = merged
                r.tier_prefix_hashes = apply_tier_delta(r.tier_prefix_hashes, beat.prefix_delta)
            beat = replace(beat, prefix_hashes=r.prefix_hashes, tier_prefix_hashes=r.tier_prefix_hashes, prefix_delta=None)
        self._heartbeat(r, beat, now)
        return r.prefix_seq if r is not None else FULL

    def _heartbeat(self, r: ReplicaRecord | None, beat: Heartbeat, now: float) -> None:
        serving = r is not None and r.state in (ReplicaState.READY, ReplicaState.UNHEALTHY)
        if serving and beat.engine is not None and not self._engine_ok(r, beat, now):
            return
        if r is not None and r.recovering and beat.address:
            self.reregistered(r, beat, now)
            return
        if r is None or r.state in (ReplicaState.FAILED, ReplicaState.STARTING):
            return
        r.stats, r.last_heartbeat = beat, now
        if r.state == ReplicaState.UNHEALTHY:
            self._move(r, ReplicaState.READY, now, EventKind.REPLICA_RECOVERED, "heartbeats resumed")

    def reregistered(self, r: ReplicaRecord, beat: Heartbeat, now: float) -> None:
        """A replica that outlived the coordinator heartbeats the restarted one: ready again."""
        r.pid, r.node_id, r.address, r.kv_pages_total = beat.pid, beat.node_id, beat.address, beat.total_pages
        r.stats, r.last_heartbeat, r.recovering, r.ready_since = beat, now, False, now
        self._move(r, ReplicaState.READY, now, EventKind.REPLICA_REREGISTERED,
                   f"pid {beat.pid} serving {beat.address} after a coordinator restart")

    def draining(self, replica_id: str, now: float, why: str) -> None:
        """Taken out of routing on purpose (restart or removal): its streams finish or move."""
        r = self.replicas[replica_id]
        if r.state in (ReplicaState.READY, ReplicaState.UNHEALTHY):
            self._move(r, ReplicaState.DRAINING, now, EventKind.REPLICA_DRAINING, why)

    def _engine_ok(self, r: ReplicaRecord, beat: Heartbeat, now: float) -> bool:
        """Apply the engine liveness a heartbeat carries; False when it says the engine is not serving."""
        engine = beat.engine
        r.stats, r.last_heartbeat = beat, now
        if not engine.alive:
            self._move(r, ReplicaState.FAILED, now, EventKind.REPLICA_FAILED, f"engine stopped: {engine.error}")
            return False
        if engine.stalled(self.health.stall_after_s):
            if r.state == ReplicaState.READY:
                self._move(r, ReplicaState.UNHEALTHY, now, EventKind.REPLICA_UNHEALTHY,
                           f"engine made no step for {engine.last_step_age_s:.1f} s with work waiting")
            return False
        return True

    def failed(self, replica_id: str, now: float, why: str) -> None:
        r = self.replicas.get(replica_id)
        if r is not None and r.state != ReplicaState.FAILED:
            self._move(r, ReplicaState.FAILED, now, EventKind.REPLICA_FAILED, why)

    def start_failed(self, replica_id: str, now: float, err: BaseException) -> None:
        """Its start raised ``err``: failed; for good when ``err`` is a ``PermanentError``."""
        r = self.replicas.get(replica_id)
        if r is None or r.state == ReplicaState.FAILED:
            return
        r.cannot_start = isinstance(err, PermanentError)
        self._move(r, ReplicaState.FAILED, now, EventKind.REPLICA_FAILED, f"start failed: {one_line(err)}")
        if r.cannot_start:
            self.event(EventKind.REPLICA_CANNOT_START, replica_id, "retrying cannot help: not restarted")

    def unhealthy(self, replica_id: str, now: float, why: str) -> None:
        r = self.replicas.get(replica_id)
        if r is not None and r.state == ReplicaState.READY:
            self._move(r, ReplicaState.UNHEALTHY, now, EventKind.REPLICA_UNHEALTHY, why)

    def tick(self, now: float) -> None:
        h = self.health
        for r in self.replicas.values():
            if r.state == ReplicaState.READY and now - r.last_heartbeat > h.unhealthy_after_s:
                self._move(r, ReplicaState.UNHEALTHY, now, EventKind.REPLICA_UNHEALTHY,
                           f"no heartbeat for {now - r.last_heartbeat:.1f} s")
            elif r.state == ReplicaState.UNHEALTHY and now - r.since > h.failed_after_s:
                self._move(r, ReplicaState.FAILED, now, EventKind.REPLICA_FAILED, f"unhealthy for {now - r.since:.1f} s")
            elif r.state == ReplicaState.STARTING and r.recovering and now - r.since > h.unhealthy_after_s + h.failed_after_s:
                r.recovering = False
                self._move(r, ReplicaState.FAILED, now, EventKind.REPLICA_FAILED,
                           f"no heartbeat {now - r.since:.1f} s after a coordinator restart")
            elif r.state == ReplicaState.STARTING and now - r.since > h.start_timeout_s:
                self._move(r, ReplicaState.FAILED, now, EventKind.REPLICA_FAILED,
                           f"not started after {now - r.since:.0f} s")

    def due_restarts(self, now: float) -> list[str]:
        if not self.health.restart:
            return []
        return [rid for rid, r in self.replicas.items()
                if r.state == ReplicaState.FAILED and not (r.crash_loop or r.cannot_start) and now - r.since >= self.restart_delay(r)]

    def restarting(self, replica_id: str, now: float) -> None:
        r = self.replicas[replica_id]
        r.restarts += 1
        r.stats, r.pid, r.address = None, 0, ""
        self._move(r, ReplicaState.STARTING, now, EventKind.REPLICA_RESTARTING,
                   f"restart {r.restarts} after {now - r.since:.1f} s failed")

    def entries(self, model: str | None = None, held: dict[str, tuple[int, int]] | None = None) -> tuple[ReplicaEntry, ...]:
        """The replicas as the router needs them; only ``model``'s pool when it is given; ``held``:
        the prefix sets the asking router holds (``RouterReport.prefix_held``)."""
        held = held or {}
        return tuple(r.entry(held.get(r.replica_id)) for r in self.pool(model))

    def pool(self, model: str | None = None) -> list[ReplicaRecord]:
        """The records, in replica-id order; only ``model``'s pool when it is given."""
        return sorted((r for r in self.replicas.values() if model is None or r.model == model), key=lambda r: r.replica_id)
