"""Where a benchmark sends requests: the router's gRPC API or its OpenAI HTTP API.

Both stream every request and time it on the client: the send, each chunk that carries tokens
(with how many it carries) and the end. Token counts come from the server: the gRPC
``Complete`` usage, or the OpenAI stream's final usage chunk (``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ttdist.loadgen.workload import Request


@dataclass
class Outcome:
    """One request as the client saw it; times are ``time.perf_counter()`` seconds."""

    sent: float
    chunks: list[tuple[float, int]] = field(default_factory=list)   # (arrival, tokens in it)
    done: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.chunks)


class GrpcTarget:
    """The router's ``ttdist.v1.Generation`` service through ``ttdist.client.AsyncClient``."""

    name = "grpc"

    def __init__(self, client, *, ignore_eos: bool = True):
        self.client = client
        self.ignore_eos = ignore_eos

    async def vocab_size(self) -> int:
        models = await self.client.models()
        return models[0].vocab_size if models else 0

    async def send(self, req: Request) -> Outcome:
        from ttdist.client.errors import TtdistError

        out = Outcome(time.perf_counter())
        prompt = req.prompt if isinstance(req.prompt, str) else list(req.prompt)
        try:
            stream = self.client.stream(prompt, max_tokens=req.max_tokens, ignore_eos=self.ignore_eos)
            async for chunk in stream:
                if chunk.token_ids:
                    out.chunks.append((time.perf_counter(), len(chunk.token_ids)))
            done = stream.completion
            out.done = time.perf_counter()
            if done is not None:
                out.prompt_tokens = done.usage.prompt_tokens
                out.output_tokens = done.usage.completion_tokens
        except TtdistError as err:
            out.done = time.perf_counter()
            out.error = f"{err.code.name.lower()}: {err.message}"
        return out

    async def close(self) -> None:
        await self.client.close()


class OpenAITarget:
    """``POST /v1/completions`` with ``stream: true`` and usage, read as server-sent events (aiohttp)."""

    name = "openai"

    def __init__(self, base_url: str, *, model: str = "", api_key: str | None = None, ignore_eos: bool = True,
                 timeout: float | None = None):
        import aiohttp

        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.model = model
        self.ignore_eos = ignore_eos
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
                                              connector=aiohttp.TCPConnector(limit=0))

    async def vocab_size(self) -> int:
        """The OpenAI API does not publish a vocabulary size; 0 asks the caller for one."""
        if not self.model:
            async with self._session.get(f"{self.base}/models") as resp:
                body = await resp.json()
                if resp.status == 200 and body.get("data"):
                    self.model = body["data"][0]["id"]
        return 0

    async def send(self, req: Request) -> Outcome:
        import aiohttp

        body = {"model": self.model, "prompt": req.prompt if isinstance(req.prompt, str) else list(req.prompt),
                "max_tokens": req.max_tokens, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": self.ignore_eos}
        out = Outcome(time.perf_counter())
        try:
            async with self._session.post(f"{self.base}/completions", json=body) as resp:
                if resp.status != 200:
                    out.error = f"http {resp.status}: {(await resp.text())[:200]}"
                else:
                    await self._read_events(resp, out)
        except (aiohttp.ClientError, TimeoutError) as err:
            out.error = f"{type(err).__name__}: {err}"
        out.done = time.perf_counter()
        return out

    @staticmethod
    async def _read_events(resp, out: Outcome) -> None:
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                out.error = str(event["error"].get("message", event["error"]))
                break
            if event.get("choices") and event["choices"][0].get("text"):
                out.chunks.append((time.perf_counter(), 1))
            if event.get("usage"):
                out.prompt_tokens = event["usage"]["prompt_tokens"]
                out.output_tokens = event["usage"]["completion_tokens"]

    async def close(self) -> None:
        await self._session.close()
