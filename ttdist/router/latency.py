"""Recent time-to-first-token and inter-token latencies, summarised as p50 / p99."""

from __future__ import annotations

from collections import deque

from ttdist.dashboard.status import LatencySummary


class LatencyWindow:
    """The last ``size`` samples of one latency (seconds)."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def summary(self) -> LatencySummary:
        if not self._samples:
            return LatencySummary(p50=0.0, p99=0.0, count=0)
        ordered = sorted(self._samples)
        return LatencySummary(p50=_pick(ordered, 0.50), p99=_pick(ordered, 0.99), count=len(ordered))


def _pick(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
