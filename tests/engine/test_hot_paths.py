"""Per-step costs that must not grow with a request's length: prompt hashing, output ids."""

from __future__ import annotations

import ttdist.engine.page_pool as page_pool
from ttdist.engine.output import OutputIds, OutputProcessor
from ttdist.engine.page_pool import PagePool, block_hashes
from ttdist.v1 import generation_pb2 as pb

from tests.support.engine_requests import seq


def test_a_waiting_prompt_is_hashed_once_not_every_step(monkeypatch):
    pool = PagePool(num_pages=4, page_size=4)          # too small: the prompt waits
    waiting = seq(list(range(1, 42)))                  # 41 tokens: 10 usable full pages
    want = block_hashes(waiting.token_ids[:40], 4), block_hashes((waiting.token_ids + [7, 8, 9, 10])[:44], 4)
    calls = []
    chain = page_pool._chain
    monkeypatch.setattr(page_pool, "_chain", lambda prev, ids: calls.append(1) or chain(prev, ids))
    for _ in range(5):                                 # five scheduler steps ask again
        assert not pool.can_allocate(waiting)
    assert len(calls) == 10
    assert waiting.token_hashes == want[0]
    waiting.token_ids += [7, 8, 9, 10]                 # grown (a preempted sequence): only new pages hashed
    assert not pool.can_allocate(waiting)
    assert len(calls) == 11 and waiting.token_hashes == want[1]


def test_outputs_carry_the_ids_so_far_without_copying_them():
    s = seq([1, 2, 3])
    processor = OutputProcessor(eos_token_ids=())
    outs = [processor.append_token(s, token, now=float(i)) for i, token in enumerate([50, 51, 52])]
    assert [o.output_ids for o in outs] == [[50], [50, 51], [50, 51, 52]]   # each as of its own step
    view = outs[1].output_ids
    assert isinstance(view, OutputIds) and view._ids is s.token_ids          # a view, not a copy
    assert len(view) == 2 and view[0] == 50 and view[-1] == 51 and view[:1] == [50] and tuple(view) == (50, 51)
    assert list(pb.Complete(output_ids=outs[2].output_ids).output_ids) == [50, 51, 52]
