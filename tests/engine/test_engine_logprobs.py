"""Logprobs through the engine on the real model runner (mesh simulator).

Every generated and prompt token's logprob equals transformers' ``log_softmax`` (float32 within
1e-4 on a tiny Llama split over two chips; SmolLM2 in bfloat16 within 2e-2), with the same top-N
ids; under continuous batching, chunked prompts, a cached prefix (recomputed for prompt logprobs)
and preemption each request gets what it gets alone; a batch where nobody asks runs the runner's
plain steps only.
"""

from __future__ import annotations

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.request import GenerationRequest, SamplingParams

PAGE = 16
torch = pytest.importorskip("torch")


def _runner(path, *, num_pages=32, max_batch=4, dtype="float32", mesh="1x2", **kw):
    from ttdist.model.runner import MeshModelRunner

    return MeshModelRunner.from_checkpoint(path, mesh=mesh, dtype=dtype, page_size=PAGE, num_pages=num_pages,
                                           max_batch=max_batch, max_context=256, **kw)


def _run(core: EngineCore, requests) -> dict:
    """Each request's ids, logprobs and prompt logprobs."""
    out = {r.request_id: {"ids": [], "logprobs": [], "prompt": None} for r in requests}
    for r in requests:
        core.add_request(r)
    while core.has_work():
        for o in core.step():
            got = out[o.request_id]
            got["ids"] += o.token_ids
            got["logprobs"] += o.logprobs or []
            if o.prompt_logprobs is not None:
                got["prompt"] = o.prompt_logprobs
    return out


def _log_softmax(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)


def _check(ref, prompt, got, n, tol):
    for j, lp in enumerate(got["logprobs"]):
        row = ref[len(prompt) - 1 + j]
        assert lp.token_id == got["ids"][j] and abs(lp.logprob - row[lp.token_id].item()) < tol
        best = row.topk(n)
        assert [t for t, _ in lp.top] == best.indices.tolist()
        assert max((abs(v - w) for (_, v), w in zip(lp.top, best.values.tolist())), default=0) < tol
    if got["prompt"] is not None:
        assert got["prompt"][0] is None and len(got["prompt"]) == len(prompt)
        for i, lp in enumerate(got["prompt"][1:]):
            assert lp.token_id == prompt[i + 1] and abs(lp.logprob - ref[i, prompt[i + 1]].item()) < tol


def _requests(rng_seed=5):
    import random

    rng = random.Random(rng_seed)
    shared = [rng.randrange(3, 49152) for _ in range(2 * PAGE + 3)]
    out = []
    for i in range(5):
        ids = (shared if i % 2 == 0 else []) + [rng.randrange(3, 49152) for _ in range(rng.randrange(2, 40))]
        sampling = SamplingParams(max_tokens=rng.randrange(12, 30), ignore_eos=True, logprobs=[None, 0, 3, 20, 5][i],
                                  prompt_logprobs=[2, None, 0, None, 4][i])
        out.append(GenerationRequest(f"r{i}", prompt_token_ids=ids, sampling=sampling))
    return out


