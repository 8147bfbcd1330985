"""What the coordinator holds per served model, and its registry as the dashboard sees it.

``ServedModel`` is one model's card (``resolve_card``), checkpoint and converted weights
(``convert_weights``); ``model_snapshot`` and
``replica_snapshot`` turn the coordinator's state into the dashboard's plain data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ttdist.dashboard.events import EventKind
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import CHIP_OK, AutoscaleSnapshot, ChipSnapshot, ModelSnapshot, ReplicaSnapshot
from ttdist.mesh.spec import parse_mesh
from ttdist.runtime.config import ClusterConfig, ModelConfig
from ttdist.runtime.generation_defaults import read_generation_defaults
from ttdist.runtime.registry import Registry, ReplicaRecord
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import RouterReport, combine_reports


@dataclass
class ServedModel:
    """One model the cluster serves, as the coordinator holds it: its config, its card (None
    until resolved), its checkpoint folder and its converted weights per mesh."""

    config: ModelConfig
    card: ModelCard | None = None
    model_dir: str = ""
    weights_path: dict[str, str] = field(default_factory=dict)   # mesh -> converted-weight cache entry
    weights_ref: dict[str, object] = field(default_factory=dict)  # mesh -> its entry in the object store (RemoteShards)


def resolve_card(served: ServedModel, cfg: ClusterConfig) -> ModelCard:
    """The model's card under its served name (a scripted engine's is ``scripted`` in the one-model
    form); sets its checkpoint folder."""
    m = served.config
    if cfg.engine == "scripted":
        s = cfg.scripted
        return ModelCard(m.name or "scripted", s.vocab_size, s.max_context, s.page_size)
    from ttdist.model.config import LlamaConfig

    if m.model == "smollm2":
        from ttdist.model.smollm2 import materialize

        path = materialize()
    else:
        path = Path(m.model).expanduser().resolve()
    served.model_dir = str(path)
    lc = LlamaConfig.from_dir(path)
    max_context = min(cfg.max_context or lc.max_position_embeddings, lc.max_position_embeddings)
    defaults = read_generation_defaults(path, cfg.generation_config)
    return ModelCard(m.served_name, lc.vocab_size, max_context, cfg.page_size, generation_defaults=defaults)


async def convert_weights(served: ServedModel, mesh: str, cache_dir: str | None, registry: Registry) -> None:
    """Convert ``served``'s checkpoint for ``mesh`` once into the converted-weight cache (events
    before and after in ``registry``)."""
    from ttdist.model.weights import convert_checkpoint

    t0 = time.perf_counter()
    dtype = served.config.convert_precision(mesh)
    registry.event(EventKind.WEIGHTS_CONVERTING, "", f"{served.card.model_id} for mesh {mesh} ({dtype})")
    path = await asyncio.to_thread(convert_checkpoint, served.model_dir, mesh=mesh, dtype=dtype, cache_dir=cache_dir,
                                   progress=True)
    served.weights_path[mesh] = str(path)
    registry.event(
        EventKind.WEIGHTS_READY, "", f"{served.card.model_id} on mesh {mesh}: {path.name} in "
        f"{time.perf_counter() - t0:.1f} s (each replica sizes its KV cache from its backend's DRAM ledger)"
    )


def model_snapshot(name: str, served: ServedModel, reports: dict[tuple[str, str], RouterReport],
                   autoscale: AutoscaleSnapshot | None = None) -> ModelSnapshot:
    """A model's pool, its routers' latency (every router's reports for it added up) and its autoscaling."""
    reports = [r for (_, model), r in reports.items() if model == name]
    report = combine_reports(reports) if reports else RouterReport()
    return ModelSnapshot(
        name=name, model=served.model_dir or served.config.model, policy=report.policy or served.config.policy,
        max_context=served.card.max_context if served.card else 0,
        ttft_seconds=report.ttft_seconds, inter_token_seconds=report.inter_token_seconds, autoscale=autoscale,
    )


def replica_snapshot(r: ReplicaRecord, now: float) -> ReplicaSnapshot:
    """A registry record as the dashboard sees it (its chips, load and latency histograms)."""
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
        replica_id=r.replica_id, model=r.model, state=r.state, pid=r.pid, node_id=r.node_id, mesh=r.mesh, backend=r.backend,
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
        kv_pages_free_per_group=list(s.kv_pages_free_per_group) if s else [],
        kv_tiers=asdict(s.kv_tiers) if s and s.kv_tiers else {}, **histograms,
    )
