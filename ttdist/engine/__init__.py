"""Per-replica serving: scheduler, page pool, requests, detokenizer (plain Python)."""

from ttdist.engine.config import EngineConfig
from ttdist.engine.engine import AsyncEngine
from ttdist.engine.errors import EngineError, EngineStoppedError, InvalidRequestError, OverloadedError
from ttdist.engine.page_pool import block_hashes
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput, SamplingParams, Timings, Usage
from ttdist.engine.serving import ServingEngine
from ttdist.engine.stats import EngineStats

__all__ = [
    "AsyncEngine", "EngineConfig", "EngineError", "EngineStats", "EngineStoppedError", "FinishReason",
    "GenerationRequest", "InvalidRequestError", "OverloadedError", "RequestOutput", "SamplingParams",
    "ServingEngine", "Timings", "Usage", "block_hashes",
]
