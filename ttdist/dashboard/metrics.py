"""Prometheus exposition of the cluster, named in vLLM's style (``ttdist:...``).

A custom collector reads the dashboard's latest snapshot at scrape time and registers in
a dedicated ``CollectorRegistry``, so nothing leaks into (or from) the process-global
registry. Every series carries ``model_name`` (the served model: a cluster of several models has
series for each) and every per-replica one ``replica`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import ClusterSnapshot, HistogramSnapshot, ReplicaSnapshot
from ttdist.dashboard.summary import ClusterSummary, is_live, kv_cache_usage

# every replica has a series for each of these; another state (draining) gets one while the replica is in it
REPLICA_STATES = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.FAILED)
LABELS = ["model_name", "replica"]

# One series per replica: (family, name, help, its value). A failed replica adds no live load.
REPLICA_SERIES: tuple[tuple[type[Metric], str, str, Callable[[ReplicaSnapshot], float]], ...] = (
    (GaugeMetricFamily, "ttdist:num_requests_running", "Requests in decode or prefill on the replica.",
     lambda r: r.running if is_live(r) else 0),
    (GaugeMetricFamily, "ttdist:num_requests_waiting", "Requests queued on the replica.",
     lambda r: r.waiting if is_live(r) else 0),
    (GaugeMetricFamily, "ttdist:kv_cache_usage_perc", "KV-cache page usage. 1 means 100 percent usage.",
     kv_cache_usage),
    (GaugeMetricFamily, "ttdist:generation_tokens_per_second", "Generated tokens per second, as the replica reports.",
     lambda r: r.tokens_per_second if is_live(r) else 0.0),
    (GaugeMetricFamily, "ttdist:prefix_cache_hit_rate", "Prefix-cache hit rate of the replica (0..1).",
     lambda r: r.prefix_hit_rate),
    (GaugeMetricFamily, "ttdist:heartbeat_age_seconds", "Seconds since the replica's last heartbeat.",
     lambda r: r.last_heartbeat_age_s),
    (GaugeMetricFamily, "ttdist:replica_crash_loop",
     "1 while the replica is failed (crash loop): failed too often in a row, not restarted.",
     lambda r: 1.0 if r.crash_loop else 0.0),
    (CounterMetricFamily, "ttdist:prompt_tokens", "Prefill tokens processed.", lambda r: r.prompt_tokens_total),
    (CounterMetricFamily, "ttdist:generation_tokens", "Generation tokens produced.",
     lambda r: r.generation_tokens_total),
    (CounterMetricFamily, "ttdist:request_success", "Requests finished.", lambda r: r.requests_finished_total),
    (CounterMetricFamily, "ttdist:replica_restarts", "Times the coordinator restarted the replica.",
     lambda r: r.restarts),
)


def _prometheus_buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    """Per-bucket counts to Prometheus' cumulative ``le`` buckets, ending with +Inf."""
    buckets, running = [], 0
    for bound, n in zip(histogram.bounds, histogram.bucket_counts):
        running += n
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", histogram.count))
    return buckets


