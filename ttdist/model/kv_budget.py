"""KV pages a replica gets: what its backend's own DRAM ledger has free once the weights are placed.

``pages = (free bytes on the fullest chip - reserve) // bytes one page takes on a chip``, less the
model's scratch page. The bytes per page are measured on the backend, not recomputed: one
layer's cache is allocated with one page and with two, and the ledger's difference is one page
of one layer (K and V, tile-padded, at the KV dtype the model really uses). So whatever the
layout puts on a chip (KV heads per chip, users per column group) the budget follows it.

A simulated cache lives in host RAM, so the simulator caps the pages it allocates at
``max_pages`` and says so (``capped_by_host``); on real chips the budget is allocated as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ttdist.mesh.accounting import ChipDram

DEFAULT_RESERVE_FRACTION = 0.1


@dataclass(frozen=True)
class KvFit:
    """The KV cache a replica's DRAM allows, and what it allocated."""

    pages_budget: int        # pages the DRAM left after the weights allows
    num_pages: int           # pages allocated: the budget, or the host-RAM cap of a simulated cache
    capped_by_host: bool
    page_bytes: int          # per chip: K and V of one page in every layer
    reserve_bytes: int       # per chip, kept free for activations and programs
    before_cache: ChipDram   # the ledger once the weights were placed


def fit_kv_cache(be, make_layer_cache: Callable[[int], object], layers: int, *,
                 reserve_fraction: float = DEFAULT_RESERVE_FRACTION, max_pages: int | None = None) -> KvFit:
    """Size the cache from ``be.dram`` (weights already placed). ``make_layer_cache(n)`` allocates
    one layer's K and V with ``n`` engine pages (plus the model's scratch page) and returns them."""
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
        raise MemoryError(
            f"{be.spec.name}: the weights hold {before.weights:,} bytes per chip of {before.capacity:,}; "
            f"after a {reserve:,} byte reserve there is no room for one KV page ({page:,} bytes per chip)"
        )
    budget = room // page
    pages = budget if max_pages is None else min(budget, max_pages)
    return KvFit(budget, pages, pages < budget, page, reserve, before)


@dataclass(frozen=True)
class ReplicaMemory:
    """What a replica reports of its KV cache and chip DRAM, from its backend's own ledger once
    the weights and the cache are placed (the fullest chip; bytes)."""

    kv_pages_budget: int
    kv_pages_capped_by_host: bool
    dram: ChipDram


def replica_memory(runner) -> ReplicaMemory | None:
    """``runner``'s memory report, or None for a runner without a mesh (a scripted engine)."""
    fit, dram = getattr(runner, "kv_fit", None), getattr(runner, "dram", None)
    if dram is None:
        return None
    pages = runner.info.num_pages
    return ReplicaMemory(fit.pages_budget if fit else pages, bool(fit and fit.capped_by_host), dram())
