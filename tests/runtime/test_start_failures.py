"""Start failures in the registry, without Ray: a PermanentError leaves the replica failed for
good at once (no backoff, no crash-loop count), anything else keeps the backoff; the event log
pages by number, and the registry says when no replica can ever start."""

from __future__ import annotations

import pytest

from ttdist.engine.process import EngineCannotStartError, EngineProcess, EngineStartError
from ttdist.engine.tokenizer import TokenizerError
from ttdist.errors import PermanentError
from ttdist.mesh.accounting import DramOverflowError
from ttdist.mesh.errors import MeshError
from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.kv_budget import KvCacheFitError
from ttdist.runtime.config import HealthConfig
from ttdist.runtime.registry import ReplicaRecord, Registry


def registry(n: int = 2, **health) -> Registry:
    reg = Registry(HealthConfig(restart_delay_s=1.0, restart_backoff_max_s=8.0, crash_loop_failures=3, **health))
    for i in range(n):
        reg.add(ReplicaRecord(f"r{i}", 0, "1x2", "sim"), now=0.0)
    return reg


def test_the_errors_that_retrying_cannot_fix_say_so_by_their_class():
    for err in (CheckpointError("x"), MeshError("x"), DramOverflowError("x"), KvCacheFitError("x"),
                TokenizerError("x"), EngineCannotStartError("x")):
        assert isinstance(err, PermanentError), type(err)
    for err in (EngineStartError("x"), TimeoutError(), OSError("port in use"), RuntimeError("x")):
        assert not isinstance(err, PermanentError), type(err)
    assert isinstance(KvCacheFitError("x"), MemoryError) and isinstance(CheckpointError("x"), ValueError)


def test_the_engine_process_carries_the_kind_of_its_build_error(tmp_path):
    engine = EngineProcess(LlamaConfig.from_dir, (str(tmp_path),))   # no config.json: a CheckpointError there
    with pytest.raises(EngineCannotStartError, match="could not start its engine: CheckpointError: .*no config.json"):
        engine.start()
    engine = EngineProcess(int, ("not a number",))                   # any other error: may pass on a retry
    with pytest.raises(EngineStartError, match="ValueError") as info:
        engine.start()
    assert not isinstance(info.value, PermanentError)


def test_a_permanent_start_failure_is_never_restarted_and_says_why_on_one_line():
    reg = registry()
    reg.start_failed("r0", 1.0, CheckpointError("/ckpt: tensor 'w' is\ntruncated"))
    r = reg.replicas["r0"]
    assert r.state == "failed" and r.cannot_start and not r.crash_loop
    assert r.state_label == "failed (cannot start)"
    assert r.reason == "start failed: CheckpointError: /ckpt: tensor 'w' is truncated"
    assert [e.kind for e in reg.events][-2:] == ["replica_failed", "replica_cannot_start"]
    assert reg.due_restarts(1000.0) == []
    assert not reg.may_serve(r) and reg.may_serve(reg.replicas["r1"])
    assert reg.none_can_start() == ""            # r1 may still start


def test_a_transient_start_failure_keeps_its_backoff_and_crash_loop():
    reg = registry(n=1)
    r = reg.replicas["r0"]
    now = 1.0
    for _ in range(3):
        reg.start_failed("r0", now, EngineStartError("the engine process exited with code -9 before it was ready"))
        assert not r.cannot_start
        if r.crash_loop:
            break
        assert reg.due_restarts(now + reg.restart_delay(r)) == ["r0"]
        now += reg.restart_delay(r)
        reg.restarting("r0", now)
    assert r.crash_loop and not reg.may_serve(r) and reg.none_can_start() == ""


def test_none_can_start_once_every_replica_failed_for_good():
    reg = registry()
    reg.start_failed("r0", 1.0, KvCacheFitError("no room for one KV page"))
    reg.start_failed("r1", 1.5, KvCacheFitError("no room for one KV page"))
    assert reg.none_can_start() == "start failed: KvCacheFitError: no room for one KV page"
    reg = registry()
    reg.start_failed("r0", 1.0, KvCacheFitError("no room"))
    reg.start_failed("r1", 1.5, TokenizerError("bad file"))
    assert reg.none_can_start() == ("r0: start failed: KvCacheFitError: no room; "
                                    "r1: start failed: TokenizerError: bad file")


def test_events_page_by_number_across_the_ring():
    reg = registry(n=1)
    reg.max_events = 3
    page = reg.events_after(0)
    assert page.last == 0 and page.events == ()
    for i in range(5):
        reg.event("note", "r0", str(i))
    page = reg.events_after(0)
    assert page.last == 5 and [e.message for e in page.events] == ["2", "3", "4"]   # what the ring still holds
    assert [e.message for e in reg.events_after(3).events] == ["3", "4"]
    assert reg.events_after(5).events == ()
    assert len(reg.events_after(99).events) == 3    # past the newest: a new log (a restarted coordinator)
