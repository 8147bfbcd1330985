"""The one configuration object of a replica's engine."""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.engine.errors import UserGroupsError
from ttdist.engine.faults import NO_FAULTS, EngineFaults
from ttdist.engine.kv_tiers.config import KvTierConfig
from ttdist.engine.runner import RunnerInfo


@dataclass(frozen=True)
class EngineConfig:
    """``max_batch`` is capped by the runner's; ``prefill_chunk`` must be a multiple of the page size."""

    max_batch: int = 32
    max_waiting: int = 256
    prefill_chunk: int = 256
    default_max_tokens: int = 256
    prefix_caching: bool = True
    stats_window_s: float = 10.0
    latency_samples: int = 1024
    faults: EngineFaults = NO_FAULTS      # faults caused on purpose (tests); none by default
    kv_tiers: KvTierConfig = KvTierConfig()   # KV pages kept off the chips once evicted; off by default

    def check(self, info: RunnerInfo) -> None:
        """Raise ValueError naming the setting that cannot work with this runner (UserGroupsError
        when the runner's user groups do not split its batch and pages evenly)."""
        groups = info.user_groups
        if groups < 1:
            raise UserGroupsError(f"RunnerInfo.user_groups must be >= 1, got {groups}")
        if info.max_batch % groups:
            raise UserGroupsError(
                f"RunnerInfo.max_batch={info.max_batch} is not divisible by user_groups={groups}: "
                "every user group needs the same number of decode slots"
            )
        if info.num_pages % groups:
            raise UserGroupsError(
                f"RunnerInfo.num_pages={info.num_pages} is not divisible by user_groups={groups}: "
                "every user group needs the same number of KV pages"
            )
        if self.max_batch < 1:
            raise ValueError(f"EngineConfig.max_batch must be >= 1, got {self.max_batch}")
        if self.max_waiting < 0:
            raise ValueError(f"EngineConfig.max_waiting must be >= 0, got {self.max_waiting}")
        if self.prefill_chunk < info.page_size or self.prefill_chunk % info.page_size:
            raise ValueError(
                f"EngineConfig.prefill_chunk={self.prefill_chunk} must be a positive multiple of the "
                f"page size {info.page_size}"
            )
        if self.default_max_tokens < 1:
            raise ValueError(f"EngineConfig.default_max_tokens must be >= 1, got {self.default_max_tokens}")
        self.kv_tiers.check()
        if self.stats_window_s <= 0 or self.latency_samples < 1:
            raise ValueError("EngineConfig.stats_window_s must be > 0 and latency_samples >= 1")
