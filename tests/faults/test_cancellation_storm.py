"""A cancellation storm through the real router and replica gRPC servers over the real engine
(its scheduler and paged KV cache; the model runner is the engine tests' deterministic one,
whose KV stores token ids, so a page freed twice or reused early shows up as a wrong token).

Hundreds of streams are started and ended early, half by ``Abort`` through the router, half
by the client cancelling its call, some before their first token and some after. Afterwards
no request runs or waits, every page is free again (exact counts), the router holds no
stream and the next request is served exactly.
"""

from __future__ import annotations

import asyncio
import time

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.stack import make_stack, page_status
from ttdist.engine import AsyncEngine, EngineConfig
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb

STORM = 300
SHARED = [3, 1, 4, 1, 5, 9, 2, 6]    # two full pages shared by every prompt: prefix-cache ref counts too


class SteppedRunner(FakeRunner):
    """Decode steps take a little time, as on a model, so the storm meets streams in flight."""

    def decode(self, inp):
        time.sleep(0.005)
        return super().decode(inp)


def request(i: int, max_tokens: int = 200) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"storm-{i}", token_ids=pb.TokenIds(ids=SHARED + [10 + i % 40, 7 + i % 13]), stream=True,
        sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def test_hundreds_of_aborts_and_cancels_free_every_page():
    runner = SteppedRunner(vocab_size=64, page_size=4, num_pages=512, max_batch=8, max_context=256)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=8, prefill_chunk=8, max_waiting=STORM))
    card = ModelCard("fake", runner.vocab_size, runner.max_context, runner.page_size)
    stack = await make_stack(lambda i: engine, card=card, status=page_status)
    router, stub = stack.router, stack.stub
    try:
        total = engine.stats().total_pages
        ended = {"abort": 0, "cancel": 0}

        async def one(i: int) -> None:
            call = stub.Generate(request(i), timeout=120)
            if i % 3:   # two in three wait for their first token, the rest end before it
                async for resp in call:
                    assert resp.WhichOneof("kind") == "chunk"
                    break
            if i % 2:
                await stub.Abort(pb.AbortRequest(request_id=f"storm-{i}"), timeout=30)
                done = [resp async for resp in call][-1].complete
                # ends with ABORT, or (the abort came as its last token did) whole
                n = done.usage.completion_tokens
                assert (done.finish_reason, n < 200) in ((pb.ABORT, True), (pb.LENGTH, False)), done
                ended["abort"] += done.finish_reason == pb.ABORT
            else:
                call.cancel()
                ended["cancel"] += 1

        await asyncio.gather(*(one(i) for i in range(STORM)))
        assert ended["cancel"] == STORM // 2 and ended["abort"] >= STORM // 4, ended
        for _ in range(200):
            st = engine.stats()
            if st.running == 0 and st.waiting == 0 and st.free_pages == total and router.inflight == 0:
                break
            await asyncio.sleep(0.05)
        st = engine.stats()
        assert (st.running, st.waiting, router.inflight) == (0, 0, 0)
        assert st.free_pages == st.total_pages == total == 512
        assert st.requests_aborted_total >= STORM // 2
        ids, complete = [], None
        async for resp in stub.Generate(request(STORM, 20), timeout=60):
            if resp.WhichOneof("kind") == "chunk":
                ids.extend(resp.chunk.token_ids)
            else:
                complete = resp.complete
        assert ids == reference_output(runner, list(request(STORM).token_ids.ids), 20)
        assert complete.finish_reason == pb.LENGTH and engine.stats().free_pages == total
    finally:
        await stack.close()
