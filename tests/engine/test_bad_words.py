"""vLLM's ``bad_words`` on the real model runner (tiny random Llama with SmolLM2's tokenizer,
float32, two simulated chips): greedy output with bad words equals a transformers greedy loop
that bans the same ids by vLLM's rule, no banned sequence appears in the output, and bad input
is refused naming the field; a request resumed elsewhere continues the same output."""

from __future__ import annotations

import pytest

from ttdist.engine.bad_words import bad_word_ids, banned_next
from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.request import GenerationRequest, Resume, SamplingParams
from ttdist.engine.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
TOKENS = 12


def test_the_last_token_is_banned_when_the_generated_ones_before_it_match():
    words = ((5,), (7, 8), (1, 2, 3))
    assert banned_next(words, []) == [5]
    assert banned_next(words, [9, 7]) == [5, 8]
    assert banned_next(words, [1, 2]) == [5, 3]
    assert banned_next(words, [2, 1]) == [5]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    from transformers import LlamaForCausalLM

    from ttdist.model.runner import MeshModelRunner

    path = tiny_checkpoints(seed=3)
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x2", dtype="float32", page_size=16, num_pages=32, max_batch=4,
                                             max_context=256)
    return runner, Tokenizer.from_dir(path), LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _generate(runner, tokenizer, prompt, resume: Resume | None = None, **sampling) -> list[int]:
    core = EngineCore(runner, tokenizer, EngineConfig(prefill_chunk=16))
    core.add_request(GenerationRequest("r", prompt_token_ids=prompt, resume=resume,
                                       sampling=SamplingParams(max_tokens=TOKENS, ignore_eos=True, **sampling)))
    ids = []
    while core.has_work():
        ids += [t for out in core.step() for t in out.token_ids]
    return ids


def _reference(model, prompt, words) -> list[int]:
    ids = []
    for _ in range(TOKENS):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, -1].double()
        logits[banned_next(words, ids)] = -float("inf")
        ids.append(int(logits.argmax()))
    return ids


def test_greedy_with_bad_words_equals_transformers_banning_the_same_ids(tiny):
    runner, tokenizer, model = tiny
    prompt = tokenizer.encode("Once upon a time there was a little")
    free = _generate(runner, tokenizer, prompt)
    assert free == _reference(model, prompt, ())
    # a one-token word the free output starts with, and a two-token sequence of what followed
    bad = [tokenizer.decode([free[0]]), tokenizer.decode(free[2:4])]
    words = bad_word_ids(bad, tokenizer, runner.info.vocab_size)
    got = _generate(runner, tokenizer, prompt, bad_words=bad)
    assert got != free and got == _reference(model, prompt, words)
    # moved mid-generation, the request bans by the ids it brings as well as those it makes
    assert got[:5] + _generate(runner, tokenizer, prompt, Resume(got[:5]), bad_words=bad) == got
    for seq in words:
        n = len(seq)
        assert all(tuple(got[i:i + n]) != seq for i in range(len(got) - n + 1)), seq


def test_bad_words_input_is_refused_naming_the_field(tiny):
    runner, tokenizer, _ = tiny
    core = EngineCore(runner, tokenizer, EngineConfig(prefill_chunk=16))
    for words in (["  "], [3], ["x"] * 129):
        with pytest.raises(InvalidRequestError) as err:
            core.add_request(GenerationRequest("r", prompt_token_ids=[5, 6], sampling=SamplingParams(bad_words=words)))
        assert err.value.field == "sampling.bad_words"
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        EngineCore(runner, None, EngineConfig(prefill_chunk=16)).add_request(
            GenerationRequest("r", prompt_token_ids=[5, 6], sampling=SamplingParams(bad_words=["a"])))
