"""What a replica reports of its engine (its status entry and its heartbeat), without Ray."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ttdist.engine.stats import EngineLiveness, EngineStats
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.replica import ReplicaActor, ReplicaSetup


@dataclass
class _StatsEngine:
    """An engine that only answers what the replica asks it for its reports."""

    user_groups: int
    free_pages_per_group: list[int]

    async def read_stats(self) -> EngineStats:
        return EngineStats(
            running=2, waiting=1, free_pages=sum(self.free_pages_per_group) or 466, total_pages=512, cached_pages=0,
            page_size=32, max_batch=32, prefix_hit_rate=0.0, tokens_per_second=9.0, prompt_tokens_total=0,
            generation_tokens_total=0, cached_tokens_total=0, requests_finished_total=0, requests_aborted_total=0,
            preemptions_total=0, prefill_steps_total=0, decode_steps_total=0, user_groups=self.user_groups,
            free_pages_per_group=self.free_pages_per_group,
        )

    def liveness(self) -> EngineLiveness:
        return EngineLiveness(alive=True, has_work=True, last_step_age_s=0.0, steps_total=3)

    async def read_prefix_hashes(self) -> list[int]:
        return []


@pytest.mark.parametrize("groups, free", [(4, [120, 128, 128, 90]), (1, [])])
async def test_status_entry_and_heartbeat_carry_the_user_groups(monkeypatch, groups, free):
    monkeypatch.setattr(ReplicaActor, "node_id", lambda self: "node-a")
    actor = ReplicaActor(ReplicaSetup("tg-0", "8x4", "sim", ModelCard("m", 100, 64)))
    actor.engine = _StatsEngine(groups, free)
    entry, beat = await actor._entry(), await actor.heartbeat()
    assert (entry.kv_pages_free, entry.kv_user_groups, entry.kv_pages_free_per_group) == (466, groups, tuple(free))
    assert (beat.free_pages, beat.kv_user_groups, beat.kv_pages_free_per_group) == (466, groups, tuple(free))
    msg = entry.to_proto()   # what the replica's GetClusterStatus answers
    assert (msg.kv_user_groups, list(msg.kv_pages_free_per_group)) == (groups, free)
