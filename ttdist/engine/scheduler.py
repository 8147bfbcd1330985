"""Decides each engine step: one prefill chunk for one user, or one decode token for all.

As on Tenstorrent systems a step is prefill-only or decode-only. A waiting request is admitted
into a free decode slot when the page pool can hold its whole prompt (after prefix-cache hits);
its prompt then runs in page-aligned chunks of ``prefill_chunk`` tokens, one chunk per step,
yielding one decode step between chunks when other users are decoding. Decode advances every
running user by one token at its own position. When a decoding user needs a page and none is
free, the newest running user is preempted: its pages go back and it waits at the head of the
queue to be recomputed from its tokens (prefix-cache hits make that cheap).

With user groups (a Galaxy's column groups, each holding KV only for its own users) a request
is placed in one group at admission and all its pages come from that group's pool. Of the groups
with a free decode slot (fewer than ``slots_per_group`` running) and room for its whole prompt,
it goes to the one whose prefix cache serves the most of its prompt, then the one with the most
free pages, then the lowest id. The queue stays first-in first-out: when the head fits no group,
nobody behind it is admitted. A decoding user short of a page preempts the newest running user
of its own group; other groups are not touched. A preempted request is placed again from scratch.

With KV tiers (``kv_tiers``) admission looks past the device cache's hits into the tiers: the
pages they hold are restored into the fresh pages just allocated (``KvTiers.start_restore``);
the engine writes them before the prompt's first chunk and asks for that chunk again (``chunk``).
A host-tier restore is ready at admission, so that chunk runs in the admitting step. While a
node-tier restore is being read, and before it is due, the other users decode (its chunk waits).
Finishing or preempting a request drops a restore still pending.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ttdist.engine.errors import OverloadedError
from ttdist.engine.kv_tiers import KvTiers
from ttdist.engine.page_groups import GroupedPagePool
from ttdist.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class PrefillStep:
    """Compute ``seq.token_ids[start:end]``; sample the next token when ``sample``."""

    seq: Sequence
    start: int
    end: int
    sample: bool


@dataclass(frozen=True)
class DecodeStep:
    seqs: list[Sequence]


@dataclass(frozen=True)
class SchedulerConfig:
    """``max_batch`` caps the running users in all; ``slots_per_group`` caps each user group's
    (0: no cap beyond ``max_batch``)."""

    max_batch: int
    max_waiting: int
    prefill_chunk: int
    slots_per_group: int = 0


class Scheduler:
    def __init__(self, pool: GroupedPagePool, config: SchedulerConfig, clock: Callable[[], float] = time.monotonic,
                 tiers: KvTiers | None = None) -> None:
        self.pool = pool
        self.tiers = tiers
        self.config = config
        self.clock = clock
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []      # in admission order: the last is the newest
        self.num_preemptions = 0
        self._last_was_chunk = False
        self._admitted: list[Sequence] = []

    def take_admitted(self) -> list[Sequence]:
        """Sequences admitted for the first time since the last call (for metrics)."""
        admitted, self._admitted = self._admitted, []
        return admitted

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if len(self.waiting) >= self.config.max_waiting:
            raise OverloadedError(
                f"overloaded: {len(self.waiting)} requests are already waiting (max_waiting="
                f"{self.config.max_waiting}); retry later"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Take ``seq`` out of the queues and give its pages back at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> PrefillStep | DecodeStep | None:
        prefilling = next((s for s in self.running if s.needs_prefill), None)
        decoding = [s for s in self.running if not s.needs_prefill]
        if prefilling is not None:
            if not (self._last_was_chunk and decoding) and not self._awaits_restore(prefilling, decoding):
                return self._chunk(prefilling)
        elif self.waiting and len(self.running) < self.config.max_batch and (group := self._place(self.waiting[0])) is not None:
            seq = self.waiting.popleft()
            self._admit(seq, group)
            if seq.needs_prefill:
                if not self._awaits_restore(seq, decoding):
                    return self._chunk(seq)
            else:
                decoding.append(seq)
        self._last_was_chunk = False
        batch = self._make_room(decoding)
        return DecodeStep(batch) if batch else None

    def running_per_group(self) -> list[int]:
        counts = [0] * self.pool.num_groups
        for seq in self.running:
            counts[seq.group] += 1
        return counts

    def _place(self, seq: Sequence) -> int | None:
        """The group ``seq`` is admitted to now, or None when no group has a slot and room for it."""
        slots = self.config.slots_per_group or self.config.max_batch
        open_groups = [g for g, n in enumerate(self.running_per_group()) if n < slots]
        fits = self.pool.fits(seq, open_groups)
        if not fits:
            return None
        return min(fits, key=lambda f: (-f.cached_tokens, -f.free_pages, f.group)).group

    def _admit(self, seq: Sequence, group: int) -> None:
        cached = self.pool.allocate(seq, group)
        if self.tiers is not None and self.pool.prefix_caching and not seq.recomputes_prefix:
            first, usable = cached // self.pool.page_size, (len(seq) - 1) // self.pool.page_size
            found = self.tiers.match(seq, first, usable) if first < usable else 0
            if found:
                self.tiers.start_restore(seq, first, found)
        seq.status = SequenceStatus.RUNNING
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = cached
            seq.first_scheduled_s = self.clock()
            self._admitted.append(seq)
        self.running.append(seq)

    def _awaits_restore(self, seq: Sequence, decoding: list[Sequence]) -> bool:
        """The others decode while ``seq``'s restore is still being read and not yet due."""
        return bool(decoding) and seq.restore is not None and not self.tiers.restore_due(seq)

    def chunk(self, seq: Sequence) -> PrefillStep:
        """``seq``'s next prompt chunk from where it stands now (after a restore moved it on)."""
        return self._chunk(seq)

    def _chunk(self, seq: Sequence) -> PrefillStep:
        self._last_was_chunk = True
        end = min(seq.num_computed + self.config.prefill_chunk, len(seq))
        return PrefillStep(seq, seq.num_computed, end, sample=end == len(seq))

    def _make_room(self, decoding: list[Sequence]) -> list[Sequence]:
        """Give every decoding user the page its next token needs, preempting the newest of its
        group if short (the user itself when it is its group's newest)."""
        batch: list[Sequence] = []
        for seq in decoding:
            while seq.status is SequenceStatus.RUNNING and not self.pool.can_append(seq):
                self._preempt(next(s for s in reversed(self.running) if s.group == seq.group))
            if seq.status is SequenceStatus.RUNNING:
                self.pool.may_append(seq)
                batch.append(seq)
        return batch

    def _release(self, seq: Sequence) -> None:
        if self.tiers is not None:
            self.tiers.drop_restore(seq)
        self.pool.deallocate(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
