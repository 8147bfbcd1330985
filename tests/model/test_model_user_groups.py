"""Users split over a Galaxy's column groups (each column holds KV pages only for its own users)
against transformers, and the slots, pages and errors of the split."""

import numpy as np
import pytest
import torch

from tests.support.model_checks import PROMPT, mesh_runner
from ttdist.engine.runner import DecodeInput, PrefillInput, SamplingSpec
from ttdist.mesh.placement import Replicate, Shard
from ttdist.model.runner import MeshModelRunner
from ttdist.model.user_groups import UserGroupError

P = 8  # mesh_runner() gives 32 pages: 8 per group on a 2D mesh


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_users_in_several_groups_decode_greedy_exact(tiny_ckpt, weight_cache, hf_tiny):
    """Four users in groups 0, 1, 1 and 3 on 8x4: a plain prompt, a two-page one, one that reuses the
    other's cached first page in its group (prefill from position 32), and a chunked one; then one
    decode batch mixing the groups. Every user's greedy tokens equal transformers'."""
    runner = mesh_runner(tiny_ckpt, weight_cache, "8x4", max_batch=8)
    assert (runner.info.user_groups, runner.info.num_pages, runner.model.groups.pages) == (4, 32, P)
    long = (PROMPT * 6)[:77]
    shared = (PROMPT * 3)[:32] + [4242, 17, 99]
    users = {  # seq id: (prompt, page table (global ids), prefill chunks as (start, end))
        "a": (PROMPT, [0, 1], [(0, 14)]),
        "b": ((PROMPT * 3)[:40], [9, 8], [(0, 40)]),
        "d": (shared, [9, 12], [(32, 35)]),         # page 9 holds b's first 32 tokens, which d shares
        "c": (long, [30, 31, 29], [(0, 32), (32, 64), (64, 77)]),
    }
    steps = 6
    out: dict[str, list[int]] = {}
    for key, (prompt, table, chunks) in users.items():
        for start, end in chunks:
            pages = table[: -(-end // 32)]
            tok = runner.prefill(PrefillInput(prompt[start:end], start, pages, end == len(prompt)))
        out[key] = [tok]
    keys = list(users)
    for i in range(steps - 1):
        positions = [len(users[k][0]) + i for k in keys]
        tables = [users[k][1] for k in keys]
        toks = runner.decode(DecodeInput([out[k][-1] for k in keys], positions, tables, [SamplingSpec()] * 4, seq_ids=keys))
        for k, t in zip(keys, toks):
            out[k].append(t)
    # each user in its group's slots (2 per group: the first rows of its 8 in a 32-row tile), kept for the whole decode
    assert runner.slots.assign(keys, 4, [0, 1, 1, 3]) == [0, 8, 9, 24]
    expect = np.full(32, -1)
    expect[[0, 8, 9, 24]] = [14 + 4, 40 + 4, 35 + 4, 77 + 4]
    assert runner.inputs.host["positions"].tolist() == expect.tolist()
    # page tables hold each group's local ids, the scratch page (P) after a user's pages
    assert runner.inputs.host["page_table"][[0, 8, 9, 24], :3].tolist() == [[0, 1, P], [1, 0, P], [1, 4, P], [6, 7, 5]]
    for key, (prompt, _, _) in users.items():
        assert out[key] == hf_greedy(hf_tiny, prompt, steps), key


def test_each_column_holds_only_its_groups_pages(tiny_ckpt, weight_cache):
    """A prefill of a group-1 user writes the pool of column 1 only; no chip holds a page of another group."""
    runner = mesh_runner(tiny_ckpt, weight_cache, "8x4")
    cache = runner.model.caches[0].k
    assert cache.placements == (Shard(1), Shard(0))  # heads on the rows, pages on the columns
    assert cache.shape[1] == P + 1                     # per chip: its group's pool and a scratch page
    runner.prefill(PrefillInput(PROMPT, 0, [8 + 5], False))
    data = cache.data  # [R, C, kv, pages, page_size, hd]
    assert data.shape[:2] == (8, 4)
    assert data[:, 1, :, 5].abs().sum() > 0
    for col in (0, 2, 3):
        assert data[:, col, :, :P].abs().sum() == 0, col
    assert data[:, 1, :, [p for p in range(P) if p != 5]].abs().sum() == 0


@pytest.mark.parametrize("mesh", ["1x1", "1x2", "1x8"])
def test_one_dimensional_meshes_keep_one_group(mesh, tiny_ckpt, weight_cache):
    runner = mesh_runner(tiny_ckpt, weight_cache, mesh, max_batch=3)
    lay = runner.model.layout
    assert lay.user_groups == 1 and runner.info.user_groups == 1 and runner.info.num_pages == 32
    assert lay.kv_cache == lay.heads and lay.per_group_rows(0) == (Replicate(), Replicate())
    assert runner.slots.assign(["x", "y", "z"], 3, [0, 0, 0]) == [0, 1, 2]  # any pages, any slot


def test_slots_are_assigned_inside_each_group(tiny_ckpt, weight_cache):
    runner = mesh_runner(tiny_ckpt, weight_cache, "8x4", max_batch=8)
    slots = runner.slots
    # 8 slots in a 32-row decode tile: group g's two slots are the first of its rows [8g, 8g + 8)
    assert slots.assign(["a", "b", "c"], 3, [3, 0, 3]) == [24, 0, 25]
    assert slots.assign(["b", "d", "c"], 3, [0, 0, 3]) == [0, 1, 25]  # a left: its slot frees, the rest stay
    assert slots.assign(["e", "c"], 2, [3, 3]) == [24, 25]
    with pytest.raises(UserGroupError, match="user group 0 has 2 slots, all taken"):
        slots.assign(["b", "d", "f"], 3, [0, 0, 0])
    assert slots.assign([], 3, [2, 1, 2]) == [16, 8, 17]  # callers without ids fill each group's first slots


def test_group_errors_are_typed_and_clear(tiny_ckpt, weight_cache):
    runner = mesh_runner(tiny_ckpt, weight_cache, "8x4", max_batch=4)  # one slot per group
    spec = [SamplingSpec()] * 2
    with pytest.raises(UserGroupError, match=r"span groups \[0, 1\]"):
        runner.prefill(PrefillInput(PROMPT * 3, 0, [7, 8], True))
    with pytest.raises(UserGroupError, match=r"span groups \[1, 2\]"):
        runner.decode(DecodeInput([1], [40], [[15, 16]], spec[:1], seq_ids=["x"]))
    with pytest.raises(UserGroupError, match="user group 2 has 1 slots, all taken"):
        runner.decode(DecodeInput([1, 2], [3, 4], [[16], [17]], spec, seq_ids=["x", "y"]))
    with pytest.raises(UserGroupError, match="a decode batch of 3 rows is not whole tiles split over 4 user groups"):
        runner.model.host_inputs([1], [3], [[0]], np.zeros((0, 4), np.float32), 3)
    with pytest.raises(UserGroupError, match="max_batch 6 must be a multiple of the 4 user groups"):
        mesh_runner(tiny_ckpt, weight_cache, "8x4", max_batch=6)
    with pytest.raises(UserGroupError, match="num_pages 30 must be a multiple of the 4 user groups"):
        MeshModelRunner.from_checkpoint(tiny_ckpt, mesh="8x4", dtype="float32", num_pages=30, max_batch=4, cache_dir=weight_cache)


def test_a_replicas_total_pages_are_four_times_a_chips(tiny_ckpt, weight_cache):
    from ttdist.model.runner import kv_budget

    runner = MeshModelRunner.from_checkpoint(tiny_ckpt, mesh="8x4", dtype="float32", cache_dir=weight_cache, max_batch=4,
                                             max_pages=4 * 40)
    fit = runner.kv_fit
    assert (fit.num_pages, fit.user_groups, runner.info.num_pages) == (40, 4, 160)  # the host cap counts every pool
    assert runner.model.caches[0].k.shape[1] == 41
    budget = kv_budget(runner.model.config, mesh="8x4")
    assert budget.user_groups == 4 and budget.total_pages == 4 * budget.num_pages
