"""SmolLM2-135M multi-turn chats on a device cache far too small for them: greedy outputs are the
same with the host tier on and off, equal transformers', and the tier serves the earlier turns."""

from __future__ import annotations

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.kv_tiers import KvTierConfig
from ttdist.engine.request import GenerationRequest, SamplingParams

pytestmark = pytest.mark.slow
PAGE = 32
USER_TURNS = {
    "trip": ["Plan a short trip to Lisbon for two days.", "What should I eat there?"],
    "code": ["Explain what a hash table is in one paragraph.", "How are collisions handled?"],
    "cook": ["How do I bake bread at home?", "How long should the dough rise?"],
}
NEW = 6


def test_smollm2_multi_turn_greedy_tier_on_equals_off_and_transformers():
    import torch
    from transformers import LlamaForCausalLM

    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.smollm2 import materialize

    path = materialize()
    tokenizer = Tokenizer.from_dir(path)
    def system(name: str) -> list[int]:
        return tokenizer.encode(f"Chat {name}. You are a helpful assistant who answers briefly and precisely. " * 2)

    def serve(tiers: KvTierConfig):
        runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", backend="sim", dtype="float32", page_size=PAGE,
                                                 num_pages=3, max_batch=2)
        core = EngineCore(runner, None, EngineConfig(max_batch=2, prefill_chunk=2 * PAGE, kv_tiers=tiers))
        history = {name: system(name) for name in USER_TURNS}
        turns = []
        for t in range(2):                       # three chats take turns on 3 pages: each evicts the others' pages
            for name, texts in USER_TURNS.items():
                prompt = history[name] + tokenizer.encode(" User: " + texts[t] + " Assistant:")
                final = []
                core.add_request(GenerationRequest(f"{name}{t}", prompt_token_ids=prompt,
                                                   sampling=SamplingParams(max_tokens=NEW, ignore_eos=True)), sink=final.append)
                while core.has_work():
                    core.step()
                history[name] = prompt + list(final[-1].output_ids)
                turns.append((prompt, list(final[-1].output_ids), final[-1].usage.cached_tokens))
        return turns, core.stats()

    on, stats_on = serve(KvTierConfig(host_bytes=256 * 2**20, inline=True))
    off, stats_off = serve(KvTierConfig())
    assert [o for _, o, _ in on] == [o for _, o, _ in off]
    assert stats_on.kv_tiers.restored_pages > 0
    assert sum(c for *_, c in on) > sum(c for *_, c in off)          # cached tokens count the host tier's too
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for prompt, output, _ in on:
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        assert output == ref[0, len(prompt):].tolist()
