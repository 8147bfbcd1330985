"""How often the router sends a stream a Chunk: every token (the default), or at most one per
``tokens`` tokens or per ``ms`` milliseconds, whichever comes first.

The server sets it (``ttdist serve --stream-interval K`` / ``--stream-interval-ms T``); a
request may set its own (``GenerateRequest.stream_interval``). ``ChunkMerger`` holds the
chunks that arrive in between and sends them as one: the first token always goes out at
once; a held token goes out with the first chunk that reaches the count or arrives after the
time has passed, and whatever is held goes out before the ``Complete`` (and before an error),
so the chunks still add up to the whole output. It checks the time when a chunk arrives (no
timer), so a token can be held up to the interval plus one step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator

from ttdist.runtime.request_checks import RequestError, invalid
from ttdist.v1 import generation_pb2 as pb

MAX_TOKENS = 4096
MAX_MS = 60_000


@dataclass(frozen=True)
class StreamInterval:
    tokens: int = 1       # 0 or 1: every token
    ms: int = 0           # 0: no time bound

    @property
    def every_token(self) -> bool:
        return self.tokens <= 1 and self.ms == 0

    def check(self, where: str = "stream_interval") -> None:
        if not 0 <= self.tokens <= MAX_TOKENS:
            raise invalid(f"{where}.tokens", f"must be in 0..{MAX_TOKENS}, got {self.tokens}")
        if not 0 <= self.ms <= MAX_MS:
            raise invalid(f"{where}.ms", f"must be in 0..{MAX_MS}, got {self.ms}")


def interval_for(req: pb.GenerateRequest, default: StreamInterval) -> StreamInterval:
    """The request's own interval when it sets one (checked: ``RequestError``), else ``default``."""
    if not req.HasField("stream_interval"):
        return default
    interval = StreamInterval(req.stream_interval.tokens, req.stream_interval.ms)
    interval.check()
    return interval


class ChunkMerger:
    """Merges one stream's chunks to its interval; ``add`` returns the chunk to send now, if any."""

    def __init__(self, interval: StreamInterval, clock=time.monotonic) -> None:
        self.tokens = max(1, interval.tokens) if interval.tokens else (1 << 30 if interval.ms else 1)
        self.seconds = interval.ms / 1000 if interval.ms else float("inf")
        self.clock = clock
        self._ids: list[int] = []
        self._text: list[str] = []
        self._logprobs: list[pb.TokenLogprob] = []
        self._prompt_logprobs: list[pb.TokenLogprob] = []
        self._last_sent: float | None = None

    def add(self, chunk: pb.Chunk) -> pb.Chunk | None:
        self._ids.extend(chunk.token_ids)
        self._text.append(chunk.text)
        self._logprobs.extend(chunk.logprobs)
        self._prompt_logprobs.extend(chunk.prompt_logprobs)
        now = self.clock()
        if self._last_sent is None or len(self._ids) >= self.tokens or now - self._last_sent >= self.seconds:
            self._last_sent = now
            return self.flush()
        return None

    def flush(self) -> pb.Chunk | None:
        """Everything held, as one chunk (None when nothing is)."""
        if not self._ids and not any(self._text):
            return None
        chunk = pb.Chunk(token_ids=self._ids, text="".join(self._text), logprobs=self._logprobs,
                         prompt_logprobs=self._prompt_logprobs)
        self._ids, self._text, self._logprobs, self._prompt_logprobs = [], [], [], []
        return chunk


async def merged(responses: AsyncIterator[pb.GenerateResponse], merger: ChunkMerger, request_id: str):
    """``responses`` with their chunks merged by ``merger``; what is held goes out before the
    ``Complete`` or before a ``RequestError`` ends the stream."""
    def held() -> pb.GenerateResponse | None:
        chunk = merger.flush()
        return None if chunk is None else pb.GenerateResponse(request_id=request_id, chunk=chunk)

    try:
        async for resp in responses:
            if resp.WhichOneof("kind") == "chunk":
                if (chunk := merger.add(resp.chunk)) is not None:
                    yield pb.GenerateResponse(request_id=request_id, chunk=chunk)
                continue
            if (rest := held()) is not None:
                yield rest
            yield resp
    except RequestError:
        if (rest := held()) is not None:
            yield rest
        raise
