"""Latency under load: a discrete-event simulation of replicas serving Poisson arrivals.

Each replica runs the engine's scheduler as ``ttdist.engine`` (and the scripted engine) does:
a step is either a prefill of ONE waiting request into a free batch slot (it costs that
prompt's prefill time and yields the request's first token) or, when nothing waits or the batch
is full, one decode step of every running request (one token each, at the decode step time).
Requests arrive as a Poisson process of ``rate`` per second and go to the replica the router's
``least_load`` picks: the lowest running + waiting + prompt tokens awaiting their first token /
512 (``LoadWeights``), ties to the lowest replica. From each request's arrival, first token and
last token (plus the serving path's fixed ``overhead_s`` on the first) come TTFT and TPOT (``(E2E - TTFT) / (output - 1)``, as ``ttdist bench`` defines
it), then their percentiles. ``saturation_rate`` bisects for the highest rate whose p90 TTFT
and TPOT still meet an SLO.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass

from ttdist.router.policies.base import LoadWeights


@dataclass(frozen=True)
class Service:
    """What one replica takes per step."""

    prefill_s: float          # one request's prefill (its TTFT alone on an idle replica)
    decode_s: float           # one decode step of the whole batch
    batch: int                # decode slots
    replicas: int = 1
    overhead_s: float = 0.0   # the serving path's fixed cost per request (client, router, replica hops)


@dataclass(frozen=True)
class Load:
    rate: float               # requests per second (Poisson)
    input: int                # prompt tokens
    output: int               # generated tokens per request


@dataclass(frozen=True)
class Latency:
    ttft_p50: float
    ttft_p90: float
    tpot_p50: float
    tpot_p90: float
    requests: int
    throughput: float = 0.0   # requests finished per second, first arrival to last token

    def to_json(self) -> dict:
        return {"ttft_p50_s": self.ttft_p50, "ttft_p90_s": self.ttft_p90, "tpot_p50_s": self.tpot_p50,
                "tpot_p90_s": self.tpot_p90, "requests": self.requests, "throughput": self.throughput}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default, as ``ttdist bench``)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Replica:
    def __init__(self, prompt_weight: float) -> None:
        self.prompt_weight = prompt_weight      # one awaiting prompt's tokens / prefill_tokens_per_request
        self.prefilling = 0                     # in its prefill step: no first token yet
        self.waiting: deque[int] = deque()
        self.decodes = 0                       # decode steps run so far
        self.finishing: list[tuple[int, int]] = []   # (decode step that yields its last token, request)
        self.idle = True

    def load(self) -> float:
        """``least_load``'s figure: running + waiting + pending prefill tokens / 512."""
        unanswered = len(self.waiting) + self.prefilling
        return len(self.waiting) + len(self.finishing) + unanswered * self.prompt_weight


def simulate(service: Service, load: Load, *, requests: int = 2000, seed: int = 0,
             arrivals: list[float] | None = None) -> Latency:
    """TTFT and TPOT percentiles of ``requests`` arrivals (Poisson at ``load.rate``, or the given times)."""
    if arrivals is None:
        rng = random.Random(seed)
        t, arrivals = 0.0, []
        for _ in range(requests):
            t += rng.expovariate(load.rate)
            arrivals.append(t)
    reps = [_Replica(load.input / LoadWeights().prefill_tokens_per_request) for _ in range(service.replicas)]
    first, last = [0.0] * len(arrivals), [0.0] * len(arrivals)
    events: list[tuple[float, int, int, int]] = []   # (time, order, kind 0=arrival 1=step end, index)
    for i, at in enumerate(arrivals):
        heapq.heappush(events, (at, i, 0, i))
    order = len(arrivals)
    while events:
        now, _, kind, index = heapq.heappop(events)
        if kind == 0:
            rep = min(reps, key=_Replica.load)
            rep.waiting.append(index)
            if not rep.idle:
                continue
        else:
            rep = reps[index]
        step = _step(rep, service, load, now, first, last)
        if step is None:
            rep.idle = True
            continue
        rep.idle = False
        order += 1
        heapq.heappush(events, (now + step, order, 1, reps.index(rep)))
    ttft = [f - a + service.overhead_s for f, a in zip(first, arrivals)]
    tpot = [(l - f) / (load.output - 1) for f, l in zip(first, last)] if load.output > 1 else [0.0] * len(ttft)
    span = max(last) - min(arrivals)
    return Latency(percentile(ttft, 50), percentile(ttft, 90), percentile(tpot, 50), percentile(tpot, 90), len(ttft),
                   len(ttft) / span if span > 0 else math.inf)


def _step(rep: _Replica, service: Service, load: Load, now: float, first: list, last: list) -> float | None:
    """Start the replica's next step at ``now``: its duration, or None if there is nothing to do.
    Tokens are stamped at the end of the step that makes them."""
    rep.prefilling = 0
    if rep.waiting and len(rep.finishing) < service.batch:
        index = rep.waiting.popleft()
        rep.prefilling = 1
        first[index] = last[index] = now + service.prefill_s
        if load.output > 1:
            heapq.heappush(rep.finishing, (rep.decodes + load.output - 1, index))
        return service.prefill_s
    if not rep.finishing:
        return None
    rep.decodes += 1
    while rep.finishing and rep.finishing[0][0] == rep.decodes:
        last[heapq.heappop(rep.finishing)[1]] = now + service.decode_s
    return service.decode_s


def capacity(service: Service, load: Load) -> float:
    """Requests per second the replicas can finish at full batches: the bound no rate can pass."""
    per_request = service.prefill_s + (load.output - 1) * service.decode_s / service.batch
    return service.replicas / per_request


def meets(latency: Latency, ttft_s: float | None, tpot_s: float | None) -> bool:
    return (ttft_s is None or latency.ttft_p90 <= ttft_s) and (tpot_s is None or latency.tpot_p90 <= tpot_s)


def saturation_rate(service: Service, load: Load, ttft_s: float | None, tpot_s: float | None, *,
                    requests: int = 1000, seed: int = 0, tolerance: float = 0.02, floor: float = 0.0,
                    arrivals: list[float] | None = None) -> float:
    """The highest arrival rate at which p90 TTFT and p90 TPOT still meet the SLO (0 if none does);
    ``floor``: a rate already known to meet it. Every rate tried sees the same arrival sequence
    scaled to it (a Poisson sequence at rate r is one at rate 1 with its times divided by r):
    ``arrivals``, the times of one such sequence at 1 request/s, or ``seed``'s."""
    if arrivals is None:
        rng = random.Random(seed)
        t, arrivals = 0.0, []
        for _ in range(requests):
            t += rng.expovariate(1.0)
            arrivals.append(t)

    def ok(rate: float, first: int | None = None) -> bool:
        times = [a / rate for a in arrivals[:first]]
        return meets(simulate(service, Load(rate, load.input, load.output), arrivals=times), ttft_s, tpot_s)

    hi = capacity(service, load)
    lo = floor
    if not floor and not ok(hi * 1e-3, 50):
        return 0.0
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
