"""How one replica pool follows its load: the ``autoscale:`` settings, checked once.

```yaml
autoscale: {min_replicas: 1, max_replicas: 4, target: {ongoing_requests: 24},
            upscale_delay_s: 10, downscale_delay_s: 60}
```

``target`` names ONE signal and its value per replica (see ``SIGNALS``); the pool holds
``ceil(load / target)`` replicas within ``[min_replicas, max_replicas]``, changing only after
the wanted count has stayed above (below) the current one for ``upscale_delay_s``
(``downscale_delay_s``). ``min_replicas: 0`` lets an idle pool go to no replica; a request
then waits (within its deadline) while one starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

# signal -> what its target value means (per replica)
SIGNALS = {
    "ongoing_requests": "requests running or waiting on a replica (Ray Serve's target_ongoing_requests)",
    "queue_depth": "requests waiting on a replica for a batch slot",
    "kv_cache_use": "fraction of a replica's KV-cache pages in use, 0..1",
    "ttft_p90_ms": "the 90th percentile time to first token, ms, over the last window (an SLO)",
    "itl_p90_ms": "the 90th percentile inter-token latency, ms, over the last window (an SLO)",
}
SLO_SIGNALS = ("ttft_p90_ms", "itl_p90_ms")


class AutoscaleConfigError(ValueError):
    """An ``autoscale:`` setting that cannot work; the message names the field."""


@dataclass(frozen=True)
class AutoscaleConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    signal: str = "ongoing_requests"    # one of SIGNALS (``target: {<signal>: <value>}`` in a spec)
    target: float = 2.0                  # the signal's value per replica the pool is sized for
    upscale_delay_s: float = 10.0        # wanted > current this long before a replica is added
    downscale_delay_s: float = 60.0      # wanted < current this long before one is drained away
    initial_replicas: int | None = None  # replicas at launch (None: min_replicas)
    drain_timeout_s: float = 60.0        # a replica scaled away lets its streams finish this long
    slo_window_s: float = 30.0           # SLO signals: the latency window a p90 is taken over
    request_resources: bool = True       # ask Ray's autoscaler for the chips of replicas that do not fit

    @property
    def start_replicas(self) -> int:
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    def check(self, where: str = "autoscale") -> None:
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise AutoscaleConfigError(f"{where}.{name} must be an integer >= 0, got {value!r}")
        if self.max_replicas < 1:
            raise AutoscaleConfigError(f"{where}.max_replicas must be >= 1, got {self.max_replicas}")
        if self.min_replicas > self.max_replicas:
            raise AutoscaleConfigError(f"{where}.min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        if self.signal not in SIGNALS:
            raise AutoscaleConfigError(f"{where}.target: unknown signal {self.signal!r}; one of {', '.join(SIGNALS)}")
        if not (_number(self.target) and self.target > 0 and math.isfinite(self.target)):
            raise AutoscaleConfigError(f"{where}.target.{self.signal} must be a number > 0, got {self.target!r}")
        if self.signal == "kv_cache_use" and self.target > 1:
            raise AutoscaleConfigError(f"{where}.target.kv_cache_use is a fraction in (0, 1], got {self.target}")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            if not (_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise AutoscaleConfigError(f"{where}.{name} must be a number of seconds >= 0, got {getattr(self, name)!r}")
        for name in ("drain_timeout_s", "slo_window_s"):
            if not (_number(getattr(self, name)) and getattr(self, name) > 0):
                raise AutoscaleConfigError(f"{where}.{name} must be a number of seconds > 0, got {getattr(self, name)!r}")
        n = self.initial_replicas
        if n is not None and not (isinstance(n, int) and self.min_replicas <= n <= self.max_replicas):
            raise AutoscaleConfigError(f"{where}.initial_replicas must be an integer in "
                                       f"{self.min_replicas}..{self.max_replicas}, got {n!r}")
        if not isinstance(self.request_resources, bool):
            raise AutoscaleConfigError(f"{where}.request_resources must be true or false, got {self.request_resources!r}")

    @classmethod
    def from_mapping(cls, raw, where: str = "autoscale") -> "AutoscaleConfig":
        """The checked config of a spec's ``autoscale:`` mapping (``target: {<signal>: <value>}``)."""
        if not isinstance(raw, dict):
            raise AutoscaleConfigError(f"{where} must be a mapping of settings, got {raw!r}")
        known = {f.name for f in fields(cls)} - {"signal"}
        bad = sorted(set(raw) - known)
        if bad:
            raise AutoscaleConfigError(f"{where}: unknown setting {bad[0]!r}; known: {', '.join(sorted(known))}")
        raw = dict(raw)
        if "target" in raw:
            target = raw.pop("target")
            if not (isinstance(target, dict) and len(target) == 1):
                raise AutoscaleConfigError(f"{where}.target must name one signal and its value, e.g. "
                                           f"{{ongoing_requests: 24}}; signals: {', '.join(SIGNALS)}")
            (raw["signal"], raw["target"]), = target.items()
        config = cls(**raw)
        config.check(where)
        return config


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
