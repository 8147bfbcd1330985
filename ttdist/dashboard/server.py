"""The dashboard's HTTP server (aiohttp): live page, JSON status, Prometheus metrics.

``DashboardServer(config, source)`` samples ``source`` every ``sample_interval_s`` in a
background task and serves only what it sampled, so page loads and scrapes never reach
the coordinator. ``source`` is a zero-argument callable returning a ``ClusterSnapshot``,
an awaitable of one, or a ``concurrent.futures.Future`` of one (for a source that lives on
another event loop: ``lambda: asyncio.run_coroutine_threadsafe(coro(), loop)``). A plain
callable runs on the dashboard's loop, so it must only read in-memory state.

Run it on an existing loop with ``await start()`` / ``await stop()``, or in its own thread
(inside a Ray actor, say) with ``start_in_thread()`` / ``stop_in_thread()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Union

from aiohttp import web

from ttdist.dashboard.history import History
from ttdist.dashboard.metrics import exposition, metrics_registry
from ttdist.dashboard.status import ClusterSnapshot, LatencySummary
from ttdist.dashboard.summary import ClusterSummary, chip_state, kv_cache_usage

STATUS_SCHEMA = "ttdist.dashboard.status/v1"
SnapshotSource = Callable[[], Union[ClusterSnapshot, Awaitable[ClusterSnapshot], concurrent.futures.Future]]


class DashboardConfigError(ValueError):
    """A dashboard setting out of range; the message names the field."""


class DashboardError(RuntimeError):
    """The dashboard could not start or stop."""


@dataclass(frozen=True)
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 8480                 # 0 picks a free port; see DashboardServer.port
    sample_interval_s: float = 1.0   # how often the source is read (and the page polls)
    history_seconds: float = 600.0   # how far back the charts reach
    latency_window_s: float = 30.0   # span of the p50/p99 points in the charts
    source_timeout_s: float = 5.0    # a sample that takes longer counts as failed
    max_events: int = 50             # most recent events shown

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise DashboardConfigError(f"port must be an integer in 0..65535, got {self.port!r}")
        if not self.host:
            raise DashboardConfigError("host must not be empty")
        for name in ("sample_interval_s", "history_seconds", "latency_window_s", "source_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise DashboardConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.max_events, int) or self.max_events < 0:
            raise DashboardConfigError(f"max_events must be a non-negative integer, got {self.max_events!r}")


def _static_dir() -> Path:
    return Path(str(resources.files("ttdist.dashboard") / "static"))


def _latency_json(latency: LatencySummary) -> dict:
    return {"p50": latency.p50, "p99": latency.p99, "count": latency.count}


class DashboardServer:
    def __init__(self, config: DashboardConfig, source: SnapshotSource) -> None:
        if not callable(source):
            raise DashboardConfigError("source must be a zero-argument callable returning a ClusterSnapshot")
        self.config = config
        self._source = source
        self._history = History(config.history_seconds, config.latency_window_s)
        self._latest: ClusterSnapshot | None = None
        self._sampled_at: float | None = None
        self._last_error: str | None = None
        self._registry = metrics_registry(lambda: self._latest)
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DashboardError("the dashboard is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def latest(self) -> ClusterSnapshot | None:
        return self._latest

    # -- sampling ---------------------------------------------------------------------

    async def _read_source(self) -> ClusterSnapshot:
        result = self._source()
        if isinstance(result, concurrent.futures.Future):
            result = asyncio.wrap_future(result)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, self.config.source_timeout_s)
        if not isinstance(result, ClusterSnapshot):
            raise TypeError(f"source returned {type(result).__name__}, expected ClusterSnapshot")
        return result

    async def sample(self) -> None:
        """Reads the source once; on failure keeps the last snapshot and records why."""
        try:
            snapshot = await self._read_source()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the source is someone else's code: report, keep serving
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return
        now = time.time()
        self._history.record(snapshot, now)
        self._latest, self._sampled_at, self._last_error = snapshot, now, None

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sample_interval_s)
            await self.sample()

    # -- HTTP -------------------------------------------------------------------------

    def status_json(self, since: float | None = None) -> dict:
        """The body of /api/status (documented in docs/dashboard.md)."""
        snapshot = self._latest
        body: dict = {
            "schema": STATUS_SCHEMA,
            "dashboard": {
                "sampled_at": self._sampled_at,
                "sample_interval_s": self.config.sample_interval_s,
                "history_seconds": self.config.history_seconds,
                "latency_window_s": self.config.latency_window_s,
                "last_error": self._last_error,
            },
            "history": [asdict(p) for p in self._history.since(since)],
        }
        if snapshot is None:
            return body
        summary = ClusterSummary.of(snapshot)
        cluster = snapshot.to_json()
        for replica_json, replica in zip(cluster["replicas"], snapshot.replicas):
            replica_json["kv_cache_usage_perc"] = kv_cache_usage(replica)
            for chip_json, chip in zip(replica_json["chips"], replica.chips):
                chip_json["display_state"] = chip_state(replica, chip.state)
            replica_json["ttft_seconds"] = _latency_json(LatencySummary.from_histogram(replica.ttft_histogram))
            replica_json["inter_token_seconds"] = _latency_json(
                LatencySummary.from_histogram(replica.inter_token_histogram))
        events = sorted(cluster["events"], key=lambda e: e["time"], reverse=True)
        cluster["events"] = events[: self.config.max_events]
        for model_json in cluster["models"]:   # each model's pool added up as the cluster's is
            model_json["summary"] = asdict(ClusterSummary.of(snapshot.for_model(model_json["name"])))
        body.update(cluster)
        body["summary"] = asdict(summary)
        return body

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def _status(self, request: web.Request) -> web.Response:
        since_text = request.query.get("since")
        since = None
        if since_text is not None:
            try:
                since = float(since_text)
            except ValueError:
                return web.json_response(
                    {"error": f"query parameter 'since' must be unix seconds, got {since_text!r}"}, status=400)
        return web.json_response(self.status_json(since), headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = exposition(self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._latest is None or self._last_error is not None:
            reason = self._last_error or "no snapshot sampled yet"
            return web.json_response({"status": "unavailable", "reason": reason}, status=503)
        summary = ClusterSummary.of(self._latest)
        return web.json_response({
            "status": "ok",
            "sampled_at": self._sampled_at,
            "replicas_ready": summary.replicas_ready,
            "replicas_total": summary.replicas_total,
        })

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_static("/static/", _static_dir())
        return app

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Samples once, binds the port and starts sampling in the background."""
        if self._runner is not None:
            raise DashboardError("the dashboard is already running")
        await self.sample()
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise DashboardError(f"cannot listen on {self.config.host}:{self.config.port}: {exc}") from exc
        self._runner = runner
        self._port = runner.addresses[0][1]
        self._sampler = asyncio.create_task(self._sample_forever(), name="ttdist-dashboard-sampler")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            try:
                await self._sampler
            except asyncio.CancelledError:
                pass
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    def start_in_thread(self, timeout_s: float = 30.0) -> None:
        """Runs the server on its own event loop in a daemon thread; returns once it listens."""
        if self._thread is not None:
            raise DashboardError("the dashboard thread is already running")
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=run, name="ttdist-dashboard", daemon=True)
        thread.start()
        try:
            started.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            loop.call_soon_threadsafe(loop.stop)
            raise DashboardError(f"the dashboard did not start within {timeout_s} s") from None
        self._thread, self._thread_loop = thread, loop

    def stop_in_thread(self, timeout_s: float = 30.0) -> None:
        if self._thread is None or self._thread_loop is None:
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise DashboardError(f"the dashboard thread did not stop within {timeout_s} s")
        self._thread, self._thread_loop = None, None
