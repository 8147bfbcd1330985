"""The router's OpenAI-compatible HTTP API: ``/v1/completions``, ``/v1/chat/completions``,
``/v1/models`` and ``/health``, served next to the gRPC API by every router."""

from ttdist.router.openai.errors import ApiError
from ttdist.router.openai.server import OpenAIServer, RunningHttp, start_http_server

__all__ = ["ApiError", "OpenAIServer", "RunningHttp", "start_http_server"]
