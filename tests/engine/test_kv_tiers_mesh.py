"""KV tiers on the real model runner (simulator): pages read off the chips and written back give
bit-identical logits, across user groups and in every KV dtype; greedy serving with a device
cache far too small is identical with the tier on and off, and equal to transformers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.kv_tiers import KvTierConfig
from ttdist.engine.request import GenerationRequest, SamplingParams

PAGE = 32


@pytest.mark.parametrize("mesh,kv_dtype", [("1x1", "float32"), ("1x2", "bfloat16"), ("1x2", "bfloat8_b"), ("2x2", "float32")])
def test_restored_pages_give_bit_identical_logits(tiny_checkpoint, mesh, kv_dtype):
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(tiny_checkpoint, mesh=mesh, backend="sim", dtype="float32", page_size=PAGE,
                                             num_pages=8, max_batch=2, kv_dtype=kv_dtype)
    groups, per_group = runner.info.user_groups, runner.info.num_pages // runner.info.user_groups
    rng = random.Random(0)
    prompt = [rng.randrange(3, 49152) for _ in range(2 * PAGE + 5)]
    source = [0, 1, 2]
    # other pages, in another order; in the last group's pool when there are groups
    target = [(groups - 1) * per_group + per_group - 1 - i for i in range(3)]
    want = runner.prefill_logits(prompt, 0, source)
    pages = runner.read_kv_pages(source[:2])
    assert pages[0].dtype == (np.float32 if kv_dtype == "float32" else np.uint16)
    assert pages[0].shape[:2] == (runner.model.config.num_hidden_layers, 2)
    runner.write_kv_pages(target[:2], pages)
    assert all(np.array_equal(a, b) for a, b in zip(runner.read_kv_pages(target[:2]), pages))
    got = runner.prefill_logits(prompt[2 * PAGE:], 2 * PAGE, target)  # only the tail is computed
    again = runner.prefill_logits(prompt[2 * PAGE:], 2 * PAGE, source)
    assert np.array_equal(got, again)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-3)           # chunked vs whole prefill: bf16 activations, other order


def test_greedy_serving_with_a_tiny_device_cache_tier_on_equals_off_and_transformers(tiny_checkpoint):
    import torch
    from transformers import LlamaForCausalLM

    from ttdist.model.runner import MeshModelRunner

    def serve(tiers: KvTierConfig) -> tuple[dict[str, list[int]], EngineCore]:
        runner = MeshModelRunner.from_checkpoint(tiny_checkpoint, mesh="1x2", backend="sim", dtype="float32", page_size=PAGE,
                                                 num_pages=4, max_batch=2)
        core = EngineCore(runner, None, EngineConfig(max_batch=2, prefill_chunk=PAGE, kv_tiers=tiers))
        outputs: dict[str, list[int]] = {}
        for turn in turns:
            final = []
            core.add_request(GenerationRequest(turn[0], prompt_token_ids=turn[1],
                                               sampling=SamplingParams(max_tokens=4, ignore_eos=True)), sink=final.append)
            while core.has_work():
                core.step()
            outputs[turn[0]] = final[-1].output_ids
        return outputs, core

    rng = random.Random(1)
    chats = {c: [rng.randrange(3, 49152) for _ in range(PAGE + 7)] for c in "abc"}
    turns = []
    for t in range(3):                     # three conversations, interleaved: each evicts the others' pages
        for c in "abc":
            chats[c] = chats[c] + [rng.randrange(3, 49152) for _ in range(20)]
            turns.append((f"{c}{t}", list(chats[c])))
    on, core = serve(KvTierConfig(host_bytes=64 * 2**20, inline=True))
    off, _ = serve(KvTierConfig())
    stats = core.stats()
    assert on == off
    assert stats.kv_tiers.restored_pages > 0 and stats.kv_tiers.offloaded_pages > 0
    hf = LlamaForCausalLM.from_pretrained(tiny_checkpoint).float().eval()
    for name, ids in turns:
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert on[name] == ref[0, len(ids):].tolist(), name


def test_a_turn_on_another_replica_restores_from_the_node_tier_exactly(tiny_checkpoint, tmp_path):
    from ttdist.model.runner import MeshModelRunner

    def replica(node: bool) -> tuple[MeshModelRunner, EngineCore, list[int]]:
        runner = MeshModelRunner.from_checkpoint(tiny_checkpoint, mesh="1x2", backend="sim", dtype="float32", page_size=PAGE,
                                                 num_pages=4, max_batch=2)
        prefilled: list[int] = []
        prefill = runner.prefill
        runner.prefill = lambda inp: (prefilled.append(len(inp.token_ids)), prefill(inp))[1]
        tiers = KvTierConfig(node_bytes=64 * 2**20, node_dir=str(tmp_path), inline=True) if node else KvTierConfig()
        return runner, EngineCore(runner, None, EngineConfig(max_batch=2, prefill_chunk=PAGE, kv_tiers=tiers)), prefilled

    def serve(core: EngineCore, name: str, ids: list[int]):
        final = []
        core.add_request(GenerationRequest(name, prompt_token_ids=ids, sampling=SamplingParams(max_tokens=3, ignore_eos=True)),
                         sink=final.append)
        while core.has_work():
            core.step()
        return final[-1]

    rng = random.Random(2)
    chat = [rng.randrange(3, 49152) for _ in range(3 * PAGE + 5)]
    runner_a, a, _ = replica(node=True)
    runner_b, b, prefilled_b = replica(node=True)
    assert runner_a.info.kv_identity == runner_b.info.kv_identity      # two runners of one checkpoint: one identity
    first = serve(a, "t1", chat)
    serve(a, "other", [rng.randrange(3, 49152) for _ in range(3 * PAGE + 5)])   # A evicts the chat: published
    a.tiers.flush()
    turn2 = chat + list(first.output_ids) + [rng.randrange(3, 49152) for _ in range(9)]
    got = serve(b, "t2", turn2)                                          # B never saw the chat
    _, plain, prefilled_plain = replica(node=False)
    want = serve(plain, "t2", turn2)
    assert got.output_ids == want.output_ids
    assert got.usage.cached_tokens == 3 * PAGE and b.stats().kv_tiers.node.hits == 3
    assert sum(prefilled_b) == sum(prefilled_plain) - 3 * PAGE
