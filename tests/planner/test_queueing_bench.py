"""The planner's queueing model against ``ttdist bench`` on scripted replicas.

``bench/serve_scripted.py`` serves two scripted replicas behind a real router (their own
processes), each taking the step times the planner's model gives a replica: a prefill of the
prompt, then decode steps of the whole batch. ``ttdist bench`` loads them with Poisson arrivals;
the simulation (``ttdist.planner.queueing``) runs on the very arrival times the benchmark sent.

* Below saturation, predicted and measured TTFT / TPOT p50 and p90 agree within 20 %.
* Past it (arrivals at twice what the replicas can serve), the rate the fleet saturates at,
  the requests per second it finishes, agrees within 15 % with the simulation and with the
  analytic bound ``capacity()``.

The serving path's own fixed cost per request (client, router and replica hops; the ~15 ms vLLM
adds on a Galaxy, in DESIGN.md, is the same kind of cost) is measured first, one request at a
time, and given to the simulation as ``overhead_s``; the queueing itself is not calibrated. Step
times are tens of milliseconds so that the engines' own overhead (about a millisecond per step
on a loaded two-core box) stays small.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ttdist.planner.queueing import Load, Service, capacity, meets, percentile, simulate

ROOT = Path(__file__).resolve().parents[2]
REPLICAS, BATCH = 2, 4
PREFILL_S, DECODE_S = 0.060, 0.040          # per prompt, per decode step
INPUT, OUTPUT = 64, 8
RUN = 200                                   # requests per benchmark run below saturation
SERVICE = Service(PREFILL_S, DECODE_S, BATCH, REPLICAS)
CAPACITY = capacity(SERVICE, Load(1.0, INPUT, OUTPUT))


@pytest.fixture(scope="module")
def target():
    cmd = [sys.executable, str(ROOT / "bench" / "serve_scripted.py"), "--replicas", str(REPLICAS),
           "--step-ms", str(DECODE_S * 1e3), "--prefill-us", str(PREFILL_S / INPUT * 1e6),
           "--max-batch", str(BATCH), "--vocab-size", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()
        assert " on 127.0.0.1:" in line, line
        yield line.rsplit(" on ", 1)[1].strip()
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
           "--target", target, "--num-prompts", str(prompts), "--request-rate", f"{rate:.4f}",
           "--input-len", str(INPUT), "--output-len", str(OUTPUT), "--vocab-size", "1000", "--seed", str(seed),
           "--warmup", "1", "--no-progress", "--json", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["runs"][0]["requests"]
    assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    return rows


def measured(rows: list[dict]) -> dict:
    ttft = [r["ttft_s"] for r in rows]
    tpot = [r["tpot_s"] for r in rows]
    span = max(r["start_s"] + r["e2el_s"] for r in rows) - min(r["start_s"] for r in rows)
    return {"ttft_p50": percentile(ttft, 50), "ttft_p90": percentile(ttft, 90),
            "tpot_p50": percentile(tpot, 50), "tpot_p90": percentile(tpot, 90), "throughput": len(rows) / span}


def predicted(service: Service, rows: list[dict], rate: float):
    return simulate(service, Load(rate, INPUT, OUTPUT), arrivals=sorted(r["start_s"] for r in rows))


def test_predicted_latency_and_saturation_match_the_benchmark(target, tmp_path):
    alone = bench(target, 1000.0, 6, tmp_path, 0, "--max-concurrency", "1")
    overhead = max(0.0, percentile([r["ttft_s"] for r in alone], 50) - PREFILL_S)
    service = replace(SERVICE, overhead_s=overhead)
    print(f"\nserving overhead {overhead * 1e3:.1f} ms per request; capacity {CAPACITY:.2f} req/s")

    rate = 0.7 * CAPACITY
    rows = bench(target, rate, RUN, tmp_path, seed=1)
    got, want = measured(rows), predicted(service, rows, rate)
    print(f"at {rate:.2f} req/s ({len(rows)} requests):")
    for key in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90"):
        print(f"  {key}: predicted {getattr(want, key) * 1e3:7.1f} ms  measured {got[key] * 1e3:7.1f} ms  "
              f"({got[key] / getattr(want, key) - 1:+.1%})")
    misses = [key for key in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")
              if abs(got[key] / getattr(want, key) - 1) > 0.20]

    rate = 2.0 * CAPACITY
    rows = bench(target, rate, RUN // 2, tmp_path, seed=2)
    got, want = measured(rows), predicted(service, rows, rate)
    print(f"overloaded at {rate:.2f} req/s: saturates at {got['throughput']:.2f} req/s measured, "
          f"{want.throughput:.2f} simulated ({got['throughput'] / want.throughput - 1:+.1%}), "
          f"{CAPACITY:.2f} bound ({got['throughput'] / CAPACITY - 1:+.1%})")
    assert not misses, misses
    assert abs(got["throughput"] / want.throughput - 1) <= 0.15
    assert abs(got["throughput"] / CAPACITY - 1) <= 0.15


def test_simulation_agrees_with_the_analytic_bounds():
    """An idle fleet answers in one prefill and decodes at the step time; past capacity it queues
    and finishes requests at the capacity."""
    idle = simulate(SERVICE, Load(0.01, INPUT, OUTPUT), requests=50)
    assert idle.ttft_p90 == pytest.approx(PREFILL_S)
    assert idle.tpot_p90 == pytest.approx(DECODE_S)
    over = simulate(SERVICE, Load(2 * CAPACITY, INPUT, OUTPUT), requests=4000)
    assert over.ttft_p90 > 20 * PREFILL_S
    assert not meets(over, 1.0, 0.1)
    assert over.throughput == pytest.approx(CAPACITY, rel=0.05)
