"""SmolLM2-135M served through the router: greedy output equals transformers ``generate``."""

from __future__ import annotations

import pytest

from tests.support.cluster import running_cluster
from tests.support.generation import run, stub_for
from ttdist.runtime.config import ClusterConfig, ReplicaGroup
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow


def test_smollm2_greedy_through_the_router_equals_transformers(tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.smollm2 import materialize

    path = materialize()
    text = "The capital of France is"
    prompt = Tokenizer.from_dir(path).encode(text)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    want = out[0, len(prompt):].tolist()
    del model

    config = ClusterConfig(model="smollm2", groups=(ReplicaGroup(count=1),), port=0, dashboard_port=None,
                           max_kv_pages=32, weights_cache=str(tmp_path / "weights"))
    with running_cluster(config) as deployment:
        channel, stub = stub_for(deployment.address)
        with channel:
            req = pb.GenerateRequest(text=text, sampling=pb.SamplingParams(max_tokens=8), stream=True)
            ids, complete = run(stub, req, timeout=300)
            unary = run(stub, pb.GenerateRequest(text=text, sampling=pb.SamplingParams(max_tokens=8)), timeout=300)[1]
    n = len(ids)
    assert ids == want[:n] and list(complete.output_ids) == ids
    assert n == 8 or complete.finish_reason == pb.EOS
    assert complete.usage.prompt_tokens == len(prompt)
    assert list(unary.output_ids) == ids and unary.text == complete.text
