"""The Python client's structured-output keywords through a real router and replica (tiny random
Llama with SmolLM2's tokenizer): a JSON schema, a choice and a regex hold, over gRPC; a grammar
that does not compile raises ``InvalidRequest`` naming the field; two constraints are refused
before anything is sent."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tests.support.stack import make_stack
from ttdist.client import AsyncClient, InvalidRequest
from ttdist.runtime.request_checks import ModelCard

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "size": {"enum": ["S", "M", "L"]}},
          "required": ["name", "size"], "additionalProperties": False}


@pytest.fixture
async def target(tiny_checkpoints):
    from ttdist.engine.engine import AsyncEngine
    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner

    path = tiny_checkpoints(seed=3)
    tokenizer = Tokenizer.from_dir(path)
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", backend="sim", dtype="float32", page_size=16,
                                             num_pages=64, max_batch=4)
    card = ModelCard("tiny-llama", vocab_size=runner.info.vocab_size, max_context=runner.info.max_context)
    stack = await make_stack(lambda i: AsyncEngine(runner, tokenizer), 1, card=card, tokenizer=tokenizer)
    yield f"127.0.0.1:{stack.server.port}"
    await stack.close()


async def test_constraint_keywords_hold_over_grpc(target):
    async with AsyncClient(target) as client:
        done = await client.generate("Describe a shirt:", json_schema=SCHEMA, max_tokens=40, temperature=1.0, seed=3)
        jsonschema.validate(json.loads(done.text), SCHEMA)
        assert done.finish_reason == "eos"
        picked = await client.generate("Pick one:", choice=["alpha", "beta", "gamma"], max_tokens=8, temperature=1.0, seed=1)
        assert picked.text in ("alpha", "beta", "gamma")
        chunks = [c.text async for c in client.stream("A date:", regex=r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", max_tokens=16)]
        assert re.fullmatch(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", "".join(chunks))
        with pytest.raises(InvalidRequest) as err:
            await client.generate("x", json_schema={"type": "frob"}, max_tokens=4)
        assert "sampling.structured_output" in str(err.value)
        with pytest.raises(InvalidRequest) as err:
            await client.generate("x", regex="a+", choice=["a"], max_tokens=4)
        assert err.value.field == "choice"
