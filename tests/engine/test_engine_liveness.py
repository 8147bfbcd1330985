"""The engine's liveness, with faults caused for real: a step loop that raises is not alive and
says why; one that hangs with work is stalled until it steps again; an idle one is neither."""

from __future__ import annotations

import asyncio

from ttdist.engine import AsyncEngine, EngineConfig, FinishReason, GenerationRequest, SamplingParams
from ttdist.engine.faults import EngineFaults

from tests.support.engine_fakes import FakeRunner
from tests.support.waiting import wait_for_async


def request(name: str, max_tokens: int = 6) -> GenerationRequest:
    return GenerationRequest(name, prompt_token_ids=[1, 2, 3], sampling=SamplingParams(max_tokens=max_tokens))


def engine_with(faults: EngineFaults) -> AsyncEngine:
    engine = AsyncEngine(FakeRunner(page_size=4, num_pages=32, max_batch=4),
                         None, EngineConfig(max_batch=4, prefill_chunk=8, faults=faults))
    engine.start()
    return engine


async def test_a_raising_step_loop_is_not_alive_and_says_why():
    engine = engine_with(EngineFaults(raise_after_steps=3))
    try:
        outs = [out async for out in engine.generate(request("r", 20))]
        assert outs[-1].finish_reason is FinishReason.ABORT and "injected engine fault after 3 steps" in outs[-1].error
        live = engine.liveness()
        assert not live.alive and live.steps_total == 3
        assert live.error == "engine failed: InjectedFault: injected engine fault after 3 steps"
    finally:
        engine.shutdown()


async def test_a_hanging_step_loop_is_stalled_until_it_steps_again():
    engine = engine_with(EngineFaults(stall_after_steps=2, stall_s=1.5))
    try:
        assert not engine.liveness().stalled(0.3)                  # idle: no work, not stalled
        job = asyncio.ensure_future(asyncio.wait_for(
            asyncio.gather(*[_last(engine, request(f"r{i}", 4)) for i in range(2)]), 30))
        await wait_for_async(lambda: engine.liveness().stalled(0.3), 10, "the step loop stalled", every=0.05)
        live = engine.liveness()
        assert live.alive and live.has_work and live.steps_total == 2
        engine.inject(EngineFaults())                               # the hang ends; the loop steps on
        outs = await job
        assert all(o.finish_reason is FinishReason.LENGTH for o in outs)
        assert not engine.liveness().stalled(0.3)
    finally:
        engine.shutdown()


async def _last(engine: AsyncEngine, req: GenerationRequest):
    out = None
    async for out in engine.generate(req):
        pass
    return out
