"""A load ramp on an autoscaled pool of scripted replicas (a real local Ray cluster), driven by
``ttdist bench --rate-schedule`` with a rising then falling request rate.

The pool goes min -> max -> min (1 -> 3 -> 1): the scale decisions climb while the high rate
lasts and fall only after it ended (never a reversal: each steady phase keeps its direction,
and the one turn, the first scale-down, comes at least ``downscale_delay_s`` after the last
scale-up, by the events' timestamps); every new replica serves (a ``cold_start`` each); every
request of the schedule completes with exactly its output tokens (none lost, none cut by the
drains). The arrivals are Poisson (seeded): within the high phase the load wavers below the
boundary for moments, so a pool without hysteresis would scale down and up again there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import running_cluster
from tests.support.waiting import wait_for
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup
from ttdist.runtime.scripted_engine import ScriptedEngineConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MIN, MAX = 1, 3
OUTPUT = 40                       # tokens per request: 0.8 s of 20 ms steps
# (rate, seconds): ~0.4 ongoing (1 replica), ~6.8 ongoing (capped at 3); Poisson arrivals (seed 0): the high
# phase's ongoing count dips to 1-4 (fewer replicas wanted) for moments, which only hysteresis rides out
LOW, HIGH = (0.5, 6.0), (8.0, 14.0)
SCHEDULE = [LOW, HIGH, (0.5, 10.0)]
SCALE = AutoscaleConfig(min_replicas=MIN, max_replicas=MAX, target=2, upscale_delay_s=1.0, downscale_delay_s=4.0,
                        drain_timeout_s=60.0)
ENGINE = ScriptedEngineConfig(vocab_size=1000, step_s=0.02, max_context=4096, page_size=16, num_pages=512)
_COUNTS = re.compile(r"(\d+) -> (\d+)(?: now)?$")


def scale_path(events) -> tuple[list[str], list[int], list[float]]:
    """The scale decisions in order: their kinds, the pool's counts (the first one's previous
    count, then each new count) and their times."""
    decisions = [e for e in events if e.kind in ("scaled_up", "scaled_down")]
    counts = []
    for e in decisions:
        before, after = (int(x) for x in _COUNTS.search(e.message).groups())
        counts += [before, after] if not counts else [after]
    return [e.kind for e in decisions], counts, [e.time for e in decisions]


def bench(address: str, out: Path) -> dict:
    schedule = ",".join(f"{r:g}:{s:g}" for r, s in SCHEDULE)
    proc = subprocess.run(
        [sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())", "bench", "--target", address,
         "--rate-schedule", schedule, "--arrival", "poisson", "--input-len", "6", "--output-len", str(OUTPUT),
         "--warmup", "0", "--json", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["runs"][0]


def test_a_rising_then_falling_rate_scales_min_max_min_without_flapping_or_loss(tmp_path):
    config = ClusterConfig(engine="scripted", scripted=ENGINE, groups=(ReplicaGroup(),), port=0, dashboard_port=None,
                           max_batch=16, policy="least_load", health=HealthConfig(heartbeat_s=0.25), autoscale=SCALE)
    with running_cluster(config, serving_timeout_s=120) as deployment:
        assert len(deployment.snapshot().replicas) == MIN
        run = bench(deployment.address, tmp_path / "ramp.json")
        wait_for(lambda: len(deployment.snapshot().replicas) == MIN and
                 scale_path(deployment.snapshot().events)[1][-1:] == [MIN], 180, "the pool back to min_replicas")
        events = deployment.snapshot().events
    kinds, counts, times = scale_path(events)
    print(f"\nscale decisions {[str(k) for k in kinds]}; pool {counts}; at "
          f"{[round(t - run['started_at'], 1) for t in times]} s after the run began; cold starts: "
          + "; ".join(f"{e.replica_id} {e.message}" for e in events if e.kind == "cold_start"))

    # no request lost or cut: every one the schedule sent completed with all its tokens
    sent = sum(round(r * s) for r, s in SCHEDULE)
    rows = run["requests"]
    assert run["summary"]["completed"] == sent == len(rows) and run["summary"]["failed"] == 0, run["summary"]["errors"]
    assert [r["output_tokens"] for r in rows] == [OUTPUT] * sent

    # min -> max -> min, climbing then falling: no decision reversed
    ups = kinds.count("scaled_up")
    assert counts[0] == MIN and max(counts) == MAX and counts[-1] == MIN, counts
    assert kinds == ["scaled_up"] * ups + ["scaled_down"] * (len(kinds) - ups), kinds
    assert counts == sorted(counts[:ups + 1]) + sorted(counts[ups + 1:], reverse=True), counts
    assert [e.replica_id for e in events if e.kind == "cold_start"] == ["replica-1", "replica-2"]
    assert sum(e.kind == "replica_drained" for e in events) == MAX - MIN

    # each steady phase keeps its direction: up only once the high rate began, down only after it ended,
    # and the turn waited at least the downscale delay
    first_high = round(LOW[0] * LOW[1])
    last_high = first_high + round(HIGH[0] * HIGH[1]) - 1
    high_from = run["started_at"] + rows[first_high]["start_s"]
    high_to = run["started_at"] + rows[last_high]["start_s"]
    assert all(t >= high_from for t in times[:ups]), (times, high_from)
    assert all(t >= high_to for t in times[ups:]), (times, high_to)
    assert times[ups] - times[ups - 1] >= SCALE.downscale_delay_s
