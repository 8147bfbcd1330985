"""EngineProcess: the step loop in a child process, driven through its real channels.

Every test starts a real child (``python -m ttdist.engine.process``) that builds an ``EngineCore``
over ``FakeRunner``; faults are caused for real (a runner that raises, an injected stall,
SIGKILL of the child or of the process that owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ttdist.engine import EngineConfig, EngineStoppedError, FinishReason, GenerationRequest, InvalidRequestError, OverloadedError, SamplingParams
from ttdist.engine.faults import EngineFaults
from ttdist.engine.process import EngineProcess, EngineStartError
from ttdist.runtime.procs import alive

from tests.support.engine_fakes import FakeRunner, fake_core, reference_output
from tests.support.waiting import wait_for, wait_for_async

RUNNER = dict(page_size=4, num_pages=64, max_batch=8)


@contextlib.contextmanager
def engine_process(config: EngineConfig | None = None, **runner):
    engine = EngineProcess(fake_core, ({**RUNNER, **runner}, config or EngineConfig(max_batch=8, prefill_chunk=8)))
    engine.start()
    try:
        yield engine
    finally:
        engine.shutdown(timeout_s=10)


def request(rid: str, prompt: list[int], max_tokens: int) -> GenerationRequest:
    return GenerationRequest(rid, prompt_token_ids=prompt, sampling=SamplingParams(max_tokens=max_tokens))


async def collect(engine, req: GenerationRequest):
    ids, last = [], None
    async for out in engine.generate(req):
        ids += out.token_ids
        last = out
    return ids, last


async def wait_for_stats(engine: EngineProcess, holds, what: str, timeout_s: float = 10.0) -> None:
    """Until ``holds(stats)`` for the child's stats."""
    async def check():
        return holds(await engine.read_stats())
    await wait_for_async(check, timeout_s, what, every=0.01)


def stats_of(engine: EngineProcess):
    """The child's stats, read from outside any event loop."""
    return asyncio.run(engine.read_stats())


def test_runs_in_a_child_and_streams_exact_greedy_outputs():
    with engine_process() as engine:
        assert engine.pid != os.getpid() and engine.info.num_pages == 64

        async def run():
            prompts = [[1, 2, 3, i] + [i] * i for i in range(6)]
            results = await asyncio.gather(*(collect(engine, request(f"r{i}", p, 20)) for i, p in enumerate(prompts)))
            return prompts, results

        prompts, results = asyncio.run(run())
        ref = FakeRunner(**RUNNER)
        for prompt, (ids, last) in zip(prompts, results):
            assert ids == reference_output(ref, prompt, 20)
            assert last.finished and last.finish_reason is FinishReason.LENGTH and list(last.output_ids) == ids
            assert last.usage.prompt_tokens == len(prompt) and last.usage.completion_tokens == 20
        stats = stats_of(engine)
        assert (stats.free_pages, stats.running, stats.waiting, stats.generation_tokens_total) == (64, 0, 0, 120)
        live = engine.liveness()
        assert live.alive and not live.has_work and live.steps_total == stats.prefill_steps_total + stats.decode_steps_total


def test_abort_and_leaving_early_free_the_pages_in_the_child():
    with engine_process(decode_s=0.02) as engine:
        async def run():
            task = asyncio.ensure_future(collect(engine, request("long", [1, 2, 3], 200)))
            await wait_for_stats(engine, lambda st: st.running == 1, what="the request running")
            assert engine.abort("long") is True
            ids, last = await task
            assert last.finish_reason is FinishReason.ABORT and len(ids) < 200
            assert engine.abort("long") is False and engine.abort("never-sent") is False
            async for out in engine.generate(request("left", [4, 5, 6], 200)):
                if out.token_ids:
                    break   # the consumer goes away: the request is aborted
            await wait_for_stats(engine, lambda st: st.free_pages == 64, what="every page free")

        asyncio.run(run())
        stats = stats_of(engine)
        assert stats.requests_aborted_total == 2 and stats.running == 0


def test_ttft_counts_from_the_generate_call_through_the_step_in_flight():
    with engine_process(decode_s=0.2) as engine:
        async def run(attempt: int):
            stream = engine.generate(request(f"long{attempt}", [1, 2, 3], 64))
            async for out in stream:
                if out.token_ids:
                    break   # a decode step of "long" starts now and takes 0.2 s
            sent = time.monotonic()
            ids, _ = await collect(engine, request(f"late{attempt}", [4, 5], 1))
            client_ttft = time.monotonic() - sent
            await stream.aclose()
            return client_ttft

        # on a loaded host the consumer can see the first token late, near the end of the step in
        # flight: then "late" hardly waits, so try again until it does (the point of the test)
        for attempt in range(5):
            client_ttft = asyncio.run(run(attempt))
            if client_ttft > 0.1:
                break
        engine_ttft = stats_of(engine).ttft_s[-1]
        # "late" waited for the 0.2 s step in flight before it could prefill: the engine counts
        # that wait, as the client saw it (less the channel's own time, a few ms)
        assert client_ttft > 0.1
        assert client_ttft - 0.05 < engine_ttft <= client_ttft


