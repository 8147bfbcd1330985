"""Every bad request field is refused up front with an error naming the field and the reason."""

from __future__ import annotations

import math

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.request import GenerationRequest, SamplingParams

from tests.support.engine_fakes import FakeRunner

# vocab 64, context window min(max_context=32, 16 pages x 4) = 32
RUNNER = dict(vocab_size=64, max_context=32, page_size=4, num_pages=16)


def make_core(tokenizer=None, **runner) -> EngineCore:
    return EngineCore(FakeRunner(**{**RUNNER, **runner}), tokenizer, EngineConfig(prefill_chunk=8))


def bad(field: str, match: str, request: GenerationRequest, core: EngineCore | None = None) -> None:
    core = core or make_core()
    waiting = core.stats().waiting
    with pytest.raises(InvalidRequestError, match=match) as info:
        core.add_request(request)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert core.stats().waiting == waiting


def ids_request(ids=(1, 2, 3), **sampling) -> GenerationRequest:
    return GenerationRequest("r", prompt_token_ids=list(ids), sampling=SamplingParams(**sampling))


@pytest.mark.parametrize(
    ("field", "sampling", "match"),
    [
        ("sampling.temperature", dict(temperature=-0.1), r"must be a finite number >= 0.*-0\.1"),
        ("sampling.temperature", dict(temperature=math.nan), "finite"),
        ("sampling.temperature", dict(temperature="hot"), "finite number"),
        ("sampling.top_p", dict(top_p=1.5), r"within \[0, 1\].*1\.5"),
        ("sampling.top_p", dict(top_p=-0.01), r"within \[0, 1\]"),
        ("sampling.top_p", dict(top_p=math.nan), r"within \[0, 1\]"),
        ("sampling.top_k", dict(top_k=-1), "integer >= 0.*-1"),
        ("sampling.top_k", dict(top_k=2.5), "integer >= 0"),
        ("sampling.max_tokens", dict(max_tokens=0), "integer >= 1, got 0"),
        ("sampling.max_tokens", dict(max_tokens=-3), "integer >= 1"),
        ("sampling.max_tokens", dict(max_tokens=30), "30 exceeds the context left: 3 prompt tokens in a window of 32 leave 29"),
        ("sampling.seed", dict(seed=-1), r"integer in \[0, 2\*\*64\)"),
        ("sampling.seed", dict(seed=2**64), r"integer in \[0, 2\*\*64\)"),
        ("sampling.stop", dict(stop=[""]), "entry 0 must be a non-empty string"),
        ("sampling.stop", dict(stop=["x"]), "stop strings need a tokenizer"),
        ("sampling.stop", dict(stop="x"), "must be a list of strings"),
        ("sampling.stop_token_ids", dict(stop_token_ids=[64]), r"token id 64 at index 0 is outside the vocabulary \[0, 64\)"),
        ("sampling.stop_token_ids", dict(stop_token_ids=[3, -1]), "token id -1 at index 1"),
        ("sampling.ignore_eos", dict(ignore_eos="yes"), "must be a bool"),
    ],
)
def test_bad_sampling_fields(field, sampling, match):
    bad(field, match, ids_request(**sampling))


def test_max_tokens_up_to_the_context_left_is_accepted():
    core = make_core()
    core.add_request(ids_request(max_tokens=29))
    assert core.stats().waiting == 1


def test_bad_prompt_token_ids():
    bad("prompt_token_ids", "non-empty list", ids_request(ids=()))
    bad("prompt_token_ids", r"token id 64 at index 2 is outside the vocabulary \[0, 64\)", ids_request(ids=(1, 2, 64)))
    bad("prompt_token_ids", "token id -5 at index 0", ids_request(ids=(-5,)))
    bad("prompt_token_ids", "token id '7' at index 0", ids_request(ids=("7",)))


def test_prompt_over_the_context_window():
    bad("prompt_token_ids", r"32 prompt tokens leave no room in the context window of 32 tokens \(at most 31\)",
        ids_request(ids=[1] * 32))
    # the window is also capped by what the page pool holds: 5 pages x 4 = 20 tokens
    bad("prompt_token_ids", "context window of 20 tokens", ids_request(ids=[1] * 20), make_core(num_pages=5))


def test_prompt_text_problems(tokenizer):
    bad("prompt", "give a prompt", GenerationRequest("r"))
    bad("prompt", "not both", GenerationRequest("r", prompt="hi", prompt_token_ids=[1]))
    bad("prompt", "must be a non-empty string", GenerationRequest("r", prompt=""))
    bad("prompt", "no tokenizer: send prompt_token_ids", GenerationRequest("r", prompt="hello"))
    core = make_core(tokenizer, vocab_size=49152, max_context=8)
    bad("prompt", "leave no room in the context window of 8", GenerationRequest("r", prompt="one two three four five six seven eight"), core)
    small_vocab = make_core(tokenizer, vocab_size=100)
    bad("prompt", r"outside the vocabulary \[0, 100\)", GenerationRequest("r", prompt="zebra"), small_vocab)


def test_request_id_and_types():
    bad("request_id", "non-empty string", GenerationRequest("", prompt_token_ids=[1]))
    bad("sampling", "expected SamplingParams", GenerationRequest("r", prompt_token_ids=[1], sampling={"temperature": 1}))
    core = make_core()
    core.add_request(ids_request())
    bad("request_id", "'r' is already in flight", ids_request(), core)
    with pytest.raises(InvalidRequestError) as info:
        core.add_request("just a string")
    assert info.value.field == "request"


def test_invalid_request_error_is_a_value_error():
    assert issubclass(InvalidRequestError, ValueError)
