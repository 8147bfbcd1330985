"""Fixtures: a fake cluster, a dashboard in its own thread, a real browser."""

from __future__ import annotations

import os

import pytest
from tests.support.dashboard_snapshots import CHROMIUM, CHROMIUM_ARGS, FakeCluster, galaxy_and_t3k

from ttdist.dashboard.server import DashboardConfig, DashboardServer


@pytest.fixture
def fake_cluster() -> FakeCluster:
    return galaxy_and_t3k()


@pytest.fixture
def dashboard(fake_cluster):
    server = DashboardServer(DashboardConfig(port=0, sample_interval_s=0.1), fake_cluster)
    server.start_in_thread()
    yield server
    server.stop_in_thread()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser (as root) first")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Script errors and console errors the page logged; a test that expects some clears it."""
    return []


@pytest.fixture
def page(browser, page_errors):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("console", lambda msg: page_errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert not page_errors, f"the page logged errors: {page_errors}"
