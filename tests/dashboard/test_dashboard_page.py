"""The live page in a real browser (Debian's chromium), fed by a source the test changes."""

from __future__ import annotations

import time

from tests.support.dashboard_snapshots import ARTIFACTS
from playwright.sync_api import expect

from ttdist.dashboard.events import Event

WAIT_MS = 15_000


def replica_card(page, replica_id: str):
    return page.locator(f'article.replica[data-replica-id="{replica_id}"]')


def test_every_replica_and_every_chip(dashboard, page):
    page.goto(dashboard.url)
    expect(page.locator("article.replica")).to_have_count(2, timeout=WAIT_MS)
    tg, t3k = replica_card(page, "tg-0"), replica_card(page, "t3k-0")
    expect(tg.locator(".chip")).to_have_count(32)
    expect(t3k.locator(".chip")).to_have_count(8)
    expect(tg.locator('.chip[data-state="ok"]')).to_have_count(32)
    # The grid keeps the mesh's shape: 8 rows of 4 for a Galaxy, 1 row of 8 for a T3000.
    corner = tg.locator('.chip[data-row="7"][data-col="3"]')
    expect(corner).to_have_attribute("title", "chip 7,3 (ok): weights 3.00 GiB + KV 6.00 GiB + other 0.00 GiB of 12.00 GiB")
    expect(corner.locator(".pct")).to_have_text("75%")
    first, last = tg.locator(".chip").first.bounding_box(), corner.bounding_box()
    assert last["y"] > first["y"] + 7 * first["height"] and last["x"] > first["x"] + 3 * first["width"]
    row = t3k.locator(".chip").first.bounding_box(), t3k.locator('.chip[data-col="7"]').bounding_box()
    assert row[0]["y"] == row[1]["y"]
    expect(page.locator("#sum-replicas")).to_have_text("2 / 2")
    expect(page.locator("#sum-running")).to_have_text("3")
    expect(page.locator("#sum-waiting")).to_have_text("1")
    expect(page.locator("#sum-tps")).to_have_text("212.5")
    expect(page.locator("#sum-kv")).to_have_text("12.5%")
    expect(page.locator("#sum-ttft")).to_have_text("31 ms")
    expect(page.locator("#sum-ttft-sub")).to_have_text("p99 235 ms · 10 requests")
    expect(page.locator("#sum-itl")).to_have_text("18 ms")
    expect(tg.locator('[data-stat="kv"]')).to_have_text("250 / 1,000 (25.0%)")
    expect(page.locator('#events-body tr[data-kind="replica_started"]')).to_have_count(1)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def test_counters_move_without_reloading(dashboard, fake_cluster, page):
    page.goto(dashboard.url)
    expect(page.locator("#sum-gen")).to_have_text("1,500", timeout=WAIT_MS)
    page.evaluate("window.__sameDocument = true")
    fake_cluster.update("t3k-0", running=4, waiting=2, tokens_per_second=87.5, generation_tokens_total=1000,
                        prompt_tokens_total=300, kv_pages_free=400)
    expect(page.locator("#sum-gen")).to_have_text("2,500", timeout=WAIT_MS)
    expect(page.locator("#sum-running")).to_have_text("7")
    expect(page.locator("#sum-waiting")).to_have_text("3")
    expect(page.locator("#sum-tps")).to_have_text("300.0")
    expect(replica_card(page, "t3k-0").locator('[data-stat="kv"]')).to_have_text("600 / 1,000 (60.0%)")
    expect(page.locator("#chart-tps path.series")).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#chart-kv path.series").count() == 2  # one line per replica


def test_a_failed_replica_is_marked(dashboard, fake_cluster, page):
    page.goto(dashboard.url)
    tg = replica_card(page, "tg-0")
    expect(tg).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    fake_cluster.events.append(Event(time.time(), "replica_failed", "tg-0", "process 1000 exited"))
    fake_cluster.update("tg-0", state="failed")
    expect(tg).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    expect(tg.locator(".badge")).to_have_text("failed")
    expect(tg.locator('.chip[data-state="failed"]')).to_have_count(32)
    expect(replica_card(page, "t3k-0").locator('.chip[data-state="ok"]')).to_have_count(8)
    expect(page.locator("#sum-replicas")).to_have_text("1 / 2")
    expect(page.locator("#sum-replicas-sub")).to_have_text("1 failed")
    newest = page.locator("#events-body tr").first
    expect(newest).to_have_attribute("data-kind", "replica_failed")
    expect(newest).to_contain_text("process 1000 exited")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-failed-replica.png"), full_page=True)


def test_page_says_when_the_dashboard_is_gone(dashboard, page, page_errors):
    page.goto(dashboard.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    dashboard.stop_in_thread()
    expect(page.locator("#conn")).to_have_attribute("data-state", "error", timeout=WAIT_MS)
    expect(page.locator("#conn")).to_contain_text("dashboard unreachable")
    expect(replica_card(page, "tg-0")).to_have_count(1)  # the last picture stays up
    assert all("ERR_CONNECTION_REFUSED" in e for e in page_errors)
    page_errors.clear()


def test_several_models_get_a_row_each_and_their_replicas_say_which(browser, page):
    from tests.support.dashboard_snapshots import FakeCluster, make_replica
    from ttdist.dashboard.server import DashboardConfig, DashboardServer
    from ttdist.dashboard.status import AutoscaleSnapshot, ModelSnapshot

    source = FakeCluster(
        [make_replica("replica-0", 1, 2, model="alpha", running=2, tokens_per_second=40.0),
         make_replica("replica-1", 1, 1, model="beta", running=1, waiting=3, tokens_per_second=10.0),
         make_replica("replica-2", 1, 1, model="beta", state="failed", address="127.0.0.1:50102")],
        models=[ModelSnapshot("alpha", policy="cache_aware",
                              autoscale=AutoscaleSnapshot(1, 4, "ongoing_requests", 24, 1, 2, 1)),
                ModelSnapshot("beta", policy="round_robin")],
    )
    server = DashboardServer(DashboardConfig(port=0, sample_interval_s=0.1), source)
    server.start_in_thread()
    try:
        page.goto(server.url)
        expect(page.locator("#model")).to_have_text("alpha, beta", timeout=WAIT_MS)
        rows = page.locator("#models-body tr")
        expect(rows).to_have_count(2)
        expect(page.locator('#models-body tr[data-model="alpha"] td').nth(2)).to_have_text("1 / 1")
        expect(page.locator('#models-body tr[data-model="beta"] td').nth(2)).to_have_text("1 / 2")
        expect(page.locator('#models-body tr[data-model="beta"] td').nth(4)).to_have_text("3")
        expect(page.locator('#models-body tr[data-model="alpha"] td').nth(5)).to_have_text("40.0")
        expect(page.locator('#models-body tr[data-model="alpha"] td.autoscale')).to_have_text(
            "1 in 1..4, ongoing_requests 24 · 2 up, 1 down")
        expect(page.locator('#models-body tr[data-model="beta"] td.autoscale')).to_have_text("fixed")
        expect(replica_card(page, "replica-1").locator(".where")).to_contain_text("beta · 1x1 sim")
        expect(page.locator("#models-section")).to_be_visible()
    finally:
        server.stop_in_thread()


def test_one_model_has_no_models_table(dashboard, page):
    page.goto(dashboard.url)
    expect(page.locator("article.replica")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#models-section")).to_be_hidden()
