"""Size a fleet for a load and an SLO: which system, batch and precision, and how many replicas.

For every candidate (each named system, each precision preset, each decode batch that fits at
the load's context) ``plan()`` gives one replica's prefill time for the load's prompt and its
decode step; a discrete-event simulation of the engine's scheduler (``queueing.py``) then finds
the fewest replicas whose p90 TTFT and p90 TPOT meet the SLO at the load's Poisson rate, the
p50 / p90 latencies there, and the rate at which that fleet stops meeting the SLO. Candidates
are ranked by chips (replicas x chips per replica), then by saturation rate.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ttdist.planner.catalog import PlanError
from ttdist.planner.plan import Plan, plan
from ttdist.planner.queueing import Latency, Load, Service, capacity, meets, saturation_rate, simulate

SYSTEMS = ("n150", "n300", "t3k", "tg")
PRECISIONS = ("performance", "accuracy")
BATCHES = (32, 16, 8)
MAX_REPLICAS = 1024


@dataclass(frozen=True)
class Slo:
    ttft_s: float | None = None
    tpot_s: float | None = None

    def to_json(self) -> dict:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "percentile": 90}


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*$")


def parse_slo(text: str) -> Slo:
    """``ttft=500ms,tpot=50ms`` (units us, ms, s): the p90 latencies every request class must meet."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        match = _DURATION.match(value)
        if not sep or key not in ("ttft", "tpot") or not match or float(match.group(1)) <= 0:
            raise PlanError("slo", f"{part!r} is not ttft=DURATION or tpot=DURATION (such as ttft=500ms,tpot=50ms)")
        values[key] = float(match.group(1)) * _UNITS[match.group(2)]
    if not values:
        raise PlanError("slo", f"{text!r} names no target: use ttft=500ms,tpot=50ms")
    return Slo(values.get("ttft"), values.get("tpot"))


def parse_load(text: str) -> Load:
    """``rate=20,input=1024,output=256``: requests per second (Poisson), prompt and output tokens."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("rate", "input", "output"):
            raise PlanError("load", f"{part!r} is not rate=, input= or output= (such as rate=20,input=1024,output=256)")
        try:
            values[key] = float(value)
        except ValueError:
            raise PlanError("load", f"{part!r}: {value.strip()!r} is not a number") from None
    return _load(values)


def load_file(path: str) -> Load:
    """A JSON object ``{"rate": 20, "input": 1024, "output": 256}``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PlanError("load-file", f"{path}: {err}") from None
    if not isinstance(raw, dict):
        raise PlanError("load-file", f"{path}: not a JSON object with rate, input and output")
    try:
        return _load(raw, field="load-file")
    except (TypeError, ValueError):
        raise PlanError("load-file", f"{path}: rate, input and output must be numbers") from None


def _load(values: dict, field: str = "load") -> Load:
    missing = [k for k in ("rate", "input", "output") if k not in values]
    if missing:
        raise PlanError(field, f"missing {', '.join(missing)} (such as rate=20,input=1024,output=256)")
    rate, inp, out = float(values["rate"]), values["input"], values["output"]
    if not rate > 0 or not math.isfinite(rate):
        raise PlanError(field, f"rate must be a positive number of requests per second, got {values['rate']!r}")
    for key, value in (("input", inp), ("output", out)):
        if float(value) != int(float(value)) or int(float(value)) < 1:
            raise PlanError(field, f"{key} must be a whole number of tokens >= 1, got {value!r}")
    return Load(rate, int(float(inp)), int(float(out)))


@dataclass(frozen=True)
class Option:
    """One way to serve the load: a replica's plan, how many of them, and what users would see."""

    plan: Plan
    service: Service              # per replica, with ``replicas`` set to the fleet's count
    latency: Latency              # at the load's rate
    saturation_rate: float        # requests/s at which the fleet stops meeting the SLO

    @property
    def chips(self) -> int:
        return self.service.replicas * self.plan.system.mesh.num_chips

    def to_json(self) -> dict:
        p = self.plan
        return {"system": p.system.mesh.name, "shape": p.system.mesh.shape_str, "precision": p.precision.name,
                "batch": self.service.batch, "replicas": self.service.replicas, "chips": self.chips,
                "prefill_s": self.service.prefill_s, "decode_step_s": self.service.decode_s,
                "latency": self.latency.to_json(), "saturation_rate": self.saturation_rate,
                "plan": p.to_json()}


def size_fleet(model: str, load: Load, slo: Slo, *, systems=SYSTEMS, precisions=PRECISIONS, batches=BATCHES,
               requests: int = 1000, seed: int = 0) -> list[Option]:
    """Every candidate that can meet ``slo`` at ``load``, fewest chips first."""
    options = []
    for system in systems:
        for precision in precisions:
            for batch in batches:
                option = _candidate(model, system, precision, batch, load, slo, requests, seed)
                if option is not None:
                    options.append(option)
    options.sort(key=lambda o: (o.chips, -o.saturation_rate / o.chips))
    return options


def _candidate(model, system, precision, batch, load: Load, slo: Slo, requests: int, seed: int) -> Option | None:
    try:
        p = plan(model, system, precision=precision, batch=batch, context=load.input + load.output,
                 input_len=load.input)
    except PlanError as err:
        if err.field == "system":
            return None               # does not fit this system at this context
        raise
    if p.users < batch:
        return None                   # the batch does not fit; a smaller candidate covers it

    def service(replicas: int) -> Service:
        return Service(p.ttft_s, p.decode.total_s, p.users, replicas)

    def ok(replicas: int) -> bool:
        s = service(replicas)
        n = _requests(requests, replicas)
        return capacity(s, load) > load.rate and meets(simulate(s, load, requests=n, seed=seed), slo.ttft_s, slo.tpot_s)

    per_replica = saturation_rate(service(1), load, slo.ttft_s, slo.tpot_s, requests=requests, seed=seed)
    if per_replica <= 0:
        return None                   # even an idle replica misses the SLO
    lo = max(1, math.ceil(load.rate / capacity(service(1), load)))   # fewer cannot keep up at all
    hi = max(lo, math.ceil(load.rate / per_replica))                 # pooled replicas do at least this well
    while not ok(hi):
        if hi >= MAX_REPLICAS:
            return None
        lo, hi = hi + 1, min(MAX_REPLICAS, 2 * hi)
    while lo < hi:                    # the fewest replicas that meet the SLO
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    fleet = service(hi)
    n = _requests(requests, hi)
    latency = simulate(fleet, load, requests=n, seed=seed)
    rate = saturation_rate(fleet, load, slo.ttft_s, slo.tpot_s, requests=n, seed=seed, floor=load.rate)
    return Option(p, fleet, latency, rate)


def _requests(base: int, replicas: int) -> int:
    """Enough arrivals for every replica to fill its batch and queue: the simulation starts empty."""
    return min(20000, max(base, 100 * replicas))
