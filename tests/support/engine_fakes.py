"""A deterministic model runner for engine tests: its KV cache stores token ids.

Prefill and decode write each token into the page slot its position maps to through the page
table; the next token is a function of the context read back through the page table, so a
wrong page table, a page shared by mistake or overwritten early changes the output. The same
function applied to the true context gives the reference a request must produce.

Its KV pages can be read and written as arrays (``read_kv_pages`` / ``write_kv_pages``, for the
KV tiers): a page restored with the wrong tokens changes the output just the same.

With ``user_groups`` > 1 it checks what a Galaxy runner relies on: every page table lies in one
group's page range and no group runs more than ``max_batch // user_groups`` users in a decode.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import xxhash

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.runner import DecodeInput, PrefillInput, RunnerInfo, SamplingSpec

NextToken = Callable[[tuple[int, ...]], int]


def hashed_next(vocab_size: int) -> NextToken:
    def next_token(context: tuple[int, ...]) -> int:
        return xxhash.xxh3_64_intdigest(repr(context).encode()) % vocab_size
    return next_token


@dataclass
class FakeRunner:
    vocab_size: int = 64
    page_size: int = 4
    num_pages: int = 64
    max_batch: int = 8
    max_context: int = 256
    eos_token_ids: tuple[int, ...] = ()
    next_token: NextToken | None = None
    calls: list[tuple] = field(default_factory=list)
    fail_after: int | None = None    # raise on the call after this many calls
    decode_gate: threading.Event | None = None   # when set up, each decode waits for it to open
    decode_entered: threading.Event = field(default_factory=threading.Event)
    user_groups: int = 1
    decode_s: float = 0.0   # each decode takes at least this long (a model that computes)
    kv_identity: str = "fake-kv"
    kv_reads: list[list[int]] = field(default_factory=list)    # page ids of each read_kv_pages call
    kv_writes: list[list[int]] = field(default_factory=list)   # page ids of each write_kv_pages call

    def __post_init__(self) -> None:
        self.info = RunnerInfo(
            vocab_size=self.vocab_size, max_context=self.max_context, page_size=self.page_size,
            num_pages=self.num_pages, max_batch=self.max_batch, eos_token_ids=self.eos_token_ids,
            user_groups=self.user_groups, kv_identity=self.kv_identity,
        )
        self.kv: list[list[int | None]] = [[None] * self.page_size for _ in range(self.num_pages)]
        self.next_token = self.next_token or hashed_next(self.vocab_size)

    def prefill(self, inp: PrefillInput) -> int | None:
        self._count(("prefill", inp.start_pos, len(inp.token_ids), inp.sample))
        if inp.start_pos % self.page_size:
            raise AssertionError(f"prefill start {inp.start_pos} is not page aligned")
        self.group_of(inp.page_table)
        for offset, token in enumerate(inp.token_ids):
            self._write(inp.page_table, inp.start_pos + offset, token)
        if not inp.sample:
            return None
        return self._sample(self._context(inp.page_table, inp.start_pos + len(inp.token_ids)), inp.sampling)

    def decode(self, inp: DecodeInput) -> list[int]:
        self.decode_entered.set()
        if self.decode_gate is not None:
            self.decode_gate.wait()
        self._count(("decode", len(inp.token_ids)))
        if self.decode_s:
            time.sleep(self.decode_s)
        if len(inp.token_ids) > self.max_batch:
            raise AssertionError(f"decode batch {len(inp.token_ids)} exceeds {self.max_batch}")
        groups = [self.group_of(table) for table in inp.page_tables]
        for g in set(groups):
            if groups.count(g) > self.max_batch // self.user_groups:
                raise AssertionError(f"decode runs {groups.count(g)} users of group {g}: {self.max_batch // self.user_groups} slots")
        out = []
        for token, pos, table, spec in zip(inp.token_ids, inp.positions, inp.page_tables, inp.sampling):
            self._write(table, pos, token)
            out.append(self._sample(self._context(table, pos + 1), spec))
        return out

    def read_kv_pages(self, page_ids: list[int]) -> list[np.ndarray]:
        self.kv_reads.append(list(page_ids))
        pages = []
        for pid in page_ids:
            if None in self.kv[pid]:
                raise AssertionError(f"read_kv_pages: page {pid} is not fully written: {self.kv[pid]}")
            pages.append(np.array(self.kv[pid], dtype=np.int64))
        return pages

    def write_kv_pages(self, page_ids: list[int], pages: list[np.ndarray]) -> None:
        self.kv_writes.append(list(page_ids))
        for pid, page in zip(page_ids, pages):
            self.kv[pid] = [int(t) for t in page]

    def group_of(self, table: list[int]) -> int:
        """The user group a page table lies in (it must lie in exactly one)."""
        per_group = self.num_pages // self.user_groups
        groups = {pid // per_group for pid in table}
        if len(groups) != 1:
            raise AssertionError(f"page table {table} spans user groups {sorted(groups)}")
        return groups.pop()

    def _count(self, call: tuple) -> None:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("device lost")
        self.calls.append(call)

    def _write(self, table: list[int], pos: int, token: int) -> None:
        if pos // self.page_size >= len(table):
            raise AssertionError(f"position {pos} is past the page table {table}")
        self.kv[table[pos // self.page_size]][pos % self.page_size] = token

    def _context(self, table: list[int], length: int) -> tuple[int, ...]:
        ctx = tuple(self.kv[table[p // self.page_size]][p % self.page_size] for p in range(length))
        if None in ctx:
            raise AssertionError(f"read an unwritten KV slot: {ctx}")
        return ctx

    def _sample(self, context: tuple[int, ...], spec: SamplingSpec) -> int:
        if spec.temperature == 0:
            return self.next_token(context)
        return xxhash.xxh3_64_intdigest(repr((context, spec.seed, spec.step)).encode()) % self.vocab_size


def reference_output(
    runner: FakeRunner, prompt: list[int], max_tokens: int, eos: tuple[int, ...] = (), stop_ids: tuple[int, ...] = ()
) -> list[int]:
    """What a greedy request must produce: the next-token function on the true context."""
    tokens = list(prompt)
    out: list[int] = []
    while len(out) < max_tokens:
        token = runner.next_token(tuple(tokens))
        tokens.append(token)
        out.append(token)
        if token in eos or token in stop_ids:
            break
    return out


def fake_core(runner: dict, config: EngineConfig | None = None) -> EngineCore:
    """An ``EngineCore`` over ``FakeRunner(**runner)``: what an ``EngineProcess`` child builds in tests."""
    return EngineCore(FakeRunner(**runner), None, config or EngineConfig())
