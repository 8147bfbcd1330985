"""The planner's queueing model against ``ttdist bench`` on scripted replicas.

``bench/serve_scripted.py`` serves two scripted replicas behind a real router (their own
processes). Their step times are the planner's for Llama-3.1-8B on an N300 (a prompt's prefill,
then decode steps of the whole batch), at batch 8 and at batch 32. ``ttdist bench`` loads them
with Poisson arrivals; the simulation (``ttdist.planner.queueing``) runs on the same arrivals.

* Saturation: ``saturation_rate()`` predicts the rate at which the fleet stops meeting the SLO
  (p90 TTFT and p90 TPOT) for the very arrival sequence the benchmark sends (``--seed`` fixes it;
  at rate r it is the rate-1 sequence divided by r). The benchmark must meet the SLO at 0.85x
  that rate and miss it at 1.15x: the measured saturation rate is within 15 % of the predicted.
* Latency: at 0.85x, predicted and measured TTFT / TPOT p50 and p90 agree within 20 %.

The serving path's own fixed cost per request (client, router and replica hops; the ~15 ms vLLM
adds on a Galaxy, in DESIGN.md, is the same kind of cost) is given to the simulation as
``overhead_s``; the queueing itself is not calibrated. Each
run uses its own prompts (the scripted replicas cache prefixes: a repeated prompt would skip its
prefill). What the machine adds to a step and to a request is measured just before each run, one
request at a time. About a minute per batch size on a two-core machine (marked slow).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ttdist.loadgen.runner import Load as BenchLoad
from ttdist.loadgen.runner import intervals
from ttdist.planner import plan
from ttdist.planner.queueing import Load, Service, capacity, meets, percentile, saturation_rate, simulate

ROOT = Path(__file__).resolve().parents[2]
MODEL, SYSTEM, REPLICAS = "llama-3.1-8b", "n300", 2
INPUT, OUTPUT = 128, 32
SLO_TTFT_S, SLO_TPOT_S = 0.600, 0.150          # p90 (TPOT stays below 0.150 here: TTFT sets the saturation)
RUN = 200                                      # requests per benchmark run
KEYS = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")


@dataclass(frozen=True)
class Fleet:
    target: str
    service: Service


@pytest.fixture(scope="module", params=[8, 32], ids=lambda b: f"batch{b}")
def fleet(request):
    p = plan(MODEL, SYSTEM, batch=request.param, context=INPUT + OUTPUT, input_len=INPUT)
    service = Service(p.ttft_s, p.decode.total_s, p.users, REPLICAS)
    cmd = [sys.executable, str(ROOT / "bench" / "serve_scripted.py"), "--replicas", str(REPLICAS),
           "--step-ms", f"{service.decode_s * 1e3:.4f}", "--prefill-us", f"{service.prefill_s / INPUT * 1e6:.4f}",
           "--max-batch", str(service.batch), "--vocab-size", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()
        assert " on 127.0.0.1:" in line, line
        yield Fleet(line.rsplit(" on ", 1)[1].strip(), service)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(target: str, rate: float, prompts: int, tmp_path: Path, seed: int, *extra: str) -> list[dict]:
    out = tmp_path / f"run-{rate:.2f}-{seed}.json"
    cmd = [sys.executable, "-c", "import sys; from ttdist.cli import main; sys.exit(main())", "bench",
           "--target", target, "--num-prompts", str(prompts), "--request-rate", repr(rate),
           "--input-len", str(INPUT), "--output-len", str(OUTPUT), "--vocab-size", "1000", "--seed", str(seed),
           "--warmup", "1", "--no-progress", "--json", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["runs"][0]["requests"]
    assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    return rows


def measured(rows: list[dict]) -> dict:
    ttft = [r["ttft_s"] for r in rows]
    tpot = [r["tpot_s"] for r in rows]
    return {"ttft_p50": percentile(ttft, 50), "ttft_p90": percentile(ttft, 90),
            "tpot_p50": percentile(tpot, 50), "tpot_p90": percentile(tpot, 90)}


def achieved(planned: Service, alone: list[dict]) -> Service:
    """The step times the scripted replicas achieve, from requests sent one at a time: a step takes
    what the planner says plus what the engine's loop adds on this machine (the decode step as
    measured, TPOT alone; a prefill step pays the same addition), and the serving path adds a fixed
    cost to TTFT (TTFT alone minus the prefill step). Nothing about queueing is taken from the run."""
    step = max(planned.decode_s, percentile([r["tpot_s"] for r in alone], 50))
    prefill = planned.prefill_s + step - planned.decode_s
    overhead = max(0.0, percentile([r["ttft_s"] for r in alone], 50) - prefill)
    return replace(planned, prefill_s=prefill, decode_s=step, overhead_s=overhead)


def unit_arrivals(seed: int) -> list[float]:
    """The arrival times ``ttdist bench --seed SEED`` sends at 1 request/s (its sequence at rate r
    is this one divided by r)."""
    return list(itertools.accumulate(intervals(BenchLoad(rate=1.0, seed=seed), RUN)))


@pytest.mark.slow  # ~1 minute per batch size on two cores (four benchmark runs against real processes)
def test_saturation_rate_and_latency_match_the_benchmark(fleet, tmp_path):
    batch = fleet.service.batch
    load = Load(1.0, INPUT, OUTPUT)
    print(f"\nbatch {batch}: prefill {fleet.service.prefill_s * 1e3:.1f} ms, decode step "
          f"{fleet.service.decode_s * 1e3:.1f} ms planned")
    results = {}
    for factor, seed in ((0.85, 1), (1.15, 2)):
        # what this machine adds, measured just before the run (a shared box's load drifts)
        alone = bench(fleet.target, 1000.0, 12, tmp_path, 100 * seed + batch, "--max-concurrency", "1")
        service = achieved(fleet.service, alone)
        print(f"  the replicas take {service.decode_s * 1e3:.1f} ms per decode step alone; serving overhead "
              f"{service.overhead_s * 1e3:.1f} ms; capacity {capacity(service, load):.2f} req/s")
        predicted_rate = saturation_rate(service, load, SLO_TTFT_S, SLO_TPOT_S, arrivals=unit_arrivals(seed))
        rate = factor * predicted_rate
        rows = bench(fleet.target, rate, RUN, tmp_path, seed)
        got = measured(rows)
        want = simulate(service, replace(load, rate=rate), arrivals=sorted(r["start_s"] for r in rows))
        results[factor] = (got, want)
        print(f"  predicted saturation {predicted_rate:.2f} req/s; at {factor}x = {rate:.2f} req/s the benchmark "
              f"{'meets' if meets_slo(got) else 'misses'} the SLO (p90 TTFT <= {SLO_TTFT_S * 1e3:.0f} ms, "
              f"p90 TPOT <= {SLO_TPOT_S * 1e3:.0f} ms)")
        for key in KEYS:
            print(f"    {key}: predicted {getattr(want, key) * 1e3:7.1f} ms  measured {got[key] * 1e3:7.1f} ms  "
                  f"({got[key] / getattr(want, key) - 1:+.1%})")

    below, _ = results[0.85]
    above, _ = results[1.15]
    assert meets_slo(below), "the benchmark misses the SLO at 0.85x the predicted saturation rate"
    assert not meets_slo(above), "the benchmark still meets the SLO at 1.15x the predicted saturation rate"
    got, want = results[0.85]
    misses = [key for key in KEYS if abs(got[key] / getattr(want, key) - 1) > 0.20]
    assert not misses, misses


def meets_slo(got: dict) -> bool:
    return got["ttft_p90"] <= SLO_TTFT_S and got["tpot_p90"] <= SLO_TPOT_S


def test_simulation_agrees_with_the_analytic_bounds():
    """An idle fleet answers in one prefill and decodes at the step time; past capacity it queues
    and finishes requests at the capacity."""
    service = Service(0.060, 0.040, 4, REPLICAS)
    load = Load(1.0, 64, 8)
    cap = capacity(service, load)
    idle = simulate(service, replace(load, rate=0.01), requests=50)
    assert idle.ttft_p90 == pytest.approx(0.060)
    assert idle.tpot_p90 == pytest.approx(0.040)
    over = simulate(service, replace(load, rate=2 * cap), requests=4000)
    assert over.ttft_p90 > 20 * 0.060
    assert not meets(over, 1.0, 0.1)
    assert over.throughput == pytest.approx(cap, rel=0.05)


def test_a_saturation_rate_is_where_the_slo_breaks():
    """Just below the predicted saturation rate the simulated fleet meets the SLO, just above it does not."""
    service = Service(0.0715, 0.0244, 8, REPLICAS)
    load = Load(1.0, INPUT, OUTPUT)
    rate = saturation_rate(service, load, SLO_TTFT_S, SLO_TPOT_S)
    assert 0 < rate < capacity(service, load)
    assert meets(simulate(service, replace(load, rate=0.98 * rate), requests=1000), SLO_TTFT_S, SLO_TPOT_S)
    assert not meets(simulate(service, replace(load, rate=1.05 * rate), requests=1000), SLO_TTFT_S, SLO_TPOT_S)
