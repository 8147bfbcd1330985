"""Users split over column groups so no chip holds KV pages for users it does not serve.

On a 2D mesh (Galaxy 8x4) the attention heads fill the inner axis; the ``Layout.user_groups``
column groups of the hidden axis would otherwise each hold the same KV cache. Instead (as
tt_transformers' ``batch_size_per_device_group``) group g's chips hold only group g's users:

* pages: the engine's ``G * P`` page ids, group g owning ``[g * P, (g + 1) * P)``; the chips of
  column g hold that pool as local ids ``0..P-1`` plus their own scratch page ``P``;
* decode slots: ``B`` slots, ``B/G`` per group, in a decode batch of ``R`` rows (``decode_rows``:
  ``B`` rounded up to whole tiles), group g's slots the first ``B/G`` of its rows
  ``[g * R/G, (g + 1) * R/G)``; a user keeps its slot (``SlotMap``) inside its group's range, told
  by its first page id;
* decode: the QKV output is replicated over the columns; each column picks its group's R/G rows
  with a one-hot selection matmul (tt_transformers' ``slice_mat``), attends over its own pool
  with per-column positions and page tables, and the attention rows are all-gathered over the
  columns back to ``[R, ...]`` before WO (``GroupOps.select`` / ``GroupOps.gather``). The selection
  sums over every row of the batch, so every row must hold written values: garbage times a zero
  is NaN where the garbage is NaN. Hence the batch is whole tiles (no padding rows under the
  sum) and an idle slot decodes at position 0 of its scratch page (``LlamaModel.place_inputs``)
  so paged SDPA writes its attention rows too (at position -1 it leaves them unwritten);
* prefill of one user of group g: column g reads and writes through the user's (local) table,
  the other columns through their scratch page (``GroupTable``); a chunk that reads cached
  positions (``start_pos > 0``) is right only on column g, so its attention output is masked to
  column g and all-reduced over the columns (``GroupOps.from_owner``).

With one group (every 1D mesh) every helper is the identity and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttdist.mesh.backend import MeshError, PerDevice
from ttdist.mesh.placement import Partial, Replicate
from ttdist.mesh.precision import DType
from ttdist.model.layout import TILE, Layout


class UserGroupError(MeshError):
    """A user's pages or slot break the column-group split (pages spanning groups, a full group)."""


