"""Per-request latencies and the run's summary, defined as vLLM's ``bench serve`` defines them.

* TTFT: send to the first chunk that carries a token.
* TPOT: (E2E - TTFT) / (output tokens - 1), for requests with more than one output token.
* ITL: the gap before each later chunk, shared by the tokens it carries (a chunk of k tokens
  after a gap g counts k inter-token latencies of g / k).
* E2E: send to the end of the stream.
* Throughput: requests, output tokens and input + output tokens completed per second of the
  run (first send to last end, warm-up excluded).
* Goodput: requests per second that met every SLO given (``--slo ttft=200ms,tpot=50ms``;
  keys ttft, tpot, itl (the request's mean ITL), e2el; units us, ms or s).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ttdist.loadgen.targets import Outcome

SLO_KEYS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50, 90, 99)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_SLO = re.compile(r"^(\w+)\s*[=:]\s*(\d+(?:\.\d+)?)\s*(us|ms|s)?$")


class SloError(ValueError):
    field = "slo"


def parse_slo(text: str | None) -> dict[str, float]:
    """``ttft=200ms,tpot=50ms`` -> {"ttft": 0.2, "tpot": 0.05} (seconds); a bare number is ms."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        m = _SLO.match(part.strip())
        if not m or m.group(1).lower() not in SLO_KEYS:
            raise SloError(f"--slo: {part.strip()!r} is not KEY=VALUE[us|ms|s] with KEY one of {', '.join(SLO_KEYS)}")
        value = float(m.group(2)) * _UNITS[m.group(3) or "ms"]
        if value <= 0:
            raise SloError(f"--slo: {part.strip()!r} must be positive")
        out[m.group(1).lower()] = value
    return out


@dataclass(frozen=True)
class RequestMetrics:
    ok: bool
    start_s: float              # since the run began
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    tpot_s: float               # NaN for one output token
    e2el_s: float
    itl_s: tuple[float, ...]
    error: str = ""

    @property
    def mean_itl_s(self) -> float:
        return float(np.mean(self.itl_s)) if self.itl_s else float("nan")

    def meets(self, slo: dict[str, float]) -> bool:
        values = {"ttft": self.ttft_s, "tpot": self.tpot_s, "itl": self.mean_itl_s, "e2el": self.e2el_s}
        return self.ok and all(not values[k] > v for k, v in slo.items())  # NaN (no such gap) passes

    def to_json(self) -> dict:
        out = asdict(self)
        out["itl_s"] = list(self.itl_s)
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}


def request_metrics(o: Outcome, t0: float) -> RequestMetrics:
    if not o.ok:
        nan = float("nan")
        return RequestMetrics(False, o.sent - t0, o.prompt_tokens, 0, nan, nan, o.done - o.sent, (), o.error or "no tokens")
    ttft = o.chunks[0][0] - o.sent
    e2el = o.done - o.sent
    itl: list[float] = []
    for (before, _), (at, tokens) in zip(o.chunks, o.chunks[1:]):
        itl += [(at - before) / tokens] * tokens
    tokens = o.output_tokens or sum(n for _, n in o.chunks)
    tpot = (e2el - ttft) / (tokens - 1) if tokens > 1 else float("nan")
    return RequestMetrics(True, o.sent - t0, o.prompt_tokens, tokens, ttft, tpot, e2el, tuple(itl))


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values) -> "Stat":
        a = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
        if a.size == 0:
            return cls(*(float("nan"),) * 5)
        p = np.percentile(a, PERCENTILES)
        return cls(float(a.mean()), float(a.std()), float(p[0]), float(p[1]), float(p[2]))


@dataclass(frozen=True)
class Summary:
    completed: int
    failed: int
    duration_s: float
    input_tokens: int
    output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None            # requests/s meeting the SLOs; None without SLOs
    slo: dict[str, float]
    ttft: Stat
    tpot: Stat
    itl: Stat
    e2el: Stat
    errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        def clean(obj):
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            return None if isinstance(obj, float) and np.isnan(obj) else obj
        return clean(asdict(self))


def summarize(rows: list[RequestMetrics], duration_s: float, slo: dict[str, float]) -> Summary:
    good = [r for r in rows if r.ok]
    errors: dict[str, int] = {}
    for r in rows:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    dur = max(duration_s, 1e-9)
    inp = sum(r.prompt_tokens for r in good)
    out = sum(r.output_tokens for r in good)
    goodput = sum(r.meets(slo) for r in good) / dur if slo else None
    return Summary(
        completed=len(good), failed=len(rows) - len(good), duration_s=duration_s, input_tokens=inp, output_tokens=out,
        request_throughput=len(good) / dur, output_throughput=out / dur, total_token_throughput=(inp + out) / dur,
        goodput=goodput, slo=dict(slo),
        ttft=Stat.of(r.ttft_s for r in good), tpot=Stat.of(r.tpot_s for r in good),
        itl=Stat.of(x for r in good for x in r.itl_s), e2el=Stat.of(r.e2el_s for r in good), errors=errors,
    )
