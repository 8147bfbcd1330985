"""Penalties and biases through the engine on the real model runner (tiny random Llama, fp32,
mesh simulator), token for token against transformers' ``generate`` (repetition penalty) and
numpy references over transformers' logits (OpenAI's presence / frequency penalties,
logit_bias, min_tokens); batched with other requests, preempted and resumed elsewhere, the
counts stay those of prompt + tokens so far."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.request import GenerationRequest, Resume, SamplingParams

torch = pytest.importorskip("torch")

PAGE = 16
PROMPTS = [[5, 17, 17, 300, 5, 42], [1000, 2000, 3000], [7] * 9 + [8, 9], [123, 456, 789, 123, 456, 789, 11]]
N = 12


@pytest.fixture(scope="module")
def hf(tiny_checkpoint):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def make_core(path, num_pages: int = 32, max_batch: int = 8, chunk: int = 4 * PAGE) -> EngineCore:
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", backend="sim", dtype="float32", page_size=PAGE,
                                             num_pages=num_pages, max_batch=max_batch)
    return EngineCore(runner, None, EngineConfig(max_batch=max_batch, prefill_chunk=chunk))


def drain(core: EngineCore) -> dict[str, list[int]]:
    final = {}
    while core.has_work():
        for out in core.step():
            if out.finished:
                assert out.request_error is None and out.error is None, out
                final[out.request_id] = out.output_ids
    return final


def run(core: EngineCore, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    for name, (ids, sampling) in requests.items():
        core.add_request(GenerationRequest(name, prompt_token_ids=ids, sampling=sampling))
    return drain(core)


def reference(hf, prompt: list[int], n: int, adjust) -> list[int]:
    """Greedy over transformers' logits with ``adjust(logits, prompt, output, step)`` applied (numpy, float64)."""
    ids = list(prompt)
    for step in range(n):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double().numpy()
        ids.append(int(np.argmax(adjust(logits, prompt, ids[len(prompt):], step))))
    return ids[len(prompt):]


def openai_penalties(presence: float, frequency: float):
    def adjust(logits, prompt, output, step):  # mu[j] - c[j] * frequency - (c[j] > 0) * presence
        counts = np.bincount(output, minlength=len(logits)).astype(np.float64)
        return logits - counts * frequency - (counts > 0) * presence
    return adjust


def test_repetition_penalty_equals_transformers_generate(tiny_checkpoint, hf):
    core = make_core(tiny_checkpoint)
    penalties = [3.0, 1.8, 0.5, 2.0]
    requests = {f"p{i}": (ids, SamplingParams(max_tokens=N, ignore_eos=True, repetition_penalty=r))
                for i, (ids, r) in enumerate(zip(PROMPTS, penalties))}
    requests["plain"] = (PROMPTS[0], SamplingParams(max_tokens=N, ignore_eos=True))  # a neutral user in the same batch
    got = run(core, requests)
    changed = 0
    for i, (ids, r) in enumerate(zip(PROMPTS, penalties)):
        want = hf.generate(torch.tensor([ids]), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                           repetition_penalty=r)[0, len(ids):].tolist()
        assert got[f"p{i}"] == want, (i, r)
        plain = hf.generate(torch.tensor([ids]), max_new_tokens=N, min_new_tokens=N, do_sample=False)[0, len(ids):].tolist()
        changed += want != plain
        if i == 0:
            assert got["plain"] == plain
    assert changed >= 2  # the penalty changes what greedy decoding says


def test_presence_and_frequency_equal_the_openai_reference(tiny_checkpoint, hf):
    core = make_core(tiny_checkpoint)
    settings = [(0.0, 1.5), (2.0, 0.0), (0.7, 0.4), (-1.0, -0.5)]
    requests = {f"p{i}": (ids, SamplingParams(max_tokens=N, ignore_eos=True, presence_penalty=pres, frequency_penalty=freq))
                for i, (ids, (pres, freq)) in enumerate(zip(PROMPTS, settings))}
    got = run(core, requests)
    for i, (ids, (pres, freq)) in enumerate(zip(PROMPTS, settings)):
        assert got[f"p{i}"] == reference(hf, ids, N, openai_penalties(pres, freq)), i


def test_logit_bias_min_tokens_and_min_p_equal_their_references(tiny_checkpoint, hf):
    core = make_core(tiny_checkpoint)
    plain = run(core, {"plain": (PROMPTS[1], SamplingParams(max_tokens=N, ignore_eos=True))})["plain"]
    bias = {plain[0]: -100.0, 999: 7.5, plain[2]: 3.0}
    stop, least = plain[0], 3  # greedy would stop at once
    got = run(core, {
        "bias": (PROMPTS[1], SamplingParams(max_tokens=N, ignore_eos=True, logit_bias=bias)),
        "min_tokens": (PROMPTS[1], SamplingParams(max_tokens=N, stop_token_ids=[stop], min_tokens=least)),
        "no_min": (PROMPTS[1], SamplingParams(max_tokens=N, stop_token_ids=[stop])),
        "min_p_1": (PROMPTS[2], SamplingParams(max_tokens=N, ignore_eos=True, temperature=1.0, seed=7, min_p=1.0)),
        "greedy": (PROMPTS[2], SamplingParams(max_tokens=N, ignore_eos=True)),
    })

    def biased(logits, prompt, output, step):
        out = logits.copy()
        for t, b in bias.items():
            out[t] += b
        return out

    def banned(logits, prompt, output, step):
        out = logits.copy()
        if step < least:
            out[stop] = -np.inf
        return out

    assert got["bias"] == reference(hf, PROMPTS[1], N, biased)
    assert got["no_min"] == plain[:1]
    want = reference(hf, PROMPTS[1], N, banned)
    assert stop not in got["min_tokens"][:least]
    assert got["min_tokens"] == (want[: want.index(stop, least) + 1] if stop in want[least:] else want)
    assert got["min_p_1"] == got["greedy"]  # min_p 1: only the most likely token is left to draw


