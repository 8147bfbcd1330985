"""The engine on the real model runner on a simulated Galaxy (8x4): users split over the 4 column
groups, more at once than one group's slots hold, with chunked prompts and prefixes cached in a
group. Every greedy request produces exactly transformers' tokens.
"""

from __future__ import annotations

import random

import torch

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.request import FinishReason, GenerationRequest, SamplingParams

PAGE = 16


def test_galaxy_user_groups_serve_greedy_exact(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(tiny_checkpoint, mesh="8x4", backend="sim", dtype="float32", page_size=PAGE,
                                             num_pages=48, max_batch=8)
    assert (runner.info.user_groups, runner.info.num_pages) == (4, 48)  # 12 pages and 2 decode slots per group
    groups_seen: set[int] = set()
    prefill = runner.prefill

    def spy(inp):
        groups_seen.add(runner.model.groups.group_of(inp.page_table))  # raises if a table spans groups
        return prefill(inp)

    runner.prefill = spy
    rng = random.Random(5)
    shared = [rng.randrange(3, 49152) for _ in range(PAGE + 3)]
    requests = []
    for i in range(7):  # 7 users at once: more than one group's 2 slots
        head = shared if i % 3 == 0 else []
        ids = head + [rng.randrange(3, 49152) for _ in range(rng.randrange(1, 30))]
        requests.append(GenerationRequest(f"r{i}", prompt_token_ids=ids, sampling=SamplingParams(max_tokens=5, ignore_eos=True)))
    core = EngineCore(runner, None, EngineConfig(max_batch=8, prefill_chunk=PAGE))
    for req in requests:
        core.add_request(req)
    final = {}
    busiest = 0
    while core.has_work():
        for out in core.step():
            if out.finished:
                final[out.request_id] = out
        if runner.inputs is not None:
            busiest = max(busiest, int((runner.inputs.host["positions"] >= 0).sum()))
    assert busiest > 2 and groups_seen == {0, 1, 2, 3}
    hf = LlamaForCausalLM.from_pretrained(tiny_checkpoint).float().eval()
    for req in requests:
        out = final[req.request_id]
        with torch.no_grad():
            ref = hf.generate(torch.tensor([req.prompt_token_ids]), max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert out.finish_reason is FinishReason.LENGTH
        assert out.output_ids == ref[0, len(req.prompt_token_ids):].tolist(), req.request_id
    stats = core.stats()
    assert stats.free_pages == stats.total_pages == 48
