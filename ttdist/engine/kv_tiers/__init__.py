"""KV cache tiers beyond the chips: a host-memory tier per replica and a node tier per host."""

from ttdist.engine.kv_tiers.block import KvBlock
from ttdist.engine.kv_tiers.config import KvTierConfig, KvTierSizeError, host_ram_bytes, parse_size
from ttdist.engine.kv_tiers.host_tier import HostTier
from ttdist.engine.kv_tiers.node_tier import NodeTier
from ttdist.engine.kv_tiers.stats import KvTierStats, TierCounters
from ttdist.engine.kv_tiers.tiers import InlineExecutor, KvTiers, PendingRestore

__all__ = ["HostTier", "InlineExecutor", "KvBlock", "KvTierConfig", "KvTierSizeError", "KvTierStats", "KvTiers", "NodeTier",
           "PendingRestore", "TierCounters", "host_ram_bytes", "parse_size"]
