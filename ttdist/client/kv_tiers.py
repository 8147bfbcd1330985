"""A replica's KV tiers as the client sees them (``ReplicaStatus.kv_tiers``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ttdist.v1 import generation_pb2 as pb


@dataclass(frozen=True)
class KvTier:
    """One KV tier of a replica (its host memory, or the node store it shares): see ``pb.KvTierCounters``."""

    capacity_bytes: int = 0
    pages: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class KvTiers:
    """A replica's KV tiers (``pb.KvTierStatus``); ``enabled`` False: the replica keeps no KV off its chips."""

    enabled: bool = False
    host: KvTier = field(default_factory=KvTier)
    node: KvTier = field(default_factory=KvTier)
    offloaded_pages: int = 0
    restored_pages: int = 0
    restored_tokens: int = 0
    restore_fallbacks: int = 0
    restore_seconds_total: float = 0.0
    offload_seconds_total: float = 0.0

    @classmethod
    def from_proto(cls, msg: pb.KvTierStatus) -> KvTiers:
        def tier(m):
            return KvTier(**{f.name: getattr(m, f.name) for f in fields(KvTier)})
        values = {f.name: getattr(msg, f.name) for f in fields(cls)}
        values["host"], values["node"] = tier(msg.host), tier(msg.node)
        return cls(**values)
