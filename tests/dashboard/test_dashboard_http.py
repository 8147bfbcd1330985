"""The dashboard's HTTP routes on a real aiohttp server, sampled by hand."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import urllib.request
from importlib import resources

import aiohttp
import jsonschema
import pytest
from tests.support.dashboard_snapshots import FakeCluster, histogram, make_replica

from ttdist.dashboard.server import DashboardConfig, DashboardConfigError, DashboardError, DashboardServer
from ttdist.dashboard.status import TTFT_BUCKETS_SECONDS, ClusterSnapshot, LatencySummary

SCHEMA = json.loads((resources.files("ttdist.dashboard") / "static" / "status.schema.json").read_text())
MANUAL = dict(port=0, sample_interval_s=3600.0)  # only the samples a test takes by hand


@pytest.fixture
async def served(fake_cluster):
    server = DashboardServer(DashboardConfig(**MANUAL), fake_cluster)
    await server.start()
    async with aiohttp.ClientSession(server.url) as http:
        yield server, http
    await server.stop()


async def get_json(http: aiohttp.ClientSession, path: str) -> tuple[int, dict]:
    async with http.get(path) as response:
        return response.status, await response.json()


async def test_status_matches_the_schema_and_the_snapshot(served, fake_cluster):
    server, http = served
    status, body = await get_json(http, "/api/status")
    assert status == 200
    jsonschema.validate(body, SCHEMA)
    assert body["model"] == "tiny-llama" and body["policy"] == "least_load"
    assert [r["replica_id"] for r in body["replicas"]] == ["tg-0", "t3k-0"]
    assert len(body["replicas"][0]["chips"]) == 32 and len(body["replicas"][1]["chips"]) == 8
    summary = body["summary"]
    assert summary["replicas_ready"] == 2 and summary["replicas_total"] == 2
    assert (summary["requests_running"], summary["requests_waiting"]) == (3, 1)
    assert summary["tokens_per_second"] == 212.5
    assert (summary["kv_pages_used"], summary["kv_pages_total"]) == (250, 2000)
    assert summary["kv_cache_usage_perc"] == 0.125
    # The coordinator sent no latency summary (count 0): derived from the replicas' histograms.
    assert summary["ttft_seconds"]["count"] == 10
    assert summary["ttft_seconds"]["p50"] == pytest.approx(0.02 + 0.02 * 5 / 9)
    assert body["replicas"][0]["kv_cache_usage_perc"] == 0.25
    assert len(body["history"]) == 1
    assert body["dashboard"]["last_error"] is None
    assert ClusterSnapshot.from_json(body).replicas == fake_cluster().replicas


async def test_failed_replica_leaves_the_live_totals(served, fake_cluster):
    server, http = served
    fake_cluster.update("tg-0", state="failed")
    await server.sample()
    _, body = await get_json(http, "/api/status")
    jsonschema.validate(body, SCHEMA)
    summary = body["summary"]
    assert (summary["replicas_ready"], summary["replicas_failed"]) == (1, 1)
    assert (summary["requests_running"], summary["tokens_per_second"]) == (0, 0.0)
    assert summary["generation_tokens_total"] == 1500  # what it produced still counts
    tg = body["replicas"][0]
    assert {c["display_state"] for c in tg["chips"]} == {"failed"}
    assert {c["display_state"] for c in body["replicas"][1]["chips"]} == {"ok"}


async def test_history_grows_and_since_returns_only_newer_points(served, fake_cluster):
    server, http = served
    for tps in (10.0, 20.0, 30.0):
        fake_cluster.update("t3k-0", tokens_per_second=tps)
        await server.sample()
    _, body = await get_json(http, "/api/status")
    points = body["history"]
    assert [p["replicas"]["t3k-0"]["tokens_per_second"] for p in points] == [0.0, 10.0, 20.0, 30.0]
    assert [p["tokens_per_second"] for p in points] == [212.5, 222.5, 232.5, 242.5]
    _, newer = await get_json(http, f"/api/status?since={points[1]['time']!r}")
    assert [p["tokens_per_second"] for p in newer["history"]] == [232.5, 242.5]
    status, error = await get_json(http, "/api/status?since=yesterday")
    assert status == 400 and "since" in error["error"]


async def test_history_latency_covers_only_new_observations(served, fake_cluster):
    server, http = served
    fake_cluster.update("t3k-0", ttft_histogram=histogram(TTFT_BUCKETS_SECONDS, [7.0] * 4))
    await server.sample()
    _, body = await get_json(http, "/api/status")
    first, second = body["history"]
    assert first["ttft_p50"] is None  # nothing new within the window at the first sample
    assert second["ttft_p50"] == pytest.approx(5.0 + 2.5 * 2 / 4)  # only the four 7 s first tokens


async def test_healthz_reports_a_failing_source(fake_cluster):
    broken = {"on": False}

    def source():
        if broken["on"]:
            raise ConnectionError("coordinator unreachable")
        return fake_cluster()

    server = DashboardServer(DashboardConfig(**MANUAL), source)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            status, body = await get_json(http, "/healthz")
            assert status == 200 and body["replicas_ready"] == 2
            broken["on"] = True
            await server.sample()
            status, body = await get_json(http, "/healthz")
            assert status == 503 and body["reason"] == "ConnectionError: coordinator unreachable"
            _, status_body = await get_json(http, "/api/status")
            assert status_body["dashboard"]["last_error"] == "ConnectionError: coordinator unreachable"
            assert len(status_body["replicas"]) == 2  # the last good snapshot is still served
    finally:
        await server.stop()


async def test_source_of_the_wrong_type_is_reported():
    server = DashboardServer(DashboardConfig(**MANUAL), lambda: {"replicas": []})
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            status, body = await get_json(http, "/healthz")
            assert status == 503 and body["reason"] == "TypeError: source returned dict, expected ClusterSnapshot"
            _, status_body = await get_json(http, "/api/status")
            jsonschema.validate(status_body, SCHEMA)
            assert "summary" not in status_body
    finally:
        await server.stop()


async def test_async_and_future_sources(fake_cluster):
    async def coroutine_source():
        await asyncio.sleep(0)
        return fake_cluster()

    pool = concurrent.futures.ThreadPoolExecutor(1)
    for source in (coroutine_source, lambda: pool.submit(fake_cluster)):
        server = DashboardServer(DashboardConfig(**MANUAL), source)
        await server.start()
        try:
            assert server.latest is not None and len(server.latest.replicas) == 2
        finally:
            await server.stop()
    pool.shutdown()


async def test_page_and_assets_are_served_locally(served):
    server, http = served
    async with http.get("/") as response:
        html = await response.text()
    assert response.status == 200 and "<title>ttdist cluster</title>" in html
    assert "http://" not in html and "https://" not in html
    for asset in ("app.js", "charts.js", "style.css", "favicon.svg", "status.schema.json"):
        async with http.get(f"/static/{asset}") as response:
            assert response.status == 200, asset
            text = await response.text()
        assert "cdn" not in text.lower(), asset


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("port", 70000, "port must be an integer in 0..65535"),
        ("sample_interval_s", 0, "sample_interval_s must be a positive number"),
        ("history_seconds", -1.0, "history_seconds must be a positive number"),
        ("max_events", -1, "max_events must be a non-negative integer"),
        ("host", "", "host must not be empty"),
    ],
)
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(DashboardConfigError, match=message):
        DashboardConfig(**{field: value})


async def test_busy_port_is_a_clear_error(fake_cluster):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DashboardServer(DashboardConfig(port=port, sample_interval_s=3600.0), fake_cluster)
        with pytest.raises(DashboardError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.start()


def test_runs_in_its_own_thread(fake_cluster):
    server = DashboardServer(DashboardConfig(**MANUAL), fake_cluster)
    server.start_in_thread()
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            assert json.load(response)["status"] == "ok"
    finally:
        server.stop_in_thread()
    with pytest.raises(DashboardError, match="not running"):
        server.port


async def test_history_latency_falls_back_to_the_coordinators_summary():
    cluster = FakeCluster([make_replica("r0", 1, 1)])

    def source():
        snapshot = cluster()
        snapshot.ttft_seconds = LatencySummary(p50=0.015, p99=0.29, count=5)
        return snapshot

    server = DashboardServer(DashboardConfig(**MANUAL), source)
    await server.start()
    try:
        (point,) = server.status_json()["history"]
        assert (point["ttft_p50"], point["ttft_p99"]) == (0.015, 0.29)
        assert (point["inter_token_p50"], point["inter_token_p99"]) == (None, None)
    finally:
        await server.stop()
