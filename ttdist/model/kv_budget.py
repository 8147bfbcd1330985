"""KV pages a replica gets: what its backend's own DRAM ledger has free once the weights are placed.

``pages = (free bytes on the fullest chip - reserve) // bytes one page takes on a chip``, less the
model's scratch page. The bytes per page are measured on the backend, not recomputed: one
layer's cache is allocated with one page and with two, and the ledger's difference is one page
of one layer (K and V, tile-padded, at the KV dtype the model really uses). So whatever the
layout puts on a chip (KV heads per chip, users per column group) the budget follows it.

With user groups (``Layout.user_groups``, a Galaxy's column groups) every chip holds one
group's pool: the pages measured are per chip and per group, and the replica's engine gets
``user_groups`` times as many (``total_pages``).

A simulated cache lives in host RAM, so the simulator caps the pages it allocates at
``max_pages`` and says so (``capped_by_host``); the cap counts what host RAM really holds: the
simulator keeps every group's pool, so each group gets ``max_pages // user_groups``. On real
chips the budget is allocated as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ttdist.errors import PermanentError
from ttdist.mesh.accounting import ChipDram

DEFAULT_RESERVE_FRACTION = 0.1


class KvCacheFitError(PermanentError, MemoryError):
    """The mesh's DRAM (or the host-RAM cap of a simulated cache) leaves no KV pages for the model."""


@dataclass(frozen=True)
class KvFit:
    """The KV cache a replica's DRAM allows, and what it allocated."""

    pages_budget: int        # pages per chip (per user group) the DRAM left after the weights allows
    num_pages: int           # pages per chip allocated: the budget, or the host-RAM cap of a simulated cache
    capped_by_host: bool
    page_bytes: int          # per chip: K and V of one page in every layer
    reserve_bytes: int       # per chip, kept free for activations and programs
    before_cache: ChipDram   # the ledger once the weights were placed
    user_groups: int = 1     # groups of chips, each holding its own users' pool of num_pages

    @property
    def total_pages(self) -> int:
        """The pages the replica's engine gets: every group's pool."""
        return self.num_pages * self.user_groups

    @property
    def total_budget(self) -> int:
        return self.pages_budget * self.user_groups


def fit_kv_cache(be, make_layer_cache: Callable[[int], object], layers: int, *,
                 reserve_fraction: float = DEFAULT_RESERVE_FRACTION, max_pages: int | None = None,
                 user_groups: int = 1) -> KvFit:
    """Size the cache from ``be.dram`` (weights already placed). ``make_layer_cache(n)`` allocates
    one layer's K and V with ``n`` engine pages per chip (plus the model's scratch page) and returns
    them; ``max_pages`` caps the pages of all ``user_groups`` pools together."""
    ledger = be.dram
    before = ledger.usage()
    base = ledger.used_per_chip()
    probe = make_layer_cache(1)
    one = ledger.used_per_chip() - base
    del probe
    probe = make_layer_cache(2)
    two = ledger.used_per_chip() - base
    del probe
    page = int(round(two - one)) * layers
    fixed = int(round(one)) * layers - page  # the scratch page and anything else per cache
    reserve = int(before.capacity * reserve_fraction)
    room = before.free - reserve - fixed
    if page <= 0 or room < page:
        raise KvCacheFitError(
            f"{be.spec.name}: the weights hold {before.weights:,} bytes per chip of {before.capacity:,}; "
            f"after a {reserve:,} byte reserve there is no room for one KV page ({page:,} bytes per chip)"
        )
    budget = room // page
    pages = budget if max_pages is None else min(budget, max_pages // user_groups)
    if pages < 1:
        raise KvCacheFitError(f"a host-RAM cap of {max_pages} KV pages leaves none for each of {user_groups} user groups")
    return KvFit(budget, pages, pages < budget, page, reserve, before, user_groups)


class Stopwatch:
    """Seconds since it was made (``elapsed``)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class LoadTimes:
    """Where a model's build went, seconds: reading and placing its weights, then sizing and
    allocating its KV cache (the rest of the build: the rope table, group tables)."""

    weight_load_s: float = 0.0
    kv_sizing_s: float = 0.0


@dataclass(frozen=True)
class ReplicaMemory:
    """What a replica reports of its KV cache and chip DRAM, from its backend's own ledger once
    the weights and the cache are placed (the fullest chip; bytes)."""

    kv_pages_budget: int     # the replica's pages (every user group's) the DRAM allows
    kv_pages_capped_by_host: bool
    dram: ChipDram
    kv_user_groups: int = 1  # groups of chips each holding its own users' pages
    load: LoadTimes | None = None   # how long placing the weights and sizing the cache took


def replica_memory(runner) -> ReplicaMemory | None:
    """``runner``'s memory report, or None for a runner without a mesh (a scripted engine)."""
    fit, dram = getattr(runner, "kv_fit", None), getattr(runner, "dram", None)
    if dram is None:
        return None
    pages = runner.info.num_pages
    groups = getattr(runner.info, "user_groups", 1)
    load = getattr(runner, "load_times", None)
    return ReplicaMemory(fit.total_budget if fit else pages, bool(fit and fit.capped_by_host), dram(), groups, load)
