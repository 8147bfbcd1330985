"""Workloads, load schedules and the metric definitions, on exact inputs."""

from __future__ import annotations

import math
import random

import pytest

from ttdist.loadgen import Load, LoadError, WorkloadError, parse_length, parse_slo, random_requests, shared_prefix_requests
from ttdist.loadgen.metrics import SloError, request_metrics, summarize
from ttdist.loadgen.runner import Phase, intervals, parse_schedule, schedule_times
from ttdist.loadgen.targets import Outcome


def test_length_distributions():
    rng = random.Random(0)
    assert parse_length("x", "17").sample(rng) == 17
    uniform = [parse_length("x", "5..9").sample(rng) for _ in range(500)]
    assert min(uniform) == 5 and max(uniform) == 9
    normal = [parse_length("x", "normal:100,10").sample(rng) for _ in range(2000)]
    assert 98 < sum(normal) / len(normal) < 102
    exp = [parse_length("x", "exp:50").sample(rng) for _ in range(4000)]
    assert 46 < sum(exp) / len(exp) < 54 and min(exp) >= 1
    for bad in ("", "0", "9..5", "normal:5", "abc", "-3"):
        with pytest.raises(WorkloadError) as err:
            parse_length("input-len", bad)
        assert err.value.field == "input-len"


def test_random_and_shared_prefix_prompts():
    reqs = random_requests(50, parse_length("i", "3..30"), parse_length("o", "7"), vocab=100, seed=1)
    assert all(len(r.prompt) == r.prompt_len and 3 <= r.prompt_len <= 30 and r.max_tokens == 7 for r in reqs)
    assert all(10 <= t < 100 for r in reqs for t in r.prompt)
    assert reqs == random_requests(50, parse_length("i", "3..30"), parse_length("o", "7"), vocab=100, seed=1)
    shared = shared_prefix_requests(4, 5, parse_length("p", "20"), parse_length("s", "6"), parse_length("o", "3"),
                                    vocab=1000, seed=2)
    assert len(shared) == 20 and all(r.prompt_len == 26 for r in shared)
    heads = {r.prompt[:20] for r in shared}
    assert len(heads) == 4 and all(sum(r.prompt[:20] == h for r in shared) == 5 for h in heads)
    assert [r.prompt[:20] for r in shared[:4]] != [shared[0].prompt[:20]] * 4  # interleaved


def test_slo_parsing():
    assert parse_slo("ttft=200ms,tpot=50ms") == {"ttft": 0.2, "tpot": 0.05}
    assert parse_slo("e2el=2s, itl=500us") == {"e2el": 2.0, "itl": 0.0005}
    assert parse_slo("ttft=300") == {"ttft": 0.3}
    for bad in ("ttft", "ttft=fast", "speed=3ms", "ttft=0ms", "ttft=3h"):
        with pytest.raises(SloError):
            parse_slo(bad)


def test_metrics_follow_their_definitions():
    # sent at 10.0; chunks of 1, 2 and 1 tokens; the stream ends at 10.5
    o = Outcome(10.0, chunks=[(10.1, 1), (10.3, 2), (10.4, 1)], done=10.5, prompt_tokens=8, output_tokens=4)
    m = request_metrics(o, t0=9.0)
    assert m.start_s == pytest.approx(1.0)
    assert m.ttft_s == pytest.approx(0.1) and m.e2el_s == pytest.approx(0.5)
    assert m.tpot_s == pytest.approx(0.4 / 3)
    assert m.itl_s == pytest.approx((0.1, 0.1, 0.1))
    assert m.meets({"ttft": 0.1, "tpot": 0.14}) and not m.meets({"ttft": 0.09})
    failed = request_metrics(Outcome(10.0, done=10.2, error="unavailable: down"), t0=9.0)
    s = summarize([m, failed], duration_s=2.0, slo={"ttft": 0.2})
    assert (s.completed, s.failed, s.input_tokens, s.output_tokens) == (1, 1, 8, 4)
    assert (s.request_throughput, s.output_throughput, s.total_token_throughput, s.goodput) == (0.5, 2.0, 6.0, 0.5)
    assert s.errors == {"unavailable: down": 1}
    assert s.ttft.p50 == pytest.approx(0.1) and summarize([m], 1.0, {}).goodput is None


def test_schedules():
    assert intervals(Load(), 4) == [0.0] * 4
    assert intervals(Load(rate=4, arrival="fixed"), 3) == [0.0, 0.25, 0.25]
    gaps = intervals(Load(rate=50, seed=3), 5001)
    assert gaps[0] == 0.0 and 0.019 < sum(gaps) / 5000 < 0.021
    assert gaps == intervals(Load(rate=50, seed=3), 5001)
    for kwargs, field in ((dict(rate=0), "request-rate"), (dict(rate=-1), "request-rate"),
                          (dict(rate=math.nan), "request-rate"), (dict(concurrency=0), "max-concurrency"),
                          (dict(arrival="burst"), "arrival"), (dict(warmup=-1), "warmup")):
        with pytest.raises(LoadError) as err:
            Load(**kwargs)
        assert err.value.field == field


def test_rate_schedule_phases():
    ramp = Load(arrival="fixed", schedule=parse_schedule("0.5:4, 4:1,0:2,1:2"))
    assert ramp.schedule == (Phase(0.5, 4), Phase(4, 1), Phase(0, 2), Phase(1, 2)) and ramp.count == 8
    assert schedule_times(ramp) == [0.0, 2.0, 4.0, 4.25, 4.5, 4.75, 7.0, 8.0]   # the pause: nothing in 5..7
    assert intervals(ramp, 8) == [0.0, 2.0, 2.0, 0.25, 0.25, 0.25, 2.25, 1.0]
    poisson = schedule_times(Load(seed=5, schedule=parse_schedule("10:1,100:1")))
    assert len(poisson) == 110 and poisson == sorted(poisson)
    assert all(t < 1 for t in poisson[:10]) and all(1 <= t < 2 for t in poisson[10:])   # each phase its count
    with pytest.raises(LoadError):
        intervals(ramp, 7)
    for text in ("fast", "1:0", "-1:5", "inf:2", "1:2:3", "0:5"):
        with pytest.raises(LoadError) as err:
            parse_schedule(text)
        assert err.value.field == "rate-schedule"