def decode_rows(slots: int, count: int) -> int:
    """Rows of a decode batch of ``slots`` slots over ``count`` groups: the slots themselves with one
    group (rows are independent), else whole tiles split evenly over the groups (the selection
    matmul sums over every row, so none may be a tile's unwritten padding)."""
    if count == 1:
        return slots
    unit = TILE * count // np.gcd(TILE, count)
    return -(-slots // unit) * unit


@dataclass(frozen=True)
class UserGroups:
    """The host-side split: ``count`` groups of ``pages`` page ids (one chip's pool, without its
    scratch page) and ``slots // count`` decode slots each, group g's the first of its
    ``rows // count`` rows of the decode batch (``decode_rows``)."""

    count: int
    pages: int
    slots: int

    def __post_init__(self):
        if self.count < 1 or self.slots % self.count:
            raise UserGroupError(f"a slot batch of {self.slots} does not split over {self.count} user groups; "
                                 f"use a max_batch that is a multiple of {self.count}")

    @property
    def total_pages(self) -> int:
        return self.count * self.pages

    @property
    def slots_per_group(self) -> int:
        return self.slots // self.count

    @property
    def rows(self) -> int:
        return decode_rows(self.slots, self.count)

    @property
    def rows_per_group(self) -> int:
        return self.rows // self.count

    def group_slots(self, group: int) -> range:
        """Group ``group``'s slots: rows of the decode batch."""
        first = group * self.rows_per_group
        return range(first, first + self.slots_per_group)

    def group_of(self, table) -> int:
        """The group whose pool holds every page of ``table`` (global ids, padding stripped)."""
        pages = [int(p) for p in table]
        if not pages:
            return 0
        if min(pages) < 0 or max(pages) >= self.total_pages:
            raise MeshError(f"page ids must lie in [0, {self.total_pages}), got {min(pages)}..{max(pages)}")
        group = pages[0] // self.pages
        if any(p // self.pages != group for p in pages):
            raise UserGroupError(f"a user's pages must lie in one group's range of {self.pages} ids; "
                                 f"{pages} span groups {sorted({p // self.pages for p in pages})}")
        return group

    def local(self, table, group: int) -> list[int]:
        """``table``'s pages as ids of ``group``'s pool."""
        return [int(p) - group * self.pages for p in table]

    def group_of_slot(self, slot: int) -> int:
        return slot // self.rows_per_group

    def prefill_table(self, row: np.ndarray, group: int):
        """One user's prefill table: the ``[W]`` row itself with one group, else a ``GroupTable``
        (group ``group``'s column reads ``row``, every other column its scratch page)."""
        if self.count == 1:
            return row
        full = np.full((1, self.count, row.shape[0]), self.pages, dtype=row.dtype)
        full[0, group] = row
        return GroupTable(PerDevice(full), group)


@dataclass(frozen=True)
class GroupTable:
    """A prefill page table for one user of group ``group``: per chip, as ``PerDevice`` ``[1, G, W]``."""

    table: PerDevice
    group: int


class SlotMap:
    """Stable decode slots: a user keeps its slot while it decodes, so its page-table row stays put.
    With user groups, each user's slot lies in its group's range of slots."""

    def __init__(self, slots: int, groups: UserGroups | None = None):
        self.slots = slots
        self.groups = groups or UserGroups(1, 0, slots)
        self._of: dict[str, int] = {}

    def assign(self, seq_ids: list[str], count: int, groups: list[int] | None = None) -> list[int]:
        """Slots for ``count`` users (``groups``: each user's group, default 0)."""
        groups = [0] * count if groups is None else list(groups)
        if not seq_ids:  # callers without ids: users fill their groups' first slots in order
            self._of.clear()
            seq_ids = [f"#{i}" for i in range(count)]
        if len(seq_ids) != count or len(set(seq_ids)) != count:
            raise ValueError(f"decode: {count} users need {count} distinct seq_ids, got {len(seq_ids)}")
        live = dict(zip(seq_ids, groups))
        g = self.groups
        self._of = {k: v for k, v in self._of.items() if k in live and g.group_of_slot(v) == live[k]}
        taken = set(self._of.values())
        for key in seq_ids:
            if key in self._of:
                continue
            group = live[key]
            free = [s for s in g.group_slots(group) if s not in taken]
            if not free:
                raise UserGroupError(f"decode: user group {group} has {g.slots_per_group} slots, all taken; "
                                     f"at most {g.slots_per_group} of its users decode at once")
            self._of[key] = free[0]
            taken.add(free[0])
        return [self._of[key] for key in seq_ids]


class GroupOps:
    """The device side: selection matrices, the gather over the columns, the owner masks. Every
    method is the identity with one group (the way ``ccl`` helpers are on an axis of size 1)."""

    def __init__(self, be, layout: Layout):
        self.be, self.layout = be, layout
        self.count = layout.user_groups
        self._select: dict[int, object] = {}
        self._owner: dict[int, object] = {}

    def prepare(self, batch: int) -> None:
        """Place the constants a decode batch of ``batch`` rows and a prefill need (before any
        capture: a trace must find every persistent tensor already there)."""
        if self.count > 1:
            self._selection(batch)
            for g in range(self.count):
                self._owner_mask(g)

    def _selection(self, batch: int):
        if batch != decode_rows(batch, self.count):
            raise UserGroupError(f"a decode batch of {batch} rows is not whole tiles split over {self.count} user groups")
        if batch not in self._select:  # [B, B] identity, rows split over the columns: column g picks its B/G users
            self._select[batch] = self.be.from_host(np.eye(batch, dtype=np.float32), self.layout.per_group_rows(0),
                                                    dtype=DType.bfloat16, name="user_groups.select")
        return self._select[batch]

    def _owner_mask(self, group: int):
        if group not in self._owner:  # 1 on column `group`, 0 elsewhere: a Partial whose sum is 1
            mask = np.zeros((1, self.count, 1, 1), dtype=np.float32)
            mask[0, group] = 1.0
            placements: list = [Replicate(), Replicate()]
            placements[self.layout.group_axis] = Partial()
            self._owner[group] = self.be.from_host_per_device(mask, (placements[0], placements[1]), dtype=DType.bfloat16,
                                                              name="user_groups.owner")
        return self._owner[group]

    def select(self, x):
        """Decode rows ``[R, W]`` (replicated over the columns) -> each column's ``[R/G, W]``."""
        if self.count == 1:
            return x
        return self.be.linear(self._selection(x.shape[0]), x)

    def gather(self, x):
        """Each column's ``[R/G, W]`` rows -> ``[R, W]`` on every column, in slot order."""
        if self.count == 1:
            return x
        return self.be.all_gather(x, dim=0, cluster_axis=self.layout.group_axis)

    def from_owner(self, x, page_table, start_pos: int):
        """A prefill chunk's attention rows, made right on every column: only the owning group's
        column read the user's cached positions (a chunk at 0 reads none: every column is right)."""
        if not isinstance(page_table, GroupTable) or start_pos == 0:
            return x
        masked = self.be.multiply(x, self._owner_mask(page_table.group))
        return self.be.all_reduce(masked, cluster_axis=self.layout.group_axis)
