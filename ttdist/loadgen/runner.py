"""Drive a target with a workload: by request rate (Poisson or fixed intervals) or by concurrency.

``rate`` is requests per second (``inf``: send everything at once); ``concurrency`` caps the
requests in flight (with ``rate=inf`` it is a closed loop of that many users). A ``schedule``
of phases (``rate:seconds,...``, e.g. ``1:10,6:20,1:20``: a rising then falling load) replaces
the one rate: each phase sends ``round(rate * seconds)`` requests within its seconds, equally
spaced (``fixed``) or as a Poisson process given that count (uniform sorted times); rate 0 is
a pause. Warm-up requests run first, at the same concurrency, and are left out of every figure.
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
class Phase:
    rate: float        # requests per second (0: a pause)
    seconds: float

    @property
    def count(self) -> int:
        return round(self.rate * self.seconds)


def parse_schedule(text: str) -> tuple[Phase, ...]:
    """``rate:seconds`` phases, comma-separated (``1:10,6:20,1:20``)."""
    phases = []
    for part in text.replace(" ", "").split(","):
        try:
            rate, seconds = (float(x) for x in part.split(":"))
        except ValueError:
            raise LoadError("rate-schedule", f"{part!r} is not RATE:SECONDS (e.g. 1:10,6:20,1:20)") from None
        if not (math.isfinite(rate) and rate >= 0 and math.isfinite(seconds) and seconds > 0):
            raise LoadError("rate-schedule", f"{part!r}: the rate must be finite and >= 0, the seconds > 0")
        phases.append(Phase(rate, seconds))
    if not any(p.count for p in phases):
        raise LoadError("rate-schedule", f"{text!r} sends no request")
    return tuple(phases)


@dataclass(frozen=True)
class Load:
    rate: float = math.inf            # requests per second
    arrival: str = "poisson"          # poisson | fixed
    concurrency: int | None = None
    warmup: int = 0
    seed: int = 0
    schedule: tuple[Phase, ...] = ()  # phases replacing ``rate`` (see the module's text)

    @property
    def count(self) -> int | None:
        """The requests a schedule sends (None: no schedule, the caller chooses)."""
        return sum(p.count for p in self.schedule) if self.schedule else None

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
        if self.schedule:
            phases = ",".join(f"{p.rate:g}:{p.seconds:g}" for p in self.schedule)
            return f"rate:s {phases} {self.arrival}" + (f", concurrency {self.concurrency}" if self.concurrency else "")
        rate = "inf" if math.isinf(self.rate) else f"{self.rate:g}/s {self.arrival}"
        return f"rate {rate}" + (f", concurrency {self.concurrency}" if self.concurrency else "")


@dataclass(frozen=True)
class Run:
    load: Load
    requests: list[RequestMetrics]
    summary: Summary
    started_at: float = 0.0           # unix seconds when the run began (request starts are relative to it)


def intervals(load: Load, count: int) -> list[float]:
    """Seconds to wait before each request after the previous one."""
    if load.schedule:
        times = schedule_times(load)
        if len(times) != count:
            raise LoadError("num-prompts", f"the schedule sends {len(times)} requests, not {count}")
        return [b - a for a, b in zip([0.0] + times, times)]
    if math.isinf(load.rate):
        return [0.0] * count
    if load.arrival == "fixed":
        return [0.0] + [1.0 / load.rate] * (count - 1)
    rng = random.Random(load.seed)
    return [0.0] + [rng.expovariate(load.rate) for _ in range(count - 1)]


def schedule_times(load: Load) -> list[float]:
    """Each request's send time (seconds from the start) under ``load.schedule``."""
    rng, times, start = random.Random(load.seed), [], 0.0
    for phase in load.schedule:
        if load.arrival == "fixed":
            times += [start + i / phase.rate for i in range(phase.count)]
        else:
            times += sorted(start + rng.uniform(0, phase.seconds) for _ in range(phase.count))
        start += phase.seconds
    return times


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
    started_at = time.time()
    outcomes, start, end = await _drive(target, requests, load, progress)
    rows = [request_metrics(o, start) for o in outcomes]
    return Run(load, rows, summarize(rows, end - start, slo), started_at)
