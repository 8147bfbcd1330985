"""Structured outputs in the engine on the real model runner (tiny random Llama with SmolLM2's
tokenizer, fp32, mesh simulator).

Every output of 50 prompts x 5 schemas parses and validates with ``jsonschema`` (a random model,
sampled: only the grammar mask makes its output JSON); greedy constrained output equals
transformers' greedy ``generate`` with the same llguidance mask applied as a logits processor, for
a JSON schema, a regex and a choice; a schema that does not compile is refused with the field
named; a request moved mid-generation rebuilds its grammar from the ids it brings.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.grammar import GrammarKind, StructuredOutput
from ttdist.engine.request import FinishReason, GenerationRequest, Resume, SamplingParams
from ttdist.engine.tokenizer import Tokenizer

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                  "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                 "required": ["name", "age"], "additionalProperties": False},
        "active": {"type": "boolean"}}, "required": ["user", "active"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "size": {"enum": ["S", "M", "L", "XL"]}},
             "required": ["color", "size"], "additionalProperties": False},
    "numbers": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 999},
                                                 "ok": {"type": "boolean"},
                                                 "scores": {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50},
                                                            "maxItems": 3}},
                "required": ["n", "ok", "scores"], "additionalProperties": False},
    "required": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999},
                                                  "title": {"type": "string", "maxLength": 16},
                                                  "note": {"type": "string", "maxLength": 8}},
                 "required": ["id", "title"], "additionalProperties": False},
}
PROMPTS = [f"Record {i}: describe item number {i * 7 % 13} as JSON." for i in range(50)]


def _json(name: str) -> StructuredOutput:
    return StructuredOutput(GrammarKind.JSON_SCHEMA, json.dumps(SCHEMAS[name]))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints(seed=3)   # with SmolLM2's tokenizer


@pytest.fixture(scope="module")
def tiny(checkpoint):
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(checkpoint, mesh="1x2", backend="sim", dtype="float32", page_size=16,
                                             num_pages=256, max_batch=32)
    return runner, Tokenizer.from_dir(checkpoint)


def _run(core: EngineCore, requests) -> dict:
    for req in requests:
        core.add_request(req)
    final = {}
    while core.has_work():
        for out in core.step():
            if out.finished:
                final[out.request_id] = out
    return final


def test_every_sampled_output_validates_against_its_schema(tiny):
    runner, tokenizer = tiny
    core = EngineCore(runner, tokenizer, EngineConfig(max_batch=32, max_waiting=512))
    requests = [GenerationRequest(f"{name}-{i}", prompt=prompt, sampling=SamplingParams(
        temperature=1.0, seed=i, max_tokens=80, structured_output=_json(name)))
        for name in SCHEMAS for i, prompt in enumerate(PROMPTS)]
    final = _run(core, requests)
    assert len(final) == 250
    for rid, out in final.items():
        assert out.finish_reason is FinishReason.EOS, (rid, out.output_text)
        jsonschema.validate(json.loads(out.output_text), SCHEMAS[rid.split("-")[0]])
    assert len({out.output_text for out in final.values()}) > 150   # sampled, not one answer per schema


class _LlguidanceMask:
    """transformers LogitsProcessor: llguidance's own matcher and numpy bitmask, applied to the logits."""

    def __init__(self, spec: StructuredOutput, tokenizer: Tokenizer, prompt_len: int):
        import llguidance
        from llguidance.numpy import allocate_token_bitmask

        ll = llguidance.LLTokenizer(tokenizer.to_json(), eos_token=list(tokenizer.eos_token_ids))
        self.matcher = llguidance.LLMatcher(ll, spec.to_llguidance())
        self.bitmask = allocate_token_bitmask(1, ll.vocab_size)
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        import torch
        from llguidance.numpy import apply_token_bitmask_inplace, fill_next_token_bitmask

        generated = input_ids[0, self.prompt_len:].tolist()
        if generated:
            assert self.matcher.consume_token(generated[-1])
        fill_next_token_bitmask(self.matcher, self.bitmask)
        logits = scores.detach().float().numpy().copy()
        apply_token_bitmask_inplace(logits, self.bitmask)
        return torch.from_numpy(logits)


