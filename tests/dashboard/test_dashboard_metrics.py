"""/metrics parsed back with prometheus_client's own parser."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ttdist.dashboard.server import DashboardConfig, DashboardServer


async def scrape(fake_cluster, accept: str | None = None) -> tuple[str, dict]:
    server = DashboardServer(DashboardConfig(port=0, sample_interval_s=3600.0), fake_cluster)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            headers = {"Accept": accept} if accept else {}
            async with http.get("/metrics", headers=headers) as response:
                assert response.status == 200
                content_type = response.headers["Content-Type"]
                text = await response.text()
    finally:
        await server.stop()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = (family.type, sample.value)
    return content_type, samples


def value(samples, name, **labels):
    kind, v = samples[(name, tuple(sorted(labels.items())))]
    return v


TG = dict(model_name="tiny-llama", replica="tg-0")
T3K = dict(model_name="tiny-llama", replica="t3k-0")


async def test_vllm_style_gauges_and_counters(fake_cluster):
    content_type, samples = await scrape(fake_cluster)
    assert content_type.startswith("text/plain; version=0.0.4")  # what every Prometheus reads
    assert value(samples, "ttdist:num_requests_running", **TG) == 3
    assert value(samples, "ttdist:num_requests_waiting", **TG) == 1
    assert value(samples, "ttdist:num_requests_running", **T3K) == 0
    assert value(samples, "ttdist:kv_cache_usage_perc", **TG) == 0.25
    assert value(samples, "ttdist:kv_cache_usage_perc", **T3K) == 0.0
    assert value(samples, "ttdist:prompt_tokens_total", **TG) == 4096
    assert value(samples, "ttdist:generation_tokens_total", **TG) == 1500
    assert samples[("ttdist:generation_tokens_total", tuple(sorted(TG.items())))][0] == "counter"
    assert value(samples, "ttdist:generation_tokens_per_second", **TG) == 212.5
    assert value(samples, "ttdist:num_replicas_ready", model_name="tiny-llama") == 2
    assert value(samples, "ttdist:replica_state", state="ready", **TG) == 1
    assert value(samples, "ttdist:replica_state", state="failed", **TG) == 0


async def test_latency_histograms_are_cumulative_per_replica(fake_cluster):
    _, samples = await scrape(fake_cluster)
    ttft = "ttdist:time_to_first_token_seconds"
    # nine first tokens at 30 ms and one at 200 ms
    assert value(samples, f"{ttft}_bucket", le="0.02", **TG) == 0
    assert value(samples, f"{ttft}_bucket", le="0.04", **TG) == 9
    assert value(samples, f"{ttft}_bucket", le="0.1", **TG) == 9
    assert value(samples, f"{ttft}_bucket", le="0.25", **TG) == 10
    assert value(samples, f"{ttft}_bucket", le="+Inf", **TG) == 10
    assert value(samples, f"{ttft}_count", **TG) == 10
    assert value(samples, f"{ttft}_sum", **TG) == pytest.approx(0.47)
    itl = "ttdist:inter_token_latency_seconds"
    assert value(samples, f"{itl}_bucket", le="0.025", **TG) == 99
    assert value(samples, f"{itl}_bucket", le="0.1", **TG) == 100
    assert value(samples, f"{itl}_count", **T3K) == 0


async def test_chip_memory_per_replica(fake_cluster):
    _, samples = await scrape(fake_cluster)
    chips = {k for k in samples if k[0] == "ttdist:chip_dram_used_bytes" and ("replica", "tg-0") in k[1]}
    assert len(chips) == 32 * 3  # weights, kv and other for each of 8x4 chips
    assert value(samples, "ttdist:chip_dram_used_bytes", row="7", col="3", kind="kv", **TG) == 6 * 2**30
    assert value(samples, "ttdist:chip_dram_total_bytes", row="0", col="7", **T3K) == 12 * 2**30


async def test_a_failed_replica_reports_nothing_running(fake_cluster):
    fake_cluster.update("tg-0", state="failed")
    _, samples = await scrape(fake_cluster)
    assert value(samples, "ttdist:replica_state", state="failed", **TG) == 1
    assert value(samples, "ttdist:num_requests_running", **TG) == 0
    assert value(samples, "ttdist:num_replicas_ready", model_name="tiny-llama") == 1


async def test_dedicated_registry_leaves_the_global_one_alone(fake_cluster):
    from prometheus_client import REGISTRY, generate_latest

    await scrape(fake_cluster)
    assert b"ttdist:" not in generate_latest(REGISTRY)


async def test_prometheus_2_accept_header_gets_the_text_format(fake_cluster):
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    content_type, samples = await scrape(fake_cluster, accept=accept)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(samples, "ttdist:generation_tokens_total", **TG) == 1500
    assert value(samples, "ttdist:time_to_first_token_seconds_count", **TG) == 10


async def test_two_models_have_their_own_series():
    from tests.support.dashboard_snapshots import make_replica
    from ttdist.dashboard.status import ClusterSnapshot, EventCount, LatencySummary, ModelSnapshot

    def snapshot():
        none = LatencySummary(0.0, 0.0, 0)
        return ClusterSnapshot(
            time=0.0, model="alpha", policy="cache_aware", events=[], ttft_seconds=none, inter_token_seconds=none,
            replicas=[make_replica("replica-0", 1, 2, model="alpha", running=2),
                      make_replica("replica-1", 1, 1, model="beta", running=1),
                      make_replica("replica-2", 1, 1, model="beta", state="failed")],
            models=[ModelSnapshot("alpha", policy="cache_aware"), ModelSnapshot("beta", policy="round_robin")],
            event_counts=[EventCount("beta", "replica_failed", 1), EventCount("", "weights_ready", 2)],
        )

    _, samples = await scrape(snapshot)
    assert value(samples, "ttdist:num_replicas", model_name="alpha") == 1
    assert value(samples, "ttdist:num_replicas", model_name="beta") == 2
    assert value(samples, "ttdist:num_replicas_ready", model_name="beta") == 1
    assert value(samples, "ttdist:num_requests_running", model_name="alpha", replica="replica-0") == 2
    assert value(samples, "ttdist:num_requests_running", model_name="beta", replica="replica-1") == 1
    assert ("ttdist:num_requests_running", (("model_name", "alpha"), ("replica", "replica-1"))) not in samples
    assert value(samples, "ttdist:cluster_events_total", model_name="beta", kind="replica_failed") == 1
    assert value(samples, "ttdist:cluster_events_total", model_name="", kind="weights_ready") == 2


async def test_each_autoscaled_model_has_its_own_autoscale_series():
    from tests.support.dashboard_snapshots import make_replica
    from ttdist.dashboard.status import AutoscaleSnapshot, ClusterSnapshot, EventCount, LatencySummary, ModelSnapshot

    def snapshot():
        none = LatencySummary(0.0, 0.0, 0)
        return ClusterSnapshot(
            time=0.0, model="alpha", policy="round_robin", events=[], ttft_seconds=none, inter_token_seconds=none,
            replicas=[make_replica("replica-0", 1, 1, model="alpha"), make_replica("replica-1", 1, 1, model="beta"),
                      make_replica("replica-2", 1, 1, model="gamma")],
            models=[ModelSnapshot("alpha", autoscale=AutoscaleSnapshot(1, 4, "ongoing_requests", 2.0, 3, 2, 1)),
                    ModelSnapshot("beta", autoscale=AutoscaleSnapshot(0, 2, "queue_depth", 4.0, 1, 1, 0)),
                    ModelSnapshot("gamma")],
            event_counts=[EventCount("alpha", "scaled_up", 2), EventCount("beta", "scaled_up", 1)],
        )

    _, samples = await scrape(snapshot)
    assert value(samples, "ttdist:autoscale_replicas", model_name="alpha") == 3
    assert value(samples, "ttdist:autoscale_max_replicas", model_name="beta") == 2
    assert value(samples, "ttdist:scale_events_total", model_name="alpha", direction="up") == 2
    assert value(samples, "ttdist:scale_events_total", model_name="alpha", direction="down") == 1
    assert value(samples, "ttdist:scale_events_total", model_name="beta", direction="up") == 1
    assert value(samples, "ttdist:cluster_events_total", model_name="beta", kind="scaled_up") == 1
    assert not any(labels == (("model_name", "gamma"),) for name, labels in samples if "autoscale" in name)
