"""A constrained request moved between replicas keeps its grammar: the router's resumed request
(prompt + ids so far, the same sampling with its ``structured_output``) becomes an engine request on
the new replica that rebuilds the matcher from those ids and finishes exactly as the unmoved request
(tiny random Llama with SmolLM2's tokenizer, sampled)."""

from __future__ import annotations

import json
import time

import jsonschema

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.tokenizer import Tokenizer
from ttdist.router.migration import Progress, sub_request
from ttdist.runtime.replica_service import to_engine_request
from ttdist.v1 import generation_pb2 as pb

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                           "days": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 40},
                                                    "maxItems": 4}},
          "required": ["city", "days"], "additionalProperties": False}


def _finish(core: EngineCore, request) -> tuple[list[int], str]:
    core.add_request(request)
    while core.has_work():
        for out in core.step():
            if out.finished:
                return list(out.output_ids), out.output_text
    raise AssertionError("no result")


def test_a_moved_constrained_request_finishes_as_if_it_had_not_moved(tiny_checkpoints):
    from ttdist.model.runner import MeshModelRunner

    path = tiny_checkpoints(seed=3)
    tokenizer = Tokenizer.from_dir(path)
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x2", backend="sim", dtype="float32", page_size=16, num_pages=64,
                                             max_batch=4)
    prompt = tokenizer.encode("Plan a trip as JSON:")
    req = pb.GenerateRequest(request_id="trip", stream=True, sampling=pb.SamplingParams(
        temperature=0.9, seed=5, max_tokens=60, structured_output=pb.StructuredOutput(json_schema=json.dumps(SCHEMA))))
    req.token_ids.ids.extend(prompt)
    ids, text = _finish(EngineCore(runner, tokenizer, EngineConfig()), to_engine_request(req))
    jsonschema.validate(json.loads(text), SCHEMA)
    for cut in (1, len(ids) // 2, len(ids) - 2):
        sent = ids[:cut]
        progress = Progress(started=time.perf_counter(), ids=list(sent), pieces=[tokenizer.decode(sent)], migrations=1)
        moved = sub_request(req, "trip", prompt, progress)
        assert moved.sampling.structured_output.json_schema == json.dumps(SCHEMA)
        again, again_text = _finish(EngineCore(runner, tokenizer, EngineConfig()), to_engine_request(moved))
        assert again[:cut] == sent and again == ids and again_text == text
