"""The pool's scaling decision and its config, without Ray or clocks: exact decision sequences."""

from __future__ import annotations

import pytest

from tests.support.registry import BEAT
from ttdist.dashboard.status import HistogramSnapshot
from ttdist.runtime.autoscale.config import AutoscaleConfig, AutoscaleConfigError
from ttdist.runtime.autoscale.decision import Autoscaler, PoolLoad, wanted
from ttdist.runtime.autoscale.signals import LatencyWindow, pool_load
from ttdist.runtime.registry import ReplicaRecord
from dataclasses import replace

CFG = AutoscaleConfig(min_replicas=1, max_replicas=4, signal="ongoing_requests", target=4,
                      upscale_delay_s=3, downscale_delay_s=5)


def run(config: AutoscaleConfig, loads: list[int], n: int, **extra) -> list[tuple[float, int, int]]:
    """Tick once a second with ``loads[t]`` ongoing requests; the pool follows each decision at
    once. Returns (time, from, to) per decision."""
    scaler, out = Autoscaler(config), []
    for t, ongoing in enumerate(loads):
        d = scaler.step(PoolLoad(replicas=n, ready=n, ongoing=ongoing, **extra), float(t))
        if d is not None:
            out.append((float(t), d.previous, d.replicas))
            n = d.replicas
    return out


def test_a_steady_load_never_changes_the_count():
    assert run(CFG, [8] * 60, n=2) == []


def test_a_load_wavering_across_a_boundary_changes_nothing():
    # 8 asks for 2 replicas, 9 for 3: never 3 seconds in a row above, never 5 below
    assert run(CFG, [8, 9, 9, 8, 9, 9, 8] * 10, n=2) == []


def test_staircase_up_and_down_with_exact_delays():
    loads = [4] * 5 + [16] * 10 + [4] * 12
    # up at t=8 (16 since t=5, 3 s) to 4; down at t=20 (4 since t=15, 5 s) to 1
    assert run(CFG, loads, n=1) == [(8.0, 1, 4), (20.0, 4, 1)]


def test_up_goes_to_the_smallest_count_wanted_over_the_delay():
    # wanted 4, 2, 3 over the stretch: grows to 2 only
    assert run(CFG, [4, 16, 8, 12, 12], n=1) == [(4.0, 1, 2)]


def test_down_goes_to_the_largest_count_wanted_over_the_delay():
    assert run(CFG, [16, 0, 8, 0, 0, 0, 0], n=4) == [(6.0, 4, 2)]


def test_a_rise_seen_in_two_steps_grows_again_once_the_higher_count_held_for_the_delay():
    # wanted 2 from t=1, 4 from t=2: to 2 at t=4, and to 4 at t=5 (4 wanted since t=2), not a
    # whole delay after the first decision
    assert run(CFG, [4, 8, 16, 16, 16, 16], n=1) == [(4.0, 1, 2), (5.0, 2, 4)]


def test_a_fall_seen_in_two_steps_shrinks_again_once_the_lower_count_held_for_the_delay():
    assert run(CFG, [16, 8, 0, 0, 0, 0, 0, 0, 0], n=4) == [(6.0, 4, 2), (7.0, 2, 1)]


def test_no_shrinking_while_a_replica_starts():
    scaler = Autoscaler(CFG)
    assert [scaler.step(PoolLoad(replicas=2, ready=1, starting=1), float(t)) for t in range(10)] == [None] * 10
    decisions = [scaler.step(PoolLoad(replicas=2, ready=2), float(t)) for t in range(10, 16)]
    assert [(d.previous, d.replicas) for d in decisions if d] == [(2, 1)] and decisions[5] is not None


def test_clamped_to_min_and_max():
    assert run(CFG, [100] * 5, n=1) == [(3.0, 1, 4)]
    assert run(CFG, [0] * 7, n=3) == [(5.0, 3, 1)]