def test_batched_chunked_cached_and_preempted_logprobs_equal_transformers(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    requests = _requests()
    # few pages: prompts run in chunks, the shared prefix is cached, users are preempted
    core = EngineCore(_runner(tiny_checkpoint, num_pages=10), None, EngineConfig(max_batch=4, prefill_chunk=PAGE))
    _run(core, [GenerationRequest("warm", prompt_token_ids=requests[0].prompt_token_ids[:2 * PAGE + 3],
                                  sampling=SamplingParams(max_tokens=1))])   # caches the shared prefix
    got = _run(core, requests)
    assert core.scheduler.num_preemptions > 0
    for r in requests:
        ids = r.prompt_token_ids + got[r.request_id]["ids"]
        ref = _log_softmax(model, ids)
        n = r.sampling.logprobs
        assert (len(got[r.request_id]["logprobs"]) > 0) == (n is not None)
        assert (got[r.request_id]["prompt"] is not None) == (r.sampling.prompt_logprobs is not None)
        _check(ref, r.prompt_token_ids, got[r.request_id], n or 0, 1e-4)


def test_prompt_logprobs_recompute_a_cached_prefix(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    core = EngineCore(_runner(tiny_checkpoint), None, EngineConfig(prefill_chunk=2 * PAGE))
    prompt = list(range(100, 100 + 3 * PAGE + 2))
    _run(core, [GenerationRequest("a", prompt_token_ids=prompt, sampling=SamplingParams(max_tokens=2))])
    again = _run(core, [GenerationRequest("b", prompt_token_ids=prompt, sampling=SamplingParams(max_tokens=2, prompt_logprobs=1))])
    cached = _run(core, [GenerationRequest("c", prompt_token_ids=prompt, sampling=SamplingParams(max_tokens=2))])
    assert core.metrics.cached_tokens_total == 3 * PAGE   # only "c" was served from the cache; "b" recomputed it
    _check(_log_softmax(model, prompt + again["b"]["ids"]), prompt, again["b"], 0, 1e-4)
    assert cached["c"]["ids"] == again["b"]["ids"]


class CountingRunner:
    """A runner that counts which of its steps the engine calls."""

    def __init__(self, runner) -> None:
        self.runner, self.info, self.calls = runner, runner.info, []

    def __getattr__(self, name):
        method = getattr(self.runner, name)
        return lambda inp: (self.calls.append(name), method(inp))[1]


def test_a_batch_that_asks_no_logprobs_runs_the_plain_steps(tiny_checkpoint):
    runner = CountingRunner(_runner(tiny_checkpoint))
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=PAGE))
    _run(core, [GenerationRequest(f"p{i}", prompt_token_ids=[5 + i, 6, 7], sampling=SamplingParams(max_tokens=4))
                for i in range(3)])
    assert set(runner.calls) == {"prefill", "decode"}
    runner.calls.clear()
    _run(core, [GenerationRequest("q", prompt_token_ids=[5, 6, 7], sampling=SamplingParams(max_tokens=3, logprobs=1)),
                GenerationRequest("r", prompt_token_ids=[8, 9], sampling=SamplingParams(max_tokens=3))])
    assert "decode_logprobs" in runner.calls and "decode" not in runner.calls


def test_bad_counts_are_refused_naming_the_field(tiny_checkpoint):
    core = EngineCore(_runner(tiny_checkpoint), None, EngineConfig(prefill_chunk=PAGE))
    for field, value in (("logprobs", 21), ("prompt_logprobs", -1), ("logprobs", True)):
        with pytest.raises(InvalidRequestError) as info:
            core.add_request(GenerationRequest("x", prompt_token_ids=[1, 2], sampling=SamplingParams(**{field: value})))
        assert info.value.field == f"sampling.{field}"


@pytest.mark.slow
def test_smollm2_bfloat16_logprobs_within_2e_2_of_transformers():
    from transformers import LlamaForCausalLM

    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.smollm2 import materialize

    path = materialize()
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = Tokenizer.from_dir(path).encode("The capital of France is Paris, and the capital of Spain is")
    core = EngineCore(_runner(path, dtype="bfloat16"), None, EngineConfig(prefill_chunk=2 * PAGE))
    request = GenerationRequest("s", prompt_token_ids=prompt, sampling=SamplingParams(max_tokens=6, logprobs=5, prompt_logprobs=5))
    got = _run(core, [request])["s"]
    ref = _log_softmax(model, prompt + got["ids"])
    for j, lp in enumerate(got["logprobs"]):
        row = ref[len(prompt) - 1 + j]
        assert abs(lp.logprob - row[lp.token_id].item()) < 2e-2
        assert [t for t, _ in lp.top] == row.topk(5).indices.tolist()
    errors = [abs(lp.logprob - ref[i, lp.token_id].item()) for i, lp in enumerate(got["prompt"][1:])]
    assert max(errors) < 2e-2


def test_processed_mode_gives_the_distribution_after_temperature(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    prompt = [17, 4000, 93, 12000, 5]
    got = {}
    for mode in ("raw", "processed"):
        core = EngineCore(_runner(tiny_checkpoint, logprobs_mode=mode), None, EngineConfig(prefill_chunk=PAGE))
        sampling = SamplingParams(max_tokens=4, temperature=0.7, seed=11, logprobs=3, ignore_eos=True)
        got[mode] = _run(core, [GenerationRequest("t", prompt_token_ids=prompt, sampling=sampling)])["t"]
    assert got["raw"]["ids"] == got["processed"]["ids"]   # the same seeded draws; only the reported distribution differs
    ids = prompt + got["raw"]["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    for scale, mode in ((1.0, "raw"), (1 / 0.7, "processed")):
        ref = torch.log_softmax(logits * scale, -1)
        _check(ref, prompt, got[mode], 3, 1e-4)
    with pytest.raises(ValueError, match="logprobs_mode"):
        _runner(tiny_checkpoint, logprobs_mode="logits")