def test_penalized_users_keep_their_counts_through_batching_and_preemption(tiny_checkpoint):
    sampling = [SamplingParams(max_tokens=20, ignore_eos=True, repetition_penalty=1.4, presence_penalty=0.5, frequency_penalty=0.3),
                SamplingParams(max_tokens=18, ignore_eos=True, temperature=0.8, seed=3, frequency_penalty=1.0, min_p=0.05),
                SamplingParams(max_tokens=16, ignore_eos=True),
                SamplingParams(max_tokens=20, ignore_eos=True, repetition_penalty=1.2, logit_bias={77: 2.0})]
    prompts = [p * 4 for p in PROMPTS]
    alone = {}
    for i, (ids, s) in enumerate(zip(prompts, sampling)):
        alone.update(run(make_core(tiny_checkpoint, num_pages=8, max_batch=4), {f"r{i}": (ids, s)}))
    core = make_core(tiny_checkpoint, num_pages=7, max_batch=4, chunk=PAGE)  # too few pages: preemption
    batched = run(core, {f"r{i}": (ids, s) for i, (ids, s) in enumerate(zip(prompts, sampling))})
    assert core.stats().preemptions_total > 0
    assert batched == alone


def test_a_resumed_request_continues_with_the_same_counts(tiny_checkpoint):
    sampling = SamplingParams(max_tokens=N, ignore_eos=True, repetition_penalty=1.5, frequency_penalty=0.8, min_tokens=4,
                              temperature=0.7, seed=11)
    whole = run(make_core(tiny_checkpoint), {"r": (PROMPTS[3], sampling)})["r"]
    core = make_core(tiny_checkpoint)
    core.add_request(GenerationRequest("r#1", prompt_token_ids=PROMPTS[3], sampling=sampling, resume=Resume(whole[:5])))
    assert drain(core)["r#1"] == whole


@pytest.mark.parametrize("field,value,message", [
    ("repetition_penalty", 0.0, "> 0"), ("repetition_penalty", float("nan"), "> 0"),
    ("presence_penalty", 2.5, r"\[-2, 2\]"), ("frequency_penalty", -3, r"\[-2, 2\]"),
    ("min_p", 1.5, r"\[0, 1\]"), ("min_tokens", -1, ">= 0"), ("min_tokens", 50, "max_tokens"),
    ("logit_bias", {49152: 1.0}, "outside the vocabulary"), ("logit_bias", {5: 101.0}, r"\[-100, 100\]"),
])
def test_bad_settings_are_refused_by_name_and_disturb_nothing(tiny_checkpoint, field, value, message):
    core = make_core(tiny_checkpoint)
    core.add_request(GenerationRequest("good", prompt_token_ids=PROMPTS[0], sampling=SamplingParams(max_tokens=4, repetition_penalty=1.2)))
    with pytest.raises(InvalidRequestError, match=message) as err:
        core.add_request(GenerationRequest("bad", prompt_token_ids=PROMPTS[0], sampling=SamplingParams(max_tokens=8, **{field: value})))
    assert err.value.field == f"sampling.{field}"
    assert len(drain(core)["good"]) == 4


def test_penalized_outputs_are_the_same_on_every_mesh_shape(tiny_checkpoint):
    """Each chip penalizes its own vocab slice (1x8: eight slices; 8x4: user groups on columns); greedy,
    since a seeded draw walks the candidates in chip order, which the mesh shape sets."""
    from ttdist.model.runner import MeshModelRunner

    requests = {f"r{i}": (PROMPTS[i], SamplingParams(max_tokens=8, ignore_eos=True, repetition_penalty=r, frequency_penalty=f,
                                                     logit_bias={7: 0.05, 49151: -1.0}, temperature=t, seed=5))
                for i, (r, f, t) in enumerate([(1.5, 0.0, 0.0), (2.0, 0.5, 0.0), (1.0, 1.0, 0.0)])}
    outputs = []
    for mesh in ("1x1", "1x8", "8x4"):
        runner = MeshModelRunner.from_checkpoint(tiny_checkpoint, mesh=mesh, backend="sim", dtype="float32", page_size=PAGE,
                                                 num_pages=32, max_batch=8)
        outputs.append(run(EngineCore(runner, None, EngineConfig(max_batch=8, prefill_chunk=4 * PAGE)), requests))
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