def test_an_empty_pool_with_a_waiting_request_grows_at_once_and_idles_back_to_zero():
    cfg = replace(CFG, min_replicas=0)
    scaler = Autoscaler(cfg)
    assert scaler.step(PoolLoad(replicas=0), 0.0) is None
    d = scaler.step(PoolLoad(replicas=0, waiting_for_replica=1), 1.0)
    assert (d.previous, d.replicas) == (0, 1) and "1 request(s) waiting for a replica" in d.reason
    assert run(cfg, [0] * 6, n=1) == [(5.0, 1, 0)]


def test_below_min_grows_at_once():
    d = Autoscaler(replace(CFG, min_replicas=2)).step(PoolLoad(replicas=1, ready=1), 0.0)
    assert (d.previous, d.replicas) == (1, 2)


def test_the_reason_names_the_signal_the_totals_and_the_delay():
    scaler = Autoscaler(CFG)
    for t in range(3):
        assert scaler.step(PoolLoad(replicas=1, ready=1, ongoing=10), float(t)) is None
    d = scaler.step(PoolLoad(replicas=1, ready=1, ongoing=10), 3.0)
    assert d.reason == ("ongoing_requests 10 in all (10.00 per ready replica), target 4 per replica: "
                        "wanted >= 3 for 3.0 s: 1 -> 3")


@pytest.mark.parametrize("signal,field,value,want", [
    ("queue_depth", "queued", 5, 3),          # ceil(5 / 2)
    ("kv_cache_use", "kv_used", 1.5, 3),      # ceil(1.5 / 0.5)
])
def test_load_signals(signal, field, value, want):
    cfg = AutoscaleConfig(min_replicas=1, max_replicas=8, signal=signal, target=0.5 if signal == "kv_cache_use" else 2)
    assert wanted(cfg, PoolLoad(replicas=2, ready=2, **{field: value}))[0] == want


def test_slo_signal_steps_one_replica_at_a_time():
    cfg = AutoscaleConfig(min_replicas=1, max_replicas=8, signal="ttft_p90_ms", target=200)
    assert wanted(cfg, PoolLoad(replicas=3, ready=3, ongoing=5, latency_p90_ms=450))[0] == 4
    assert wanted(cfg, PoolLoad(replicas=3, ready=3, ongoing=5, latency_p90_ms=150))[0] == 3
    assert wanted(cfg, PoolLoad(replicas=3, ready=3, ongoing=5, latency_p90_ms=60))[0] == 2
    assert wanted(cfg, PoolLoad(replicas=3, ready=3, ongoing=5, latency_p90_ms=None))[0] == 3
    assert wanted(cfg, PoolLoad(replicas=3, ready=3, latency_p90_ms=None))[0] == 1   # idle: to min


def test_latency_window_takes_the_p90_of_what_was_observed_within_it():
    window = LatencyWindow("ttft_p90_ms", window_s=10)
    bounds = [0.1, 0.2, 0.4, 0.8]
    old = HistogramSnapshot(bounds, [0, 0, 0, 100, 0], 50.0)          # slow, before the window
    new = HistogramSnapshot(bounds, [100, 0, 0, 100, 0], 55.0)        # then 100 fast ones
    window.add("r0", replace(BEAT, ttft_histogram=old), 0.0)
    window.add("r0", replace(BEAT, ttft_histogram=new), 20.0)
    assert window.p90_ms() == pytest.approx(90.0)   # 0.09 s: the fast ones only
    window.forget(set())
    assert window.p90_ms() is None


def test_pool_load_counts_ready_replicas_heartbeats_and_not_draining_ones():
    records = []
    for i, state in enumerate(["ready", "ready", "starting", "draining"]):
        r = ReplicaRecord(f"r{i}", 0, "1x1", "sim")
        r.state = state
        r.stats = replace(BEAT, running=3, waiting=1, free_pages=25, total_pages=100) if state != "starting" else None
        records.append(r)
    load = pool_load(CFG, records, waiting_for_replica=2, latency=None)
    assert load == PoolLoad(replicas=3, ready=2, starting=1, ongoing=8, queued=2, kv_used=1.5, waiting_for_replica=2)


