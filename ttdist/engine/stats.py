"""Counters and latency samples of one engine, and the ``EngineStats`` snapshot it reports.

Throughput is generated tokens over a sliding window (``window_s``). Latency samples are the
most recent TTFTs (one per request) and inter-token gaps (one per generated token after the
first), bounded to ``max_samples`` each, for heartbeats and dashboards to summarise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ttdist.engine.kv_tiers.stats import KvTierStats


@dataclass
class EngineStats:
    running: int
    waiting: int
    free_pages: int
    total_pages: int
    cached_pages: int              # full pages findable in the prefix cache (in use or free)
    page_size: int
    max_batch: int
    prefix_hit_rate: float         # prompt tokens served from the cache / prompt tokens admitted
    tokens_per_second: float       # generated tokens per second over the recent window
    prompt_tokens_total: int
    generation_tokens_total: int
    cached_tokens_total: int
    requests_finished_total: int
    requests_aborted_total: int
    preemptions_total: int
    prefill_steps_total: int
    decode_steps_total: int
    ttft_s: list[float] = field(default_factory=list)
    inter_token_s: list[float] = field(default_factory=list)
    user_groups: int = 1           # KV user groups (a Galaxy's column groups); the pages above are their totals
    free_pages_per_group: list[int] = field(default_factory=list)   # group g's free pages, by group id
    running_per_group: list[int] = field(default_factory=list)      # group g's running users, by group id
    kv_tiers: KvTierStats = field(default_factory=KvTierStats)      # host and node KV tiers (disabled: zeros)


@dataclass(frozen=True)
class EngineLiveness:
    """Whether the step loop is alive and making progress; heartbeats carry it to the coordinator.

    ``last_step_age_s`` is the time since the loop last finished a step or went idle; it only
    means "stuck" while ``has_work`` is set. ``error`` says why a loop that is not alive stopped.
    """

    alive: bool
    has_work: bool
    last_step_age_s: float
    steps_total: int
    error: str = ""

    def stalled(self, after_s: float) -> bool:
        return self.alive and self.has_work and self.last_step_age_s > after_s


class EngineMetrics:
    def __init__(self, window_s: float = 10.0, max_samples: int = 1024) -> None:
        self.window_s = window_s
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished_total = 0
        self.requests_aborted_total = 0
        self.prefill_steps_total = 0
        self.decode_steps_total = 0
        self.ttft_s: deque[float] = deque(maxlen=max_samples)
        self.inter_token_s: deque[float] = deque(maxlen=max_samples)
        self._recent: deque[tuple[float, int]] = deque()
        self._first_token_s: float | None = None

    def on_admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prompt_tokens_total += prompt_tokens
        self.cached_tokens_total += cached_tokens

    def on_step(self, prefill: bool, new_tokens: int, now: float) -> None:
        if prefill:
            self.prefill_steps_total += 1
        else:
            self.decode_steps_total += 1
        if new_tokens:
            self.generation_tokens_total += new_tokens
            self._recent.append((now, new_tokens))
            if self._first_token_s is None:
                self._first_token_s = now

    def on_token(self, gap_s: float | None, ttft_s: float | None) -> None:
        if ttft_s is not None:
            self.ttft_s.append(ttft_s)
        if gap_s is not None:
            self.inter_token_s.append(gap_s)

    def on_finished(self, aborted: bool) -> None:
        if aborted:
            self.requests_aborted_total += 1
        else:
            self.requests_finished_total += 1

    def prefix_hit_rate(self) -> float:
        return self.cached_tokens_total / self.prompt_tokens_total if self.prompt_tokens_total else 0.0

    def tokens_per_second(self, now: float) -> float:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
        if not self._recent or self._first_token_s is None:
            return 0.0
        span = min(self.window_s, now - self._first_token_s)
        return sum(n for _, n in self._recent) / span if span > 0 else 0.0