class SnapshotCollector:
    """Builds every metric family from the snapshot that ``latest()`` returns."""

    def __init__(self, latest: Callable[[], ClusterSnapshot | None]) -> None:
        self._latest = latest

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot = self._latest()
        if snapshot is None:
            return
        yield from self._cluster(snapshot)
        yield from self._autoscale(snapshot)
        yield from self._replicas(snapshot)
        yield from self._histograms(snapshot)
        yield from self._chips(snapshot)
        yield from self._kv_tiers(snapshot)
        yield self._events(snapshot)

    def _events(self, snapshot: ClusterSnapshot) -> Metric:
        events = CounterMetricFamily(
            "ttdist:cluster_events", "Cluster events by kind (replica started, failed, drained, ...; scale "
            "decisions); model_name is empty for cluster-wide ones.", labels=["model_name", "kind"])
        for c in snapshot.event_counts:
            events.add_metric([c.model, c.kind], c.count)
        return events

    def _cluster(self, snapshot: ClusterSnapshot) -> Iterator[Metric]:
        summaries = {name: ClusterSummary.of(snapshot.for_model(name)) for name in snapshot.model_names()}
        for name, doc, value in (
            ("ttdist:num_replicas", "Replicas known to the coordinator.", lambda s: s.replicas_total),
            ("ttdist:num_replicas_ready", "Replicas ready to serve.", lambda s: s.replicas_ready),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            for model, summary in summaries.items():
                family.add_metric([model], value(summary))
            yield family

    def _autoscale(self, snapshot: ClusterSnapshot) -> Iterator[Metric]:
        """Each autoscaled model's pool size, bounds and decisions (no series for a fixed count)."""
        pools = [(m.name, m.autoscale) for m in snapshot.models if m.autoscale is not None]
        if not pools:
            return
        for name, doc, value in (
            ("ttdist:autoscale_replicas", "Replicas in the model's autoscaled pool (ready, starting or restarting).",
             lambda a: a.replicas),
            ("ttdist:autoscale_min_replicas", "The autoscaled pool's min_replicas.", lambda a: a.min_replicas),
            ("ttdist:autoscale_max_replicas", "The autoscaled pool's max_replicas.", lambda a: a.max_replicas),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            for model, a in pools:
                family.add_metric([model], value(a))
            yield family
        events = CounterMetricFamily("ttdist:scale_events", "Scaling decisions of each model's autoscaler, by direction.",
                                     labels=["model_name", "direction"])
        for model, a in pools:
            events.add_metric([model, "up"], a.scale_ups_total)
            events.add_metric([model, "down"], a.scale_downs_total)
        yield events

    def _replicas(self, snapshot: ClusterSnapshot) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "ttdist:replica_state", "1 for the replica's current state, 0 for the others.",
            labels=LABELS + ["state"])
        series = [(family(name, doc, labels=LABELS), value) for family, name, doc, value in REPLICA_SERIES]
        for r in snapshot.replicas:
            labels = [snapshot.model_of(r), r.replica_id]
            for s in REPLICA_STATES + (() if r.state in REPLICA_STATES else (r.state,)):
                state.add_metric(labels + [s], 1.0 if r.state == s else 0.0)
            for family, value in series:
                family.add_metric(labels, value(r))
        yield state
        for family, _ in series:
            yield family

    def _histograms(self, snapshot: ClusterSnapshot) -> Iterator[Metric]:
        ttft = HistogramMetricFamily(
            "ttdist:time_to_first_token_seconds", "Time to first token, seconds.", labels=LABELS)
        itl = HistogramMetricFamily(
            "ttdist:inter_token_latency_seconds", "Time between consecutive tokens, seconds.", labels=LABELS)
        for r in snapshot.replicas:
            labels = [snapshot.model_of(r), r.replica_id]
            ttft.add_metric(labels, _prometheus_buckets(r.ttft_histogram), r.ttft_histogram.sum)
            itl.add_metric(labels, _prometheus_buckets(r.inter_token_histogram), r.inter_token_histogram.sum)
        yield ttft
        yield itl

    def _chips(self, snapshot: ClusterSnapshot) -> Iterator[Metric]:
        chip_labels = LABELS + ["row", "col"]
        used = GaugeMetricFamily(
            "ttdist:chip_dram_used_bytes", "DRAM in use on a chip, by kind (weights, kv, other).",
            labels=chip_labels + ["kind"])
        total = GaugeMetricFamily("ttdist:chip_dram_total_bytes", "DRAM on a chip.", labels=chip_labels)
        for r in snapshot.replicas:
            for chip in r.chips:
                labels = [snapshot.model_of(r), r.replica_id, str(chip.row), str(chip.col)]
                used.add_metric(labels + ["weights"], chip.dram_weights_bytes)
                used.add_metric(labels + ["kv"], chip.dram_kv_bytes)
                used.add_metric(labels + ["other"], chip.dram_other_bytes)
                total.add_metric(labels, chip.dram_total_bytes)
        yield used
        yield total


    def _kv_tiers(self, snapshot: ClusterSnapshot) -> Iterator[Metric]:
        """``ttdist:kv_offload_*``: each replica's KV tiers, by ``tier`` (host, node); replicas without tiers add none."""
        tier_labels = LABELS + ["tier"]
        per_tier = [(family(f"ttdist:kv_offload_{key}", doc, labels=tier_labels), key) for family, key, doc in KV_TIER_SERIES]
        restored = CounterMetricFamily("ttdist:kv_offload_restored_tokens", "Prompt tokens restored from a KV tier "
                                       "instead of prefilled.", labels=LABELS)
        fallbacks = CounterMetricFamily("ttdist:kv_offload_restore_fallbacks", "Restores given up and recomputed.",
                                        labels=LABELS)
        seconds = CounterMetricFamily("ttdist:kv_offload_restore_seconds", "Time restores took, seconds.", labels=LABELS)
        for r in snapshot.replicas:
            tiers = r.kv_tiers or {}
            if not tiers.get("enabled"):
                continue
            labels = [snapshot.model_of(r), r.replica_id]
            for tier in ("host", "node"):
                for family, key in per_tier:
                    family.add_metric(labels + [tier], tiers[tier][key])
            restored.add_metric(labels, tiers["restored_tokens"])
            fallbacks.add_metric(labels, tiers["restore_fallbacks"])
            seconds.add_metric(labels, tiers["restore_s_total"])
        for family, _ in per_tier:
            yield family
        yield from (restored, fallbacks, seconds)


# One series per replica and KV tier: (family, counter key in ``KvTierStats.host`` / ``.node``, help).
KV_TIER_SERIES: tuple[tuple[type[Metric], str, str], ...] = (
    (GaugeMetricFamily, "pages", "KV pages held in the tier."),
    (GaugeMetricFamily, "bytes", "Bytes of KV held in the tier."),
    (GaugeMetricFamily, "capacity_bytes", "The tier's capacity in bytes."),
    (CounterMetricFamily, "hits", "Pages found in the tier at admission, past the device cache."),
    (CounterMetricFamily, "misses", "Lookups in the tier that found nothing."),
    (CounterMetricFamily, "evictions", "Pages dropped from the tier to make room."),
    (CounterMetricFamily, "bytes_in", "Bytes written into the tier (offloads)."),
    (CounterMetricFamily, "bytes_out", "Bytes read from the tier (restores)."),
    (CounterMetricFamily, "rejected", "Entries not used: a bad checksum, another model or layout."),
)


def metrics_registry(latest: Callable[[], ClusterSnapshot | None]) -> CollectorRegistry:
    """A fresh registry holding only the snapshot collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(latest))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Prometheus text format 0.0.4, whatever the scraper accepts: every Prometheus reads it,
    and it keeps the colons in the names (prometheus_client's OpenMetrics output escapes
    colons in sample names but not in HELP/TYPE lines, which breaks the families)."""
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
