"""AsyncEngine: the worker thread, streaming to asyncio, cancellation, shutdown and failure."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from ttdist.engine import (
    AsyncEngine, EngineConfig, EngineStoppedError, FinishReason, GenerationRequest, InvalidRequestError,
    OverloadedError, SamplingParams,
)

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.engine_requests import outputs, request
from tests.support.waiting import wait_for_async


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner(page_size=4, num_pages=64, max_batch=4)


@pytest.fixture
def engine(runner):
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=8, max_waiting=16))
    engine.start()
    yield engine
    engine.shutdown()


async def test_concurrent_generate_streams_each_request_its_own_tokens(engine, runner):
    prompts = {f"r{i}": [i + 1] * (i + 2) for i in range(10)}
    results = await asyncio.gather(*(outputs(engine, request(n, p, 6 + i)) for i, (n, p) in enumerate(prompts.items())))
    for i, ((name, ids), outs) in enumerate(zip(prompts.items(), results)):
        assert {o.request_id for o in outs} == {name}
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        assert outs[-1].output_ids == reference_output(runner, ids, 6 + i)
        assert outs[-1].finish_reason is FinishReason.LENGTH
        t = outs[-1].timings
        assert 0 <= t.queue_s <= t.ttft_s <= t.total_s and t.mean_inter_token_s >= 0
    stats = engine.stats()
    assert stats.running == stats.waiting == 0 and stats.free_pages == stats.total_pages
    assert stats.generation_tokens_total == sum(6 + i for i in range(10))
    assert stats.requests_finished_total == 10 and len(stats.ttft_s) == 10
    assert stats.tokens_per_second > 0


async def test_submit_then_read_outputs(engine, runner):
    engine.submit(request("a", [1, 2, 3]))
    outs = [o async for o in engine.outputs("a")]
    assert outs[-1].output_ids == reference_output(runner, [1, 2, 3], 8)
    with pytest.raises(KeyError):
        engine.outputs("a")


async def test_validation_happens_at_submit(engine):
    with pytest.raises(InvalidRequestError) as info:
        engine.submit(GenerationRequest("bad", prompt_token_ids=[1], sampling=SamplingParams(top_p=2.0)))
    assert info.value.field == "sampling.top_p"
    with pytest.raises(InvalidRequestError):
        engine.generate(GenerationRequest("bad2", prompt_token_ids=[]))


@pytest.fixture
def gated():
    """An engine whose decode steps wait for ``gate``.

    The first token of a prompt of 2 to 8 tokens comes from its prefill, at once; a 1-token
    prompt (or a chunk ending one token short) gets its first token from a decode step instead.
    """
    gate = threading.Event()
    engine = AsyncEngine(FakeRunner(page_size=4, decode_gate=gate), None, EngineConfig(prefill_chunk=8))
    engine.start()
    yield engine, gate
    gate.set()
    engine.shutdown()


def assert_all_free_and_aborted(engine: AsyncEngine) -> None:
    stats = engine.stats()
    assert stats.requests_aborted_total == 1 and stats.running == stats.waiting == 0
    assert stats.free_pages == stats.total_pages       # while the model is still inside its decode step


async def test_leaving_the_stream_early_aborts_and_frees_pages(gated):
    engine, gate = gated
    stream = engine.generate(request("long", list(range(1, 8)), max_tokens=200))
    async with contextlib.aclosing(stream):
        async for out in stream:
            assert len(out.output_ids) == 1
            break
    assert_all_free_and_aborted(engine)
    assert engine.abort("long") is False                    # already gone: idempotent
    gate.set()
    await wait_for_async(lambda: not engine.core.has_work(), 10.0, "the condition", every=0.005)
    assert_all_free_and_aborted(engine)


async def test_cancelled_consumer_aborts_its_request(gated):
    engine, gate = gated
    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate(request("c", [5, 6], max_tokens=200)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_all_free_and_aborted(engine)


async def test_abort_by_id_ends_the_stream_with_abort(gated):
    engine, gate = gated
    outs = []
    async for out in engine.generate(request("x", [1, 2], max_tokens=200)):
        outs.append(out)
        if len(outs) == 1:
            assert engine.abort("x") is True
            assert engine.abort("x") is False
            assert_all_free_and_aborted(engine)
    assert len(outs) == 2 and outs[-1].finished and outs[-1].finish_reason is FinishReason.ABORT
    assert outs[-1].usage.completion_tokens == len(outs[-1].output_ids) == 1
    gate.set()
    await wait_for_async(lambda: engine.stats().decode_steps_total == 1, 10.0, "the condition", every=0.005)
    assert outs[-1].output_ids == outs[0].output_ids     # the token of the in-flight step was dropped


async def test_overloaded_beyond_the_waiting_queue():
    gate = threading.Event()
    engine = AsyncEngine(FakeRunner(decode_gate=gate), None, EngineConfig(max_batch=1, max_waiting=2))
    engine.start()
    first = engine.generate(request("a", [1, 2]))
    await first.__anext__()                                  # a holds the only slot, stuck in decode
    engine.submit(request("b", [1, 2]))
    engine.submit(request("c", [1, 2]))
    with pytest.raises(OverloadedError, match="2 requests are already waiting"):
        engine.submit(request("d", [1, 2]))
    assert engine.stats().waiting == 2
    gate.set()
    assert [o async for o in first][-1].finish_reason is FinishReason.LENGTH
    assert [o async for o in engine.outputs("c")][-1].finish_reason is FinishReason.LENGTH
    engine.submit(request("d", [1, 2]))
    engine.shutdown()


async def test_not_started_and_shut_down_refuse_work():
    gate = threading.Event()
    engine = AsyncEngine(FakeRunner(decode_gate=gate), None, EngineConfig(max_batch=1))
    with pytest.raises(EngineStoppedError, match="not started"):
        engine.submit(request("a", [1, 2]))
    engine.start()
    running = engine.generate(request("b", [1, 2], max_tokens=50))
    first = await running.__anext__()
    engine.submit(request("queued", [3, 4]))                 # no free slot: it waits
    engine.shutdown(timeout_s=0)                              # the model is still inside a decode step
    rest = [o async for o in running]
    assert not first.finished and len(rest) == 1
    assert rest[0].finish_reason is FinishReason.ABORT and rest[0].error == "engine shut down"
    queued = [o async for o in engine.outputs("queued")]
    assert queued[-1].finish_reason is FinishReason.ABORT and queued[-1].output_ids == []
    with pytest.raises(EngineStoppedError, match="shut down"):
        engine.submit(request("c", [1, 2]))
    assert engine.stats().free_pages == engine.stats().total_pages
    gate.set()
    engine.shutdown()


async def test_model_failure_ends_every_request_with_the_error():
    gate = threading.Event()
    engine = AsyncEngine(FakeRunner(fail_after=3, decode_gate=gate), None, EngineConfig())
    engine.start()
    for i in range(3):
        engine.submit(request(f"r{i}", [i + 1], 50))           # r0 waits in its first decode
    gate.set()
    for i in range(3):
        outs = [o async for o in engine.outputs(f"r{i}")]
        assert outs[-1].finish_reason is FinishReason.ABORT
        assert outs[-1].error == "engine failed: RuntimeError: device lost"
    with pytest.raises(EngineStoppedError, match="engine failed: RuntimeError: device lost"):
        engine.submit(request("late", [1]))
    engine.shutdown()
    assert engine.stats().free_pages == engine.stats().total_pages


async def test_event_loop_runs_while_the_model_computes(gated):
    engine, gate = gated
    stream = engine.generate(request("s", [1, 2], 3))
    await stream.__anext__()
    await wait_for_async(engine.core.runner.decode_entered.is_set, 10.0, "the condition", every=0.005)
    other = await asyncio.wait_for(asyncio.sleep(0.01, result="done"), timeout=5)  # the model is still busy
    assert other == "done" and engine.stats().running == 1
    gate.set()
    assert [o async for o in stream][-1].finish_reason is FinishReason.LENGTH
