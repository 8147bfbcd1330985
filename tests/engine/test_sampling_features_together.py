"""Logprobs, penalties and grammar masks in one batch, on the real model runner (tiny random Llama
with SmolLM2's tokenizer, fp32, mesh simulator, traced-free).

Each feature has its own tests; here they meet: a batch mixing a plain request, a penalized one
with logprobs, and a grammar-constrained one with penalties and logprobs runs the decode graph of
every combination, and each request's tokens equal those it gets alone (so no feature leaks into
another user's row). The runner reports processed logprobs, those of the distribution the token
was drawn from, so a greedy token is the top entry (raw ones: tests/engine/test_logprobs_modes.py).
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.grammar import GrammarKind, StructuredOutput
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.engine.tokenizer import Tokenizer

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "n"], "additionalProperties": False}

REQUESTS = {
    "plain": SamplingParams(max_tokens=12),
    "penalized": SamplingParams(max_tokens=12, repetition_penalty=1.3, presence_penalty=0.5, logprobs=3),
    "json": SamplingParams(max_tokens=40, frequency_penalty=0.4, logprobs=2,
                           structured_output=StructuredOutput(GrammarKind.JSON_SCHEMA, json.dumps(SCHEMA))),
    "sampled": SamplingParams(max_tokens=12, temperature=0.8, seed=7, min_p=0.05, logit_bias={42: 5.0}, logprobs=1),
}


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    from ttdist.model.runner import MeshModelRunner

    checkpoint = tiny_checkpoints(seed=3)
    runner = MeshModelRunner.from_checkpoint(checkpoint, mesh="1x2", backend="sim", dtype="float32", page_size=16,
                                             num_pages=128, max_batch=8, logprobs_mode="processed")
    return runner, Tokenizer.from_dir(checkpoint)


def _run(runner, tokenizer, names) -> dict:
    core = EngineCore(runner, tokenizer, EngineConfig(max_batch=8, max_waiting=16))
    for name in names:
        core.add_request(GenerationRequest(name, prompt=f"Tell me about {name} things.", sampling=REQUESTS[name]))
    tokens = {name: [] for name in names}
    logprobs = {name: [] for name in names}
    texts = {}
    while core.has_work():
        for out in core.step():
            tokens[out.request_id] += out.token_ids
            logprobs[out.request_id] += out.logprobs or []
            if out.finished:
                texts[out.request_id] = out.output_text
    return {name: (tokens[name], logprobs[name], texts[name]) for name in names}


def test_a_batch_mixing_every_feature_gives_each_request_its_own_output(tiny):
    runner, tokenizer = tiny
    together = _run(runner, tokenizer, list(REQUESTS))
    for name in REQUESTS:
        alone = _run(runner, tokenizer, [name])[name]
        assert together[name][0] == alone[0], name
    jsonschema.validate(json.loads(together["json"][2]), SCHEMA)
    for name, (ids, logprobs, _) in together.items():
        asked = REQUESTS[name].logprobs
        if asked is None:
            assert logprobs == []
            continue
        assert [lp.token_id for lp in logprobs] == ids
        assert all(len(lp.top) == asked and lp.logprob <= 0 for lp in logprobs)
        if REQUESTS[name].temperature == 0:   # greedy: the drawn token is its distribution's best
            assert all(lp.top[0][0] == lp.token_id for lp in logprobs), name
