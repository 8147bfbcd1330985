"""The planner's queueing model against ``ttdist bench`` on scripted replicas.

``bench/serve_scripted.py`` serves two scripted replicas behind a real router (their own
processes), each taking the step times the planner's model gives a replica: a prefill of the
prompt, then decode steps of the whole batch. ``ttdist bench`` loads them with Poisson arrivals;
the simulation (``ttdist.planner.queueing``) runs on the very arrival times the benchmark sent.
Predicted and measured TTFT / TPOT p50 and p90 must agree within 20 %, and the rate at which
the SLO stops being met within 15 %: at 0.85 x the predicted saturation rate the measured run
meets the SLO, at 1.15 x it does not. The serving path's own fixed cost per request (client,
router and replica hops; the ~15 ms vLLM adds on a Galaxy, in DESIGN.md, is the same kind of
cost) is measured first, one request at a time, and given to the simulation as ``overhead_s``;
the queueing itself is not calibrated. Step times are tens of milliseconds so that the engines'
own overhead (about a millisecond per step on a loaded two-core box) stays small.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ttdist.planner.queueing import Load, Service, meets, percentile, saturation_rate, simulate

ROOT = Path(__file__).resolve().parents[2]
REPLICAS, BATCH = 2, 4
PREFILL_S, DECODE_S = 0.060, 0.040          # per prompt, per decode step
INPUT, OUTPUT = 64, 8
SLO_TTFT, SLO_TPOT = 0.40, 0.10
RUN = 120                                   # requests per benchmark run
SERVICE = Service(PREFILL_S, DECODE_S, BATCH, REPLICAS)
LOAD = Load(1.0, INPUT, OUTPUT)


@pytest.fixture(scope="module")
def target():
    cmd = [sys.executable, str(ROOT / "bench" / "serve_scripted.py"), "--replicas", str(REPLICAS),
           "--step-ms", str(DECODE_S * 1e3), "--prefill-us", str(PREFILL_S / INPUT * 1e6),
           "--max-batch", str(BATCH), "--vocab-size", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
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
    return {"ttft_p50": percentile(ttft, 50), "ttft_p90": percentile(ttft, 90),
            "tpot_p50": percentile(tpot, 50), "tpot_p90": percentile(tpot, 90)}


def test_predicted_latency_and_saturation_match_the_benchmark(target, tmp_path):
    alone = bench(target, 1000.0, 6, tmp_path, 0, "--max-concurrency", "1")
    overhead = max(0.0, percentile([r["ttft_s"] for r in alone], 50) - PREFILL_S)
    service = replace(SERVICE, overhead_s=overhead)
    # a run of RUN requests starting empty, as the benchmark's: the median over seeds
    saturation = statistics.median(saturation_rate(service, LOAD, SLO_TTFT, SLO_TPOT, requests=RUN, seed=seed)
                                   for seed in range(9))
    below, above = 0.85 * saturation, 1.15 * saturation

    rows = bench(target, below, RUN, tmp_path, seed=1)
    arrivals = [r["start_s"] for r in rows]
    got = measured(rows)
    want = simulate(service, Load(below, INPUT, OUTPUT), arrivals=sorted(arrivals))
    print(f"\nserving overhead {overhead * 1e3:.1f} ms per request; saturation predicted {saturation:.2f} req/s; "
          f"run at {below:.2f} req/s ({len(rows)} requests)")
    for key in got:
        print(f"  {key}: predicted {getattr(want, key) * 1e3:7.1f} ms  measured {got[key] * 1e3:7.1f} ms  "
              f"({got[key] / getattr(want, key) - 1:+.1%})")
    for key in got:
        assert abs(got[key] / getattr(want, key) - 1) <= 0.20, (key, got[key], getattr(want, key))
    assert got["ttft_p90"] <= SLO_TTFT and got["tpot_p90"] <= SLO_TPOT, got

    over = measured(bench(target, above, RUN, tmp_path, seed=2))
    print(f"  at {above:.2f} req/s: TTFT p90 {over['ttft_p90'] * 1e3:.0f} ms, TPOT p90 {over['tpot_p90'] * 1e3:.0f} ms "
          f"(SLO {SLO_TTFT * 1e3:.0f} / {SLO_TPOT * 1e3:.0f} ms)")
    assert not (over["ttft_p90"] <= SLO_TTFT and over["tpot_p90"] <= SLO_TPOT), over


def test_simulation_agrees_with_the_analytic_bounds():
    """An idle fleet answers in one prefill and decodes at the step time; past capacity it queues."""
    idle = simulate(SERVICE, Load(0.01, INPUT, OUTPUT), requests=50)
    assert idle.ttft_p90 == pytest.approx(PREFILL_S)
    assert idle.tpot_p90 == pytest.approx(DECODE_S)
    from ttdist.planner.queueing import capacity
    over = simulate(SERVICE, Load(1.5 * capacity(SERVICE, LOAD), INPUT, OUTPUT), requests=2000)
    assert over.ttft_p90 > 20 * PREFILL_S
    assert not meets(over, SLO_TTFT, SLO_TPOT)
