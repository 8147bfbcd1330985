"""Stop strings, text deltas and usage with the SmolLM2 tokenizer and a scripted runner."""

from __future__ import annotations

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput, SamplingParams

from tests.support.engine_fakes import FakeRunner

SCRIPT = " The answer is 42. ## End of answer 🚀 and more text after it."


def scripted_core(tokenizer, script: str = SCRIPT) -> tuple[EngineCore, list[int]]:
    """A runner whose output after the prompt "Q:" is ``script`` token by token, then EOS, repeating."""
    prompt = tokenizer.encode("Q:")
    full = tokenizer.encode(script, add_special_tokens=False) + [tokenizer.eos_token_ids[0]]

    def next_token(context: tuple[int, ...]) -> int:
        return full[(len(context) - len(prompt)) % len(full)]

    runner = FakeRunner(vocab_size=tokenizer.vocab_size, page_size=4, num_pages=64, next_token=next_token)
    return EngineCore(runner, tokenizer, EngineConfig(prefill_chunk=8)), prompt


def generate(core: EngineCore, prompt: list[int], **sampling) -> list[RequestOutput]:
    outs: list[RequestOutput] = []
    core.add_request(GenerationRequest("r", prompt_token_ids=prompt, sampling=SamplingParams(**sampling)), sink=outs.append)
    while core.has_work():
        core.step()
    return outs


def test_runs_to_eos_with_the_full_text(tokenizer):
    core, prompt = scripted_core(tokenizer)
    outs = generate(core, prompt, max_tokens=100)
    assert outs[-1].finish_reason is FinishReason.EOS
    assert outs[-1].output_text == "".join(o.text for o in outs) == SCRIPT
    assert outs[-1].output_ids[-1] == tokenizer.eos_token_ids[0]
    assert outs[-1].usage.prompt_tokens == len(prompt)
    assert outs[-1].usage.completion_tokens == len(outs[-1].output_ids) == len(outs)


@pytest.mark.parametrize(
    ("stop", "text"),
    [
        (["##"], " The answer is 42. "),
        (["answer"], " The "),                      # earliest occurrence wins
        (["nothing", "42."], " The answer is "),
        (["🚀"], " The answer is 42. ## End of answer "),
        (["s 4"], " The answer i"),                 # a stop string spanning two tokens
    ],
)
def test_stop_strings_cut_the_text(tokenizer, stop, text):
    core, prompt = scripted_core(tokenizer)
    outs = generate(core, prompt, max_tokens=100, stop=stop)
    final = outs[-1]
    assert final.finish_reason is FinishReason.STOP
    assert final.output_text == text
    assert "".join(o.text for o in outs) == text      # held-back text never leaked the stop string
    assert final.output_ids == [t for o in outs for t in o.token_ids]
    assert tokenizer.decode(final.output_ids).startswith(text + stop[-1] if len(stop) == 1 else text)


def test_max_tokens_ends_with_length(tokenizer):
    core, prompt = scripted_core(tokenizer)
    outs = generate(core, prompt, max_tokens=3)
    assert outs[-1].finish_reason is FinishReason.LENGTH
    assert outs[-1].output_text == tokenizer.decode(outs[-1].output_ids)
    assert SCRIPT.startswith(outs[-1].output_text)


def test_ignore_eos_runs_past_eos(tokenizer):
    core, prompt = scripted_core(tokenizer)
    n = len(tokenizer.encode(SCRIPT, add_special_tokens=False))
    outs = generate(core, prompt, max_tokens=n + 3, ignore_eos=True)
    assert outs[-1].finish_reason is FinishReason.LENGTH
    assert outs[-1].output_text.startswith(SCRIPT) and len(outs[-1].output_text) > len(SCRIPT)


def test_multibyte_characters_stream_whole(tokenizer):
    script = " Grüße 👩‍👩‍👧 日本 ✓"
    core, prompt = scripted_core(tokenizer, script)
    outs = generate(core, prompt, max_tokens=100)
    assert outs[-1].output_text == script
    assert all("\ufffd" not in o.text for o in outs)
    assert sum(1 for o in outs if o.text == "") > 0     # bytes of a character were held back
