"""Counters of the KV tiers, reported per tier in ``EngineStats.kv_tiers``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TierCounters:
    """One tier (``host``: this replica's memory; ``node``: the store shared by the replicas of a host).

    ``hits`` / ``misses`` count pages looked up at admission past the device cache; ``bytes_in`` are
    written into the tier (offloads), ``bytes_out`` read from it for restores."""

    capacity_bytes: int = 0
    pages: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: int = 0      # entries not used: failed their checksum, another model/layout, unreadable


@dataclass
class KvTierStats:
    """The tiers of one engine. ``offloaded_pages``: pages read off the chips as they were evicted;
    ``restored_pages`` written back into fresh device pages; ``restore_fallbacks``: restores given
    up (not ready in time, a bad entry, the request aborted or preempted) whose tokens are recomputed."""

    enabled: bool = False
    host: TierCounters = field(default_factory=TierCounters)
    node: TierCounters = field(default_factory=TierCounters)
    offloaded_pages: int = 0
    restored_pages: int = 0
    restored_tokens: int = 0
    restore_fallbacks: int = 0
    restore_s_total: float = 0.0       # time restores took, from admission until their pages were written
    offload_s_total: float = 0.0       # time spent reading evicted pages off the chips
