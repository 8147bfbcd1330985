"""Engine liveness in heartbeats, restart backoff and crash loops in the registry, without Ray."""

from __future__ import annotations

from dataclasses import replace

from ttdist.engine.stats import EngineLiveness
from ttdist.runtime.config import HealthConfig
from ttdist.runtime.registry import Heartbeat, ReplicaRecord, Registry

BEAT = Heartbeat(1, 0, 10, 12, 0.0, 5.0, 3, 4)
STEPPING = EngineLiveness(alive=True, has_work=True, last_step_age_s=0.01, steps_total=10)
IDLE = EngineLiveness(alive=True, has_work=False, last_step_age_s=60.0, steps_total=10)


def registry(**health):
    options = dict(unhealthy_after_s=2.0, failed_after_s=5.0, restart_delay_s=1.0, restart_backoff_max_s=8.0,
                   crash_loop_failures=4, stable_after_s=30.0, stall_after_s=2.0)
    reg = Registry(HealthConfig(**{**options, **health}))
    reg.add(ReplicaRecord("r0", 0, "1x1", "sim"), now=0.0)
    reg.started("r0", 0.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    return reg


def beat(engine: EngineLiveness) -> Heartbeat:
    return replace(BEAT, engine=engine)


def test_a_stuck_engine_is_unhealthy_although_heartbeats_come():
    reg = registry()
    r = reg.replicas["r0"]
    reg.heartbeat("r0", beat(STEPPING), 1.0)
    reg.heartbeat("r0", beat(IDLE), 1.5)              # idle for long is fine: no work
    assert r.state == "ready"
    stuck = replace(STEPPING, last_step_age_s=2.5)
    reg.heartbeat("r0", beat(stuck), 2.0)
    assert r.state == "unhealthy" and "no step for 2.5 s" in r.reason
    reg.heartbeat("r0", beat(replace(stuck, last_step_age_s=3.0)), 2.5)   # still stuck: stays unhealthy
    reg.tick(2.6)
    assert r.state == "unhealthy"
    reg.heartbeat("r0", beat(STEPPING), 3.0)          # it stepped again
    assert r.state == "ready"
    reg.heartbeat("r0", beat(stuck), 4.0)
    reg.heartbeat("r0", beat(stuck), 9.5)
    reg.tick(9.5)
    assert r.state == "failed" and "unhealthy for" in r.reason


def test_a_dead_engine_loop_fails_the_replica_at_once():
    reg = registry()
    dead = EngineLiveness(alive=False, has_work=False, last_step_age_s=0.1, steps_total=3,
                          error="engine failed: InjectedFault: boom")
    reg.heartbeat("r0", beat(dead), 1.0)
    r = reg.replicas["r0"]
    assert r.state == "failed" and r.reason == "engine stopped: engine failed: InjectedFault: boom"
    assert [e.kind for e in reg.events][-1] == "replica_failed"


def test_restart_delay_doubles_per_failure_in_a_row_then_crash_loop():
    reg = registry()
    r = reg.replicas["r0"]
    now, delays = 1.0, []
    for failure in range(4):
        reg.failed("r0", now, f"boom {failure}")
        if r.crash_loop:
            break
        delay = reg.restart_delay(r)
        assert reg.due_restarts(now + delay - 0.01) == []
        assert reg.due_restarts(now + delay) == ["r0"]
        delays.append(delay)
        now += delay
        reg.restarting("r0", now)
        now += 0.5
        reg.started("r0", now, pid=20 + failure, node_id="n", address="a:1", kv_pages_total=12)
        now += 1.0                                    # fails again soon: not stable
    assert delays == [1.0, 2.0, 4.0]
    assert r.crash_loop and r.state == "failed" and r.state_label == "failed (crash loop)"
    assert r.reason == "boom 3" and r.entry().to_proto().state == "failed (crash loop)"
    assert reg.due_restarts(now + 1000) == []           # never restarted again
    assert "replica_crash_loop" in [e.kind for e in reg.events]


def test_backoff_is_capped_and_a_stable_replica_starts_the_count_again():
    reg = registry(crash_loop_failures=10)
    r = reg.replicas["r0"]
    now = 0.0
    for _ in range(6):
        now += 1.0
        reg.failed("r0", now, "boom")
        reg.restarting("r0", now)
        reg.started("r0", now, pid=1, node_id="n", address="a:1", kv_pages_total=12)
    assert r.failures_in_row == 6 and reg.restart_delay(r) == 8.0     # 1 * 2**5 capped at 8
    reg.failed("r0", now + 31.0, "after a long healthy run")
    assert r.failures_in_row == 1 and reg.restart_delay(r) == 1.0


def test_no_restart_means_no_crash_loop():
    reg = registry(restart=False, crash_loop_failures=1)
    reg.failed("r0", 1.0, "boom")
    assert not reg.replicas["r0"].crash_loop and reg.due_restarts(100.0) == []
