"""The scaling decision of one replica pool: a plain function of its load and a clock.

Algorithm (the pool's ``AutoscaleConfig``):

1. ``wanted``: the replicas the load asks for. For the load signals (ongoing requests, queue
   depth, KV-cache use) ``ceil(total / target)``: the pool's total over its ready replicas
   (plus the requests a router holds because no replica could take them) divided by the
   value one replica should carry (Ray Serve's and KEDA's rule). For the SLO signals
   (``ttft_p90_ms``, ``itl_p90_ms``) one step at a time: one more replica while the windowed
   p90 is above the target, one fewer while it is below ``SLO_DOWN_FRACTION`` of it (latency
   is not linear in replicas), no change in between or without observations. Clamped to
   ``[min_replicas, max_replicas]``.
2. Hysteresis, per count: the pool grows to a count once ``wanted`` has stayed at or above it
   for ``upscale_delay_s`` (to the largest such count: the smallest wanted over that stretch),
   and shrinks to a count once ``wanted`` has stayed at or below it for ``downscale_delay_s``
   (the smallest such). Any tick where ``wanted`` equals the count (or crosses to the other
   side) starts every stretch again, so a load that wavers around a boundary changes nothing.
   A stretch toward a count beyond the one just decided goes on across the decision: a load
   seen rising in two steps (the heartbeats catching up with a jump) grows the pool the second
   time as soon as that count has been wanted for the delay, not a whole delay after the first.
3. An empty pool with a request waiting (or below ``min_replicas``) grows at once: a waiting
   request is not a fluctuation.
4. No shrinking while a replica of the pool is still starting (the stretch below starts once
   it serves): draining a serving replica in favour of one not yet serving would leave the
   load nowhere to go.

Every decision carries its reason in words (the event the coordinator records).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ttdist.runtime.autoscale.config import SLO_SIGNALS, AutoscaleConfig

SLO_DOWN_FRACTION = 0.5   # an SLO signal below this fraction of its target: one replica fewer


@dataclass(frozen=True)
class PoolLoad:
    """A pool's load now, from its replicas' heartbeats and its routers' reports."""

    replicas: int                    # in the pool: ready, starting or restarting (not draining away)
    ready: int = 0                   # of which ready (the load below is theirs)
    starting: int = 0                # of which starting
    ongoing: int = 0                 # requests running or waiting on the ready replicas
    queued: int = 0                  # of which waiting for a batch slot
    kv_used: float = 0.0             # sum over ready replicas of their KV pages in use (fraction each)
    waiting_for_replica: int = 0     # requests a router holds because no replica could take them
    latency_p90_ms: float | None = None   # the SLO signal's windowed p90 (None: no observation in the window)

    def total(self, signal: str) -> float:
        if signal == "ongoing_requests":
            return self.ongoing + self.waiting_for_replica
        if signal == "queue_depth":
            return self.queued + self.waiting_for_replica
        if signal == "kv_cache_use":
            return self.kv_used
        raise ValueError(f"{signal} is not a load signal")


@dataclass(frozen=True)
class Decision:
    replicas: int    # the pool's new count
    previous: int
    reason: str

    @property
    def up(self) -> bool:
        return self.replicas > self.previous


@dataclass(frozen=True)
class ScaleState:
    """Each count ``wanted`` has kept asking for beyond the pool's (all above it, or all below),
    with the time since when: ``((count, since), ...)``."""

    held: tuple[tuple[int, float], ...] = ()

    def since(self, count: int) -> float | None:
        return next((t for c, t in self.held if c == count), None)


def wanted(config: AutoscaleConfig, load: PoolLoad) -> tuple[int, str]:
    """The count the load asks for (clamped), and why in words."""
    n, signal, target = load.replicas, config.signal, config.target
    if signal in SLO_SIGNALS:
        p90 = load.latency_p90_ms
        if p90 is None:
            raw, why = (n, "no latency observed") if load.ongoing + load.waiting_for_replica else (0, "idle")
        elif p90 > target:
            raw, why = n + 1, f"{signal} {p90:.1f} > target {target:g}"
        elif p90 < target * SLO_DOWN_FRACTION:
            raw, why = n - 1, f"{signal} {p90:.1f} < {SLO_DOWN_FRACTION:g} x target {target:g}"
        else:
            raw, why = n, f"{signal} {p90:.1f} within target {target:g}"
        if load.waiting_for_replica and raw < 1:
            raw, why = 1, f"{load.waiting_for_replica} request(s) waiting for a replica"
    else:
        total = load.total(signal)
        raw = math.ceil(total / target - 1e-9)
        per = f"{total / load.ready:.2f} per ready replica" if load.ready else "no ready replica"
        why = f"{signal} {total:g} in all ({per}), target {target:g} per replica"
        if load.waiting_for_replica:
            why += f", {load.waiting_for_replica} request(s) waiting for a replica"
    return max(config.min_replicas, min(config.max_replicas, raw)), why


def decide(config: AutoscaleConfig, load: PoolLoad, state: ScaleState, now: float) -> tuple[Decision | None, ScaleState]:
    """The pool's decision at ``now`` (None: keep the count) and the state for the next call."""
    want, why = wanted(config, load)
    n = load.replicas
    if want > n and (n == 0 or n < config.min_replicas):
        return Decision(want, n, f"{why}: {n} -> {want} now"), ScaleState()
    if want == n or (want < n and load.starting):
        return None, ScaleState()
    up = want > n
    counts = range(n + 1, want + 1) if up else range(want, n)
    held = tuple((c, now if state.since(c) is None else state.since(c)) for c in counts)
    delay = config.upscale_delay_s if up else config.downscale_delay_s
    due = [(c, since) for c, since in held if now - since >= delay]
    if not due:
        return None, ScaleState(held)
    count, since = max(due) if up else min(due)
    later = ScaleState(tuple((c, t) for c, t in held if (c > count if up else c < count)))
    return Decision(count, n, f"{why}: wanted {'>=' if up else '<='} {count} for {now - since:.1f} s: {n} -> {count}"), later


class Autoscaler:
    """``decide`` with its state kept between calls (one per replica pool)."""

    def __init__(self, config: AutoscaleConfig) -> None:
        config.check()
        self.config = config
        self.state = ScaleState()

    def step(self, load: PoolLoad, now: float) -> Decision | None:
        decision, self.state = decide(self.config, load, self.state, now)
        return decision
