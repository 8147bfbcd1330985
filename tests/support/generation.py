"""Generate requests and their collection over gRPC, sync and asyncio."""

from __future__ import annotations

import grpc

from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc


def greedy(ids, max_tokens, stream=True, **kw) -> pb.GenerateRequest:
    """``max_tokens`` tokens after ``ids``, EOS ignored."""
    return pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=ids), sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        stream=stream, **kw,
    )


def request(prompt, max_tokens=8, stream=True, **kw) -> pb.GenerateRequest:
    """``max_tokens`` tokens after ``prompt`` (EOS ends it early)."""
    return pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=prompt), sampling=pb.SamplingParams(max_tokens=max_tokens), stream=stream, **kw
    )


def run(stub, req, timeout=120):
    """Send ``req`` on a sync stub: (the streamed token ids, the Complete)."""
    ids, complete = [], None
    for resp in stub.Generate(req, timeout=timeout):
        if resp.WhichOneof("kind") == "chunk":
            ids.extend(resp.chunk.token_ids)
        else:
            complete = resp.complete
    return ids, complete


async def collect(stub, req, timeout=None, metadata=None):
    """Send ``req`` on an asyncio stub (with ``metadata``): (the streamed token ids, the Complete)."""
    ids, complete = [], None
    async for resp in stub.Generate(req, timeout=timeout, metadata=metadata):
        if resp.WhichOneof("kind") == "chunk":
            ids.extend(resp.chunk.token_ids)
        else:
            complete = resp.complete
    return ids, complete


def stub_for(address: str):
    """(an insecure sync channel to ``address``, a Generation stub on it)."""
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.GenerationStub(channel)