@pytest.mark.parametrize("spec", [
    _json("nested"), _json("numbers"),
    StructuredOutput(GrammarKind.REGEX, r"(yes|no), because [a-z ]{3,20}\."),
    StructuredOutput(GrammarKind.CHOICE, json.dumps(["positive", "negative", "neutral"])),
], ids=["json-nested", "json-numbers", "regex", "choice"])
def test_greedy_constrained_output_equals_transformers_with_the_llguidance_mask(tiny, checkpoint, spec):
    import torch
    from transformers import LlamaForCausalLM, LogitsProcessorList

    runner, tokenizer = tiny
    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    for prompt in PROMPTS[:3]:
        ids = tokenizer.encode(prompt)
        mask = _LlguidanceMask(spec, tokenizer, len(ids))
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                                 logits_processor=LogitsProcessorList([mask]), eos_token_id=list(tokenizer.eos_token_ids),
                                 pad_token_id=0)
        want = gen[0, len(ids):].tolist()
        core = EngineCore(runner, tokenizer, EngineConfig(max_batch=32))
        out = _run(core, [GenerationRequest("g", prompt_token_ids=ids, sampling=SamplingParams(
            max_tokens=40, structured_output=spec))])["g"]
        assert list(out.output_ids) == want
        assert out.finish_reason is FinishReason.EOS


def test_a_schema_that_does_not_compile_is_refused_naming_the_field(tiny):
    runner, tokenizer = tiny
    core = EngineCore(runner, tokenizer, EngineConfig(max_batch=32))
    bad = [StructuredOutput(GrammarKind.JSON_SCHEMA, json.dumps({"type": "frob"})),
           StructuredOutput(GrammarKind.JSON_SCHEMA, "{not json"),
           StructuredOutput(GrammarKind.REGEX, "a(b"),
           StructuredOutput(GrammarKind.GRAMMAR, "start: undefined_rule"),
           StructuredOutput(GrammarKind.CHOICE, "[]")]
    for spec in bad:
        with pytest.raises(InvalidRequestError) as err:
            core.add_request(GenerationRequest("bad", prompt="hi", sampling=SamplingParams(structured_output=spec)))
        assert err.value.field == "sampling.structured_output", err.value
    assert not core.has_work()
    assert "frob" in str(pytest.raises(InvalidRequestError, core.add_request, GenerationRequest(
        "bad", prompt="hi", sampling=SamplingParams(structured_output=bad[0]))).value)


def test_a_moved_request_rebuilds_its_grammar_from_the_ids_it_brings(tiny):
    runner, tokenizer = tiny
    ids = tokenizer.encode(PROMPTS[4])
    sampling = SamplingParams(temperature=0.8, seed=11, max_tokens=60, structured_output=_json("nested"))
    whole = _run(EngineCore(runner, tokenizer, EngineConfig()), [GenerationRequest("w", prompt_token_ids=ids, sampling=sampling)])["w"]
    done = list(whole.output_ids)
    assert len(done) > 8
    for cut in (3, len(done) // 2):
        resumed = _run(EngineCore(runner, tokenizer, EngineConfig()), [GenerationRequest(
            "m", prompt_token_ids=ids, sampling=sampling, resume=Resume(done[:cut]))])["m"]
        assert list(resumed.output_ids) == done and resumed.output_text == whole.output_text
    with pytest.raises(InvalidRequestError) as err:   # ids the grammar cannot have produced
        EngineCore(runner, tokenizer, EngineConfig()).add_request(GenerationRequest(
            "x", prompt_token_ids=ids, sampling=sampling, resume=Resume(tokenizer.encode("hello"))))
    assert err.value.field == "resume.output_ids"


def test_grammar_rows_and_free_rows_share_a_batch(tiny):
    """A batch mixing users with and without grammars: the free users draw exactly what they draw alone."""
    runner, tokenizer = tiny
    free = [GenerationRequest(f"f{i}", prompt=p, sampling=SamplingParams(max_tokens=12, ignore_eos=True))
            for i, p in enumerate(PROMPTS[:4])]
    alone = _run(EngineCore(runner, tokenizer, EngineConfig()), free)
    mixed = _run(EngineCore(runner, tokenizer, EngineConfig()), free + [GenerationRequest(
        f"j{i}", prompt=p, sampling=SamplingParams(max_tokens=60, structured_output=_json("enum"))) for i, p in enumerate(PROMPTS[:4])])
    for req in free:
        assert list(mixed[req.request_id].output_ids) == list(alone[req.request_id].output_ids)
    for i in range(4):
        jsonschema.validate(json.loads(mixed[f"j{i}"].output_text), SCHEMAS["enum"])
    assert np.all([mixed[f"j{i}"].finish_reason is FinishReason.EOS for i in range(4)])