@pytest.mark.parametrize("raw,message", [
    ({"min_replicas": 3, "max_replicas": 2}, "autoscale.min_replicas (3) must be <= max_replicas (2)"),
    ({"target": {"gpu_use": 1}}, "autoscale.target: unknown signal 'gpu_use'; one of ongoing_requests, queue_depth"),
    ({"target": {"ongoing_requests": 0}}, "autoscale.target.ongoing_requests must be a number > 0"),
    ({"target": {"kv_cache_use": 2}}, "autoscale.target.kv_cache_use is a fraction"),
    ({"target": 5}, "autoscale.target must name one signal"),
    ({"upscale_delay_s": -1}, "autoscale.upscale_delay_s must be a number of seconds >= 0"),
    ({"max_replica": 2}, "autoscale: unknown setting 'max_replica'"),
    ({"min_replicas": 1.5}, "autoscale.min_replicas must be an integer >= 0"),
    ({"max_replicas": 2, "initial_replicas": 3}, "autoscale.initial_replicas must be an integer in 1..2"),
])
def test_bad_config_names_the_field(raw, message):
    with pytest.raises(AutoscaleConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        AutoscaleConfig.from_mapping(raw)


def test_config_from_a_spec_mapping():
    cfg = AutoscaleConfig.from_mapping({"min_replicas": 0, "max_replicas": 4, "target": {"ttft_p90_ms": 250},
                                        "upscale_delay_s": 10, "downscale_delay_s": 60})
    assert (cfg.signal, cfg.target, cfg.start_replicas) == ("ttft_p90_ms", 250, 0)


def test_pool_scaler_records_decisions_and_drains_failed_then_least_loaded_newest_first():
    from ttdist.runtime.autoscale.pool import PoolScaler

    records = []
    for i, (state, running) in enumerate([("ready", 3), ("ready", 0), ("ready", 0), ("failed", 0), ("starting", 0)]):
        r = ReplicaRecord(f"replica-{i}", 0, "1x1", "sim")
        r.state, r.stats = state, replace(BEAT, running=running, waiting=0) if state == "ready" else None
        records.append(r)
    assert PoolScaler.victims(records, 3) == ["replica-3", "replica-2", "replica-1"]
    scaler = PoolScaler(replace(CFG, max_replicas=8, downscale_delay_s=0))
    d = scaler.tick(records, 0, 0.0, 1000.0)
    assert d is None and scaler.status().replicas == 5   # a starting replica holds the shrink
    records[4].state = "ready"
    d = scaler.tick(records, 0, 1.0, 1001.0)
    status = scaler.status()
    assert (d.previous, d.replicas) == (5, 1) and (status.scale_ups_total, status.scale_downs_total) == (0, 1)
    assert [(x.time, x.previous, x.replicas) for x in status.decisions] == [(1001.0, 5, 1)]
    assert status.to_proto().decisions[0].reason == d.reason


def test_cold_start_phases_add_up_from_the_decision():
    from ttdist.model.kv_budget import LoadTimes
    from ttdist.runtime.autoscale.cold_start import Placed, cold_start

    took = cold_start("replica-3", decided=100.0, placed=Placed("n", process_started=101.5, constructed=103.0),
                      start_s=6.0, load=LoadTimes(weight_load_s=2.0, kv_sizing_s=0.5), serving=110.0,
                      weights_via="cache")
    assert (took.placement_s, took.process_start_s, took.weight_load_s, took.kv_sizing_s, took.engine_start_s,
            took.registration_s) == (1.5, 1.5, 2.0, 0.5, 3.5, 1.0)
    assert took.total_s == 10.0 and took.describe().startswith("serving 10.00 s after the decision: placement 1.50 s")
    assert took.decided == 100.0 and not took.prestarted
    # a worker process Ray had started before the decision: placed at once, its start counted from the decision
    early = cold_start("r", 100.0, Placed("n", 90.0, 100.5), 1.0, None, 102.0)
    assert (early.placement_s, early.process_start_s, early.engine_start_s, early.registration_s) == (0.0, 0.5, 1.0, 0.5)
    assert early.prestarted and "process start (a pre-started worker) 0.50 s" in early.describe()


def test_a_process_start_time_is_before_now():
    import os
    import time

    from ttdist.runtime.autoscale.cold_start import process_start_time

    assert 0 < process_start_time(os.getpid()) <= time.time()
