"""cluster/grafana/ttdist.json: every panel's PromQL parses and reads only what /metrics exports.

The dashboard server runs for real on a hand-built snapshot (tests/runtime/test_multi_model_cluster.py
checks the same queries against a live two-model cluster).
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.grafana import GRAFANA_DASHBOARD, check_queries, dashboard_queries, exported_labels
from tests.support.dashboard_snapshots import galaxy_and_t3k
from ttdist.dashboard.server import DashboardConfig, DashboardServer
from ttdist.dashboard.status import AutoscaleSnapshot, ModelSnapshot

# what the issue asks the dashboard to show, by the metric that shows it
WANTED = {
    "tokens/s": "ttdist:generation_tokens_total", "TTFT": "ttdist:time_to_first_token_seconds_bucket",
    "ITL": "ttdist:inter_token_latency_seconds_bucket", "queue": "ttdist:num_requests_waiting",
    "KV use": "ttdist:kv_cache_usage_perc", "replicas": "ttdist:num_replicas",
    "scale events": "ttdist:cluster_events_total", "scale decisions": "ttdist:scale_events_total",
    "autoscaled pool": "ttdist:autoscale_replicas",
}


@pytest.fixture
def fake_cluster():
    """The galaxy-and-t3k cluster with its one model autoscaled (so the autoscale series exist)."""
    cluster = galaxy_and_t3k()
    cluster.models = [ModelSnapshot("tiny-llama", policy="least_load",
                                    autoscale=AutoscaleSnapshot(1, 4, "ongoing_requests", 24.0, 2, 1, 0))]
    return cluster


async def metrics_text(source) -> str:
    server = DashboardServer(DashboardConfig(port=0, sample_interval_s=3600.0), source)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            async with http.get("/metrics") as response:
                assert response.status == 200
                return await response.text()
    finally:
        await server.stop()


async def test_every_query_reads_what_metrics_exports(fake_cluster):
    exported = exported_labels(await metrics_text(fake_cluster))
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = check_queries(queries, exported)
    missing = {what: name for what, name in WANTED.items() if name not in used}
    assert not missing, f"{GRAFANA_DASHBOARD.name} shows nothing for {missing}"


async def test_a_renamed_metric_is_caught(fake_cluster):
    exported = exported_labels(await metrics_text(fake_cluster))
    with pytest.raises(AssertionError, match="ttdist:num_requests_queued is not exported"):
        check_queries([("panel 'x' A", 'sum by (model_name) (ttdist:num_requests_queued)', None)], exported)
    with pytest.raises(AssertionError, match="aggregates by \\['pool'\\]"):
        check_queries([("panel 'x' A", 'sum by (pool) (ttdist:num_requests_waiting)', None)], exported)
    with pytest.raises(AssertionError, match="has no label 'model'"):
        check_queries([("panel 'x' A", 'ttdist:num_requests_waiting{model="a"}', None)], exported)


def test_panels_are_per_model_and_laid_out():
    import json

    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert all('model_name=~"$model"' in t["expr"] for t in panel["targets"]), panel["title"]
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "model", "replica"]
