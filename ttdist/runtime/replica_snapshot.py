"""A registry record as the dashboard shows it (``ReplicaSnapshot``): state, load, chips, latency."""

from __future__ import annotations

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import CHIP_OK, ChipSnapshot, ReplicaSnapshot
from ttdist.mesh.spec import parse_mesh
from ttdist.runtime.registry import ReplicaRecord


def replica_snapshot(r: ReplicaRecord, now: float) -> ReplicaSnapshot:
    spec = parse_mesh(r.mesh)
    d = r.memory.dram if r.memory else None  # the replica's own ledger (every chip holds the same bytes)
    chip_state = ReplicaState.FAILED if r.state == ReplicaState.FAILED else CHIP_OK
    chips = [ChipSnapshot(row, col, chip_state, d.capacity if d else spec.dram_bytes_per_chip, d.weights if d else 0,
                          d.kv_cache if d else 0, d.other if d else 0) for row, col in spec.chips()]
    s = r.stats
    histograms = {}
    if s is not None and s.ttft_histogram is not None:
        histograms["ttft_histogram"] = s.ttft_histogram
    if s is not None and s.inter_token_histogram is not None:
        histograms["inter_token_histogram"] = s.inter_token_histogram
    return ReplicaSnapshot(
        replica_id=r.replica_id, state=r.state, pid=r.pid, node_id=r.node_id, mesh=r.mesh, backend=r.backend,
        address=r.address, kv_pages_total=r.kv_pages_total, kv_pages_free=s.free_pages if s else r.kv_pages_total,
        running=s.running if s else 0, waiting=s.waiting if s else 0,
        tokens_per_second=s.tokens_per_second if s else 0.0,
        prompt_tokens_total=s.prompt_tokens_total if s else 0,
        generation_tokens_total=s.generation_tokens_total if s else 0,
        prefix_hit_rate=s.prefix_hit_rate if s else 0.0, chips=chips, restarts=r.restarts,
        kv_pages_budget=r.memory.kv_pages_budget if r.memory else r.kv_pages_budget,
        kv_pages_capped_by_host=bool(r.memory and r.memory.kv_pages_capped_by_host),
        state_reason=r.reason, crash_loop=r.crash_loop,
        last_heartbeat_age_s=now - r.last_heartbeat if r.last_heartbeat else 0.0,
        requests_finished_total=s.requests_finished_total if s else 0,
        kv_user_groups=s.kv_user_groups if s else 1,
        kv_pages_free_per_group=list(s.kv_pages_free_per_group) if s else [], **histograms,
    )
