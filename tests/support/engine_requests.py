"""Requests for the engine tests, their outputs, and the page checks they end with."""

from __future__ import annotations

from ttdist.engine.page_pool import PagePool
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.engine.sequence import Sequence


def request(name: str, ids: list[int], max_tokens: int = 8, **sampling) -> GenerationRequest:
    """Request ``name``: ``max_tokens`` tokens after ``ids`` (other sampling fields as given)."""
    return GenerationRequest(name, prompt_token_ids=ids, sampling=SamplingParams(max_tokens=max_tokens, **sampling))


async def outputs(engine, req: GenerationRequest) -> list:
    """Every output an asyncio engine streams for ``req``."""
    return [out async for out in engine.generate(req)]


def assert_pool_empty(core) -> None:
    """No page of ``core``'s pool is held by anything."""
    assert core.pool.num_free == core.pool.num_pages
    assert all(page.ref_count == 0 for page in core.pool.pages)


def seq(ids: list[int], name: str = "r") -> Sequence:
    """A sequence of ``ids`` as the scheduler would hold it."""
    return Sequence(request_id=name, token_ids=list(ids), sampling=SamplingParams(), max_tokens=8, arrival_s=0.0)


def computed(pool: PagePool, s: Sequence) -> Sequence:
    """Pretend the model computed every token of ``s`` and register its full pages."""
    s.num_computed = len(s)
    pool.cache_full_pages(s)
    return s


A = list(range(100, 110))            # 10 tokens: pages [100..103] [104..107] + 2
B = A[:8] + [7, 8, 9]                # shares A's first two pages
