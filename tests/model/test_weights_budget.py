"""KV budgets from the backend's own DRAM ledger, and precision per tensor group on the simulator."""

import dataclasses

import numpy as np
import pytest
import torch

from ttdist.mesh.accounting import tile_padded_bytes
from ttdist.mesh.precision import PRESETS, DType, Precision, block_float_round
from ttdist.model.runner import MeshModelRunner
from ttdist.model.weights import load_weights

SMALL_DRAM = 40_000_000  # bytes per chip: a budget of a few thousand pages, allocated uncapped


def runner(tiny_ckpt, weight_cache, mesh, precision="bfloat16", dram=None, **kw):
    weights = load_weights(tiny_ckpt, mesh=mesh, dtype=precision, cache_dir=weight_cache)
    if dram is not None:
        weights.mesh = dataclasses.replace(weights.mesh, dram_bytes_per_chip=dram)
    return MeshModelRunner(weights, backend="sim", **kw)


@pytest.mark.parametrize("mesh, groups", [("1x1", 1), ("1x8", 1), ("2x4", 4), ("8x4", 4)])
def test_kv_budget_is_what_the_ledger_leaves(tiny_ckpt, weight_cache, mesh, groups):
    """Pages per chip from the ledger; on a 2D mesh each of the 4 column groups holds its own pool,
    so the replica's engine gets 4 times a chip's pages."""
    dram = SMALL_DRAM if groups == 1 else 8_000_000  # a few hundred pages per chip: the simulator holds every chip's pool
    r = runner(tiny_ckpt, weight_cache, mesh, dram=dram, max_batch=4)
    fit, after = r.kv_fit, r.dram()
    assert not fit.capped_by_host and fit.pages_budget == fit.num_pages and fit.user_groups == groups
    assert r.info.user_groups == groups and r.info.num_pages == fit.total_pages == groups * fit.num_pages
    assert r.model.caches[0].k.shape[1] == fit.num_pages + 1  # per chip: its group's pool and one scratch page
    assert fit.before_cache.weights == after.weights > 0 and fit.before_cache.kv_cache == 0
    # the cache fills the DRAM down to the reserve: one page more would cut into it
    assert fit.reserve_bytes <= after.free < fit.reserve_bytes + fit.page_bytes
    assert after.kv_cache >= fit.page_bytes * fit.num_pages
    # one page on one chip: K and V of every layer, its KV heads, page_size x head_dim, bf16
    lay = r.model.layout
    per_layer = 2 * tile_padded_bytes((lay.n_kv_local, 32, lay.config.head_dim), DType.bfloat16)
    assert fit.page_bytes == per_layer * lay.config.num_hidden_layers


def test_kv_pages_follow_the_kv_dtype_actually_used(tiny_ckpt, weight_cache):
    pages = {p: runner(tiny_ckpt, weight_cache, "1x2", precision=p, dram=SMALL_DRAM).kv_fit for p in
             ("float32", "bfloat16", "performance")}
    assert pages["float32"].page_bytes == 2 * pages["bfloat16"].page_bytes           # float32 KV
    assert pages["performance"].page_bytes * 2 == pages["bfloat16"].page_bytes * DType.bfloat8_b.bytes_per_element
    assert pages["performance"].pages_budget > pages["bfloat16"].pages_budget > pages["float32"].pages_budget


def test_simulated_cache_is_capped_by_host_ram_and_says_so(tiny_ckpt, weight_cache):
    r = runner(tiny_ckpt, weight_cache, "1x8", max_pages=64)
    assert r.kv_fit.capped_by_host and r.info.num_pages == 64 < r.kv_fit.pages_budget
    assert r.kv_fit.pages_budget > 100_000  # 12 GB chips hold far more than the host cap


def test_host_cap_counts_every_user_groups_pool(tiny_ckpt, weight_cache):
    from ttdist.model.kv_budget import replica_memory

    r = runner(tiny_ckpt, weight_cache, "8x4", max_pages=64, max_batch=4)
    assert r.kv_fit.capped_by_host and (r.kv_fit.num_pages, r.info.num_pages, r.info.user_groups) == (16, 64, 4)
    mem = replica_memory(r)
    assert mem.kv_pages_budget == 4 * r.kv_fit.pages_budget and mem.kv_user_groups == 4


def test_weights_that_leave_no_room_are_a_clear_error(tiny_ckpt, weight_cache):
    with pytest.raises(MemoryError, match="no room for one KV page"):
        runner(tiny_ckpt, weight_cache, "1x1", dram=14_000_000)


def test_presets_set_each_group_and_the_sim_emulates_them(tiny_ckpt, weight_cache):
    perf = PRESETS["performance"]
    assert (perf.ff1_ff3, perf.ff2, perf.wqkv, perf.kv_cache, perf.norms) == (
        DType.bfloat4_b, DType.bfloat8_b, DType.bfloat8_b, DType.bfloat8_b, DType.bfloat16)
    assert Precision.parse("bfloat8_b").wqkv is DType.bfloat8_b and Precision.parse("accuracy") is PRESETS["accuracy"]
    with pytest.raises(ValueError, match="unknown precision 'fast'"):
        Precision.parse("fast")
    r = runner(tiny_ckpt, weight_cache, "1x2", precision="performance", num_pages=8)
    be, placed = r.backend, r.model.layers[0]
    w1, w2, wqkv = placed.mlp.w1.data, placed.mlp.w2.data, placed.attention.wqkv.data
    assert torch.equal(w1, block_float_round(w1, 3))
    assert torch.equal(w2, block_float_round(w2, 7)) and not torch.equal(w2, block_float_round(w2, 3))
    assert torch.equal(wqkv, block_float_round(wqkv, 7))
    # the ledger counts each group in its own format
    lay = r.model.layout
    assert be.dram.by_name["weights.layers.0.w1"] == tile_padded_bytes((lay.hidden, lay.ff_local), DType.bfloat4_b)
    assert be.dram.by_name["weights.layers.0.w2"] == tile_padded_bytes((lay.ff_local, lay.hidden), DType.bfloat8_b)
    norm = placed.attention_norm.data
    assert torch.equal(norm, norm.to(torch.bfloat16).float())
    assert np.isfinite(r.prefill_logits(list(range(1, 40)), 0, [0, 1])).all()
    k = r.model.caches[0].k.data  # the KV cache holds bfp8 values
    assert k.abs().sum() > 0 and torch.equal(k, block_float_round(k, 7))
