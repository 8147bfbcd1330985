"""A reader that falls behind takes every output waiting for it as one: nothing lost, nothing held."""

from __future__ import annotations

import asyncio

from ttdist.engine import AsyncEngine, EngineConfig, FinishReason, GenerationRequest, SamplingParams
from ttdist.engine.request import RequestOutput, Usage

from tests.support.engine_fakes import FakeRunner, reference_output


def test_merge_joins_new_ids_and_text_and_keeps_the_last_totals():
    usage = Usage(2, 3, 0)
    outs = [RequestOutput("r", [7], "a", False, output_ids=[7], output_text="a"),
            RequestOutput("r", [], "", False, output_ids=[7], output_text="a"),
            RequestOutput("r", [8, 9], "bc", True, FinishReason.LENGTH, usage, output_ids=[7, 8, 9], output_text="abc")]
    merged = RequestOutput.merge(outs)
    assert (merged.token_ids, merged.text, merged.finished, merged.finish_reason, merged.usage) == \
        ([7, 8, 9], "abc", True, FinishReason.LENGTH, usage)
    assert (merged.output_ids, merged.output_text) == ([7, 8, 9], "abc")
    assert RequestOutput.merge(outs[:1]) is outs[0]


async def test_a_reader_behind_gets_everything_waiting_in_one_output():
    runner = FakeRunner(page_size=4, num_pages=64, max_batch=4)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=8, max_waiting=16))
    engine.start()
    try:
        outputs = engine.generate(GenerationRequest("slow", prompt_token_ids=[3, 4, 5], sampling=SamplingParams(max_tokens=12)))
        for _ in range(2000):   # the request runs to the end before its reader looks
            if engine.stats().requests_finished_total == 1:
                break
            await asyncio.sleep(0.005)
        got = [out async for out in outputs]
        want = reference_output(runner, [3, 4, 5], 12)
        assert len(got) == 1 and got[0].finished and got[0].token_ids == got[0].output_ids == want
    finally:
        engine.shutdown()


async def test_a_reader_that_keeps_up_gets_every_token_at_once():
    runner = FakeRunner(page_size=4, num_pages=64, max_batch=4)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=8, max_waiting=16))
    engine.start()
    try:
        got = [out async for out in engine.generate(GenerationRequest("r", prompt_token_ids=[3, 4], sampling=SamplingParams(max_tokens=6)))]
        assert [t for o in got for t in o.token_ids] == got[-1].output_ids == reference_output(runner, [3, 4], 6)
        assert got[-1].finished and not any(o.finished for o in got[:-1])
    finally:
        engine.shutdown()