def test_bad_requests_raise_typed_errors_and_the_engine_goes_on():
    config = EngineConfig(max_batch=1, max_waiting=1, prefill_chunk=8)
    with engine_process(config, decode_s=0.02) as engine:
        async def run():
            with pytest.raises(InvalidRequestError) as err:
                await collect(engine, request("bad", [1, 999], 4))    # vocab is 64
            assert err.value.field == "prompt_token_ids"
            unsendable = GenerationRequest("unsendable", prompt_token_ids=[1, 2], sampling=SamplingParams(max_tokens=4))
            unsendable.prompt = threading.Lock()   # cannot be pickled to the child
            with pytest.raises(InvalidRequestError, match="cannot be sent to the engine process") as err:
                engine.generate(unsendable)
            assert err.value.field == "request"
            running = asyncio.ensure_future(collect(engine, request("a", [1, 2], 40)))
            await wait_for_stats(engine, lambda st: st.running == 1, what="a running")
            waiting = asyncio.ensure_future(collect(engine, request("b", [3, 4], 4)))
            await wait_for_stats(engine, lambda st: st.waiting == 1, what="b waiting")
            with pytest.raises(OverloadedError):
                await collect(engine, request("c", [5, 6], 4))
            with pytest.raises(InvalidRequestError, match="already in flight"):
                engine.generate(request("a", [1], 1))
            ref = FakeRunner(**RUNNER)
            assert (await running)[0] == reference_output(ref, [1, 2], 40)
            assert (await waiting)[0] == reference_output(ref, [3, 4], 4)

        asyncio.run(run())
        assert stats_of(engine).free_pages == 64


def test_a_model_failure_ends_every_request_and_refuses_new_ones():
    with engine_process(fail_after=6, decode_s=0.01) as engine:
        async def run():
            return await asyncio.gather(*(collect(engine, request(f"r{i}", [1, 2, i], 50)) for i in range(3)))

        for _, last in asyncio.run(run()):
            assert last.finish_reason is FinishReason.ABORT and "engine failed: RuntimeError: device lost" in last.error
        live = engine.liveness()
        assert not live.alive and "device lost" in live.error
        with pytest.raises(EngineStoppedError, match="device lost"):
            engine.generate(request("late", [1], 1))
        assert stats_of(engine).free_pages == 64   # the child still answers, its pages all free


def test_a_stalled_step_is_seen_while_the_child_still_answers():
    with engine_process(decode_s=0.01) as engine:
        asyncio.run(engine.inject_faults(EngineFaults(stall_after_steps=3, stall_s=30)))

        async def run():
            task = asyncio.ensure_future(collect(engine, request("stuck", [1, 2], 50)))
            await wait_for_async(lambda: engine.liveness().stalled(0.5), 10.0, "the stall seen", every=0.01)
            live = engine.liveness()
            assert live.alive and live.has_work and live.steps_total == 3
            assert (await engine.read_stats()).running == 1    # the control thread answers during the stall
            task.cancel()

        asyncio.run(run())


def test_a_killed_child_ends_its_streams_and_says_so():
    with engine_process(decode_s=0.02) as engine:
        async def run():
            task = asyncio.ensure_future(collect(engine, request("r", [1, 2], 200)))
            await wait_for_stats(engine, lambda st: st.running == 1, what="the request running")
            os.kill(engine.pid, signal.SIGKILL)
            ids, last = await asyncio.wait_for(task, 10)
            assert last.finish_reason is FinishReason.ABORT and "exited with code -9" in last.error

        asyncio.run(run())
        live = engine.liveness()
        assert not live.alive and "exited with code -9" in live.error
        with pytest.raises(EngineStoppedError):
            engine.generate(request("late", [1], 1))
        assert stats_of(engine).free_pages <= 64    # the last stats it gave


def test_the_child_exits_when_its_owner_is_killed():
    owner = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.support.engine_fakes import fake_core
        from ttdist.engine.process import EngineProcess
        engine = EngineProcess(fake_core, ({RUNNER!r},))
        engine.start()
        print(engine.pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not alive(child), 10, f"engine process {child} to end with its owner", every=0.05)
    finally:
        proc.kill()


def test_a_child_that_cannot_build_its_engine_says_why():
    engine = EngineProcess(fake_core, ({**RUNNER, "num_pages": "many"},))
    with pytest.raises(EngineStartError, match="could not start its engine: TypeError"):
        engine.start()
    assert engine._proc.poll() is not None
    engine = EngineProcess(fake_core, (RUNNER, EngineConfig(faults=EngineFaults(fail_start=True))))
    with pytest.raises(EngineStartError, match="injected start fault"):
        engine.start()
    assert not engine.liveness().alive
