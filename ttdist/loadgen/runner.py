"""Drive a target with a workload: by request rate (Poisson or fixed intervals) or by concurrency.

``rate`` is requests per second (``inf``: send everything at once); ``concurrency`` caps the
requests in flight (with ``rate=inf`` it is a closed loop of that many users). Warm-up
requests run first, at the same concurrency, and are left out of every figure.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

from ttdist.loadgen.metrics import RequestMetrics, Summary, request_metrics, summarize
from ttdist.loadgen.targets import Outcome
from ttdist.loadgen.workload import Request


class LoadError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Load:
    rate: float = math.inf            # requests per second
    arrival: str = "poisson"          # poisson | fixed
    concurrency: int | None = None
    warmup: int = 0
    seed: int = 0

    def __post_init__(self):
        if not self.rate > 0:
            raise LoadError("request-rate", f"must be > 0 (or inf), got {self.rate}")
        if self.arrival not in ("poisson", "fixed"):
            raise LoadError("arrival", f"must be poisson or fixed, got {self.arrival!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise LoadError("max-concurrency", f"must be at least 1, got {self.concurrency}")
        if self.warmup < 0:
            raise LoadError("warmup", f"must be >= 0, got {self.warmup}")

    def describe(self) -> str:
        rate = "inf" if math.isinf(self.rate) else f"{self.rate:g}/s {self.arrival}"
        return f"rate {rate}" + (f", concurrency {self.concurrency}" if self.concurrency else "")


@dataclass(frozen=True)
class Run:
    load: Load
    requests: list[RequestMetrics]
    summary: Summary


def intervals(load: Load, count: int) -> list[float]:
    """Seconds to wait before each request after the previous one."""
    if math.isinf(load.rate):
        return [0.0] * count
    if load.arrival == "fixed":
        return [0.0] + [1.0 / load.rate] * (count - 1)
    rng = random.Random(load.seed)
    return [0.0] + [rng.expovariate(load.rate) for _ in range(count - 1)]


async def _drive(target, requests: list[Request], load: Load, progress=None) -> tuple[list[Outcome], float, float]:
    gate = asyncio.Semaphore(load.concurrency) if load.concurrency else None

    async def one(req: Request) -> Outcome:
        if gate is None:
            out = await target.send(req)
        else:
            async with gate:
                out = await target.send(req)
        if progress is not None:
            progress.update(1)
        return out

    tasks = []
    start = time.perf_counter()
    for wait, req in zip(intervals(load, len(requests)), requests):
        if wait:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one(req)))
    try:
        outcomes = list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
    return outcomes, start, time.perf_counter()


async def run(target, requests: list[Request], load: Load, slo: dict[str, float], *, warmup: list[Request] = (),
              progress=None) -> Run:
    """Warm up with ``warmup`` (not measured), then send ``requests`` under ``load``."""
    if warmup:
        await _drive(target, list(warmup), Load(concurrency=load.concurrency or len(warmup)))
    outcomes, start, end = await _drive(target, requests, load, progress)
    rows = [request_metrics(o, start) for o in outcomes]
    return Run(load, rows, summarize(rows, end - start, slo))
