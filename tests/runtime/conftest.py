"""A real Ray cluster (coordinator, replicas, router) serving a tiny random Llama."""

from __future__ import annotations

import os

import grpc
import pytest

from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=3)


def greedy(ids, max_tokens, stream=True, **kw):
    return pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=ids), sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        stream=stream, **kw,
    )


def run(stub, req, timeout=120):
    ids, complete = [], None
    for resp in stub.Generate(req, timeout=timeout):
        if resp.WhichOneof("kind") == "chunk":
            ids.extend(resp.chunk.token_ids)
        else:
            complete = resp.complete
    return ids, complete


def stub_for(address: str):
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.GenerationStub(channel)
