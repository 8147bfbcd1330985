"""Python client for a ttdist cluster: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from ttdist.client import Client

    with Client("127.0.0.1:50051") as client:
        print(client.generate("The capital of France is", max_tokens=16).text)

See docs/client.md for the guide and examples/ for runnable scripts.
"""

from ttdist.client.aio import AsyncClient, AsyncGenerationStream
from ttdist.client.calls import GenerateOptions
from ttdist.client.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    ServerError,
    TtdistError,
    Unauthenticated,
    Unavailable,
)
from ttdist.client.options import DEFAULT_TARGET, RetryPolicy, TLSConfig
from ttdist.client.sync import Client, GenerationStream
from ttdist.client.types import (
    Chunk,
    ClusterStatus,
    Completion,
    ModelInfo,
    ReplicaStatus,
    SamplingParams,
    Timings,
    TokenLogprob,
    Usage,
)

__all__ = [
    "AsyncClient", "AsyncGenerationStream", "Cancelled", "Chunk", "Client", "ClusterStatus", "Completion",
    "DEFAULT_TARGET", "DeadlineExceeded", "GenerateOptions", "GenerationStream", "InvalidRequest", "ModelInfo",
    "NotFound", "Overloaded", "ReplicaStatus", "RetryPolicy", "SamplingParams", "ServerError", "TLSConfig",
    "Timings", "TokenLogprob", "TtdistError", "Unauthenticated", "Unavailable", "Usage",
]
