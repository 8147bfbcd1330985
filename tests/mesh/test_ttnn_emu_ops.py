"""The emulated ttnn ops against numpy references of ttnn's golden functions, per chip, on
several meshes where mappers and collectives matter. Runs without torch and without ttnn."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

from ttdist.mesh.precision import block_float_round_numpy
from ttdist.mesh.ttnn_emu.testing import fresh_ttnn, open_mesh, per_chip, upload

MESHES = [(1, 2), (1, 8), (8, 4)]


def bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.fixture
def ttnn():
    return fresh_ttnn()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _groups(shape, axis):
    """ccl.py's _get_collective_groups: coordinates grouped along ``axis`` (all, row-major, when None)."""
    coords = list(itertools.product(range(shape[0]), range(shape[1])))
    if axis is None:
        return [coords]
    groups = {}
    for rc in coords:
        groups.setdefault(rc[1 - axis], []).append(rc)
    return list(groups.values())


# ---------------------------------------------------------------------- mappers
@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_mapper_shards_and_replicates_per_axis(ttnn, rng, mesh):
    dev = open_mesh(ttnn, *mesh)
    x = rng.standard_normal((1, 2, 64, 96)).astype(np.float32)
    rows, cols = mesh
    t = upload(ttnn, dev, x[:, :, : 8 * 8, :] if rows == 8 else x, dims=(2, None) if rows > 1 else (None, 3))
    got = per_chip(ttnn, t)
    for r, c in itertools.product(range(rows), range(cols)):
        want = np.split(x[:, :, :64], rows, axis=2)[r] if rows > 1 else np.split(x, cols, axis=3)[c]
        np.testing.assert_array_equal(got[r, c], want)
    assert list(t.shape) == list(got.shape[2:])


def test_from_host_shards_and_device_tensors_are_row_major(ttnn):
    dev = open_mesh(ttnn, 2, 3)
    pieces = [ttnn.Tensor(np.full((1, 4), i, np.int32), ttnn.int32, None, ttnn.ROW_MAJOR_LAYOUT) for i in range(6)]
    t = ttnn.from_host_shards(pieces, ttnn.MeshShape(2, 3)).to(dev)
    assert [int(p.cpu().to_numpy()[0, 0]) for p in ttnn.get_device_tensors(t)] == list(range(6))
    back = ttnn.from_device(ttnn.to_device(pieces[4], dev))
    assert np.array_equal(ttnn.get_device_tensors(back)[5].to_numpy(), np.full((1, 4), 4))
    shared = ttnn.Tensor(np.arange(4, dtype=np.int32).reshape(1, 4), ttnn.int32, None, ttnn.ROW_MAJOR_LAYOUT)
    t = ttnn.from_host_shards([shared] * 6, ttnn.MeshShape(2, 3)).to(dev)
    assert all(np.array_equal(p.cpu().to_numpy(), [[0, 1, 2, 3]]) for p in ttnn.get_device_tensors(t))


# ---------------------------------------------------------------------- collectives
@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("axis", [0, 1, None])
@pytest.mark.parametrize("dim", [2, 3])
def test_all_gather_matches_golden(ttnn, rng, mesh, axis, dim):
    dev = open_mesh(ttnn, *mesh)
    rows, cols = mesh
    x = rng.standard_normal((rows, cols, 1, 1, 32, 64)).astype(np.float32)
    t = ttnn.from_host_shards([ttnn.Tensor(x[r, c], ttnn.float32, None, ttnn.TILE_LAYOUT) for r in range(rows) for c in range(cols)],
                              ttnn.MeshShape(rows, cols)).to(dev)
    out = ttnn.all_gather(t, dim, cluster_axis=axis)
    got = per_chip(ttnn, out)
    for group in _groups(mesh, axis):
        want = np.concatenate([x[rc] for rc in group], axis=dim)
        for rc in group:
            np.testing.assert_array_equal(got[rc], want)
    n = len(_groups(mesh, axis)[0])
    assert out.shape[dim] == x.shape[2 + dim] * n and out.dtype == ttnn.float32


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("axis", [0, 1])
def test_reduce_scatter_and_all_reduce_match_golden(ttnn, rng, mesh, axis):
    dev = open_mesh(ttnn, *mesh)
    rows, cols = mesh
    n = mesh[axis]
    x = rng.standard_normal((rows, cols, 1, 1, 32, 32 * 8)).astype(np.float32)
    t = ttnn.from_host_shards([ttnn.Tensor(x[r, c], ttnn.float32, None, ttnn.TILE_LAYOUT) for r in range(rows) for c in range(cols)],
                              ttnn.MeshShape(rows, cols)).to(dev)
    scattered = per_chip(ttnn, ttnn.reduce_scatter(t, 3, cluster_axis=axis))
    reduced = per_chip(ttnn, ttnn.all_reduce(t, cluster_axis=axis))
    for group in _groups(mesh, axis):
        total = sum(x[rc] for rc in group)
        for i, rc in enumerate(group):
            np.testing.assert_allclose(reduced[rc], total, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(scattered[rc], np.split(total, n, axis=3)[i], rtol=1e-5, atol=1e-5)


def test_bfloat16_reduction_rounds_after_every_add(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    big, small = 256.0, 1.0  # 256 + 1 is not a bfloat16: a bf16 reduction loses the 1
    pieces = [ttnn.Tensor(np.full((1, 1, 32, 32), v, np.float32), ttnn.bfloat16, None, ttnn.TILE_LAYOUT) for v in (big, small)]
    t = ttnn.from_host_shards(pieces, ttnn.MeshShape(1, 2)).to(dev)
    assert per_chip(ttnn, ttnn.all_reduce(t, cluster_axis=1))[0, 0, 0, 0, 0, 0] == 256.0


def test_collectives_need_the_fabric(ttnn):
    ttnn.set_fabric_config(ttnn.FabricConfig.DISABLED)
    dev = ttnn.open_mesh_device(ttnn.MeshShape(1, 2))
    t = upload(ttnn, dev, np.ones((1, 1, 32, 32), np.float32))
    with pytest.raises(RuntimeError, match="fabric"):
        ttnn.all_gather(t, 3, cluster_axis=1)


# ---------------------------------------------------------------------- matmul, elementwise, reductions
def test_linear_multiplies_whole_tiles_in_the_weight_format(ttnn, rng):
    dev = open_mesh(ttnn, 1, 2)
    a = rng.standard_normal((1, 1, 40, 64)).astype(np.float32)
    w = rng.standard_normal((1, 1, 64, 96 * 2)).astype(np.float32)
    ta = upload(ttnn, dev, a, dtype=ttnn.bfloat16)
    tw = upload(ttnn, dev, w, dims=(None, 3), dtype=ttnn.bfloat8_b)
    out = ttnn.linear(ta, tw)
    assert list(out.shape) == [1, 1, 40, 96] and list(out.padded_shape) == [1, 1, 64, 96] and out.dtype == ttnn.bfloat16
    got = per_chip(ttnn, out)
    for c in range(2):
        want = bf16(a) @ block_float_round_numpy(np.split(w, 2, axis=3)[c], 7)
        np.testing.assert_allclose(got[0, c], bf16(want), rtol=2e-2, atol=2e-2)


def test_dram_sharded_matmul_checks_its_operands(ttnn):
    dev = open_mesh(ttnn, 1, 1)
    a = upload(ttnn, dev, np.ones((1, 1, 32, 64), np.float32), dtype=ttnn.bfloat16)
    w = upload(ttnn, dev, np.ones((1, 1, 64, 64), np.float32), dtype=ttnn.bfloat8_b)
    config = ttnn.MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig(in0_block_w=1, per_core_M=1, per_core_N=1, fused_activation=None)
    with pytest.raises(RuntimeError, match="width-sharded in L1"):
        ttnn.linear(a, w, program_config=config, memory_config=ttnn.L1_WIDTH_SHARDED_MEMORY_CONFIG)


def test_binary_ops_broadcast_scalars_and_fuse_silu(ttnn, rng):
    dev = open_mesh(ttnn, 1, 2)
    a = rng.standard_normal((1, 1, 5, 64)).astype(np.float32)
    b = rng.standard_normal((1, 1, 5, 1)).astype(np.float32)
    ta, tb = upload(ttnn, dev, a), upload(ttnn, dev, b)
    np.testing.assert_allclose(per_chip(ttnn, ttnn.multiply(ta, tb))[0, 1], a * b, rtol=1e-6)
    np.testing.assert_allclose(per_chip(ttnn, ttnn.subtract(ta, 1.5))[0, 0], a - 1.5, rtol=1e-6)
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.lt(ta, tb, dtype=ttnn.float32))[0, 0], (a < b).astype(np.float32))
    silu = ttnn.mul(ta, ta, input_tensor_a_activations=[ttnn.UnaryOpType.SILU])
    np.testing.assert_allclose(per_chip(ttnn, silu)[0, 0], a / (1 + np.exp(-a)) * a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_chip(ttnn, ttnn.sum(ta, dim=-1, keepdim=True))[0, 0], a.sum(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(per_chip(ttnn, ttnn.reciprocal(ttnn.exp(ta)))[0, 0], np.exp(-a), rtol=1e-5)


def test_topk_returns_values_and_uint16_indices(ttnn, rng):
    dev = open_mesh(ttnn, 1, 1)
    x = rng.permutation(96).astype(np.float32).reshape(1, 1, 1, 96)
    values, index = ttnn.topk(upload(ttnn, dev, x, dtype=ttnn.bfloat16), 5, dim=-1, largest=True, sorted=True)
    assert values.dtype == ttnn.bfloat16 and index.dtype == ttnn.uint16 and list(index.shape) == [1, 1, 1, 5]
    order = np.argsort(-x[0, 0, 0])[:5]
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.typecast(index, ttnn.float32))[0, 0, 0, 0, 0], order)
    np.testing.assert_array_equal(per_chip(ttnn, values)[0, 0, 0, 0, 0], x[0, 0, 0, order])


def test_rms_norm_and_its_distributed_pair_match_golden(ttnn, rng):
    dev = open_mesh(ttnn, 1, 8)
    x = rng.standard_normal((1, 1, 32, 8 * 64)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(8 * 64)).astype(np.float32)
    want = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5) * w
    tx = upload(ttnn, dev, x, dims=(None, 3))
    tw = upload(ttnn, dev, w.reshape(1, 1, -1, 32), dims=(None, 2), layout=ttnn.ROW_MAJOR_LAYOUT, dtype=ttnn.float32)
    stats = ttnn.rms_norm_pre_all_gather(tx, dtype=ttnn.float32)
    assert list(stats.shape) == [1, 1, 32, 32]
    gathered = ttnn.all_gather(stats, 3, cluster_axis=1)
    out = per_chip(ttnn, ttnn.rms_norm_post_all_gather(tx, gathered, epsilon=1e-5, weight=tw))
    np.testing.assert_allclose(np.concatenate(list(out[0]), axis=-1), want, rtol=1e-4, atol=1e-4)
    whole = ttnn.rms_norm(upload(ttnn, dev, x), epsilon=1e-5,
                          weight=upload(ttnn, dev, w.reshape(1, 1, -1, 32), layout=ttnn.ROW_MAJOR_LAYOUT))
    np.testing.assert_allclose(per_chip(ttnn, whole)[0, 3], want, rtol=1e-4, atol=1e-4)


def test_embedding_looks_up_rows(ttnn, rng):
    dev = open_mesh(ttnn, 1, 2)
    table = rng.standard_normal((1, 1, 100, 64)).astype(np.float32)
    ids = np.array([[3, 99, 0, 7]], np.uint32)
    t_ids = upload(ttnn, dev, ids, dtype=ttnn.uint32, layout=ttnn.ROW_MAJOR_LAYOUT)
    t_table = upload(ttnn, dev, table, dims=(None, 3), dtype=ttnn.bfloat16, layout=ttnn.ROW_MAJOR_LAYOUT)
    out = ttnn.embedding(t_ids, t_table, layout=ttnn.TILE_LAYOUT)
    assert list(out.shape) == [1, 4, 32] and list(out.padded_shape) == [1, 32, 32] and out.layout == ttnn.TILE_LAYOUT
    got = per_chip(ttnn, out)
    for c in range(2):
        np.testing.assert_array_equal(got[0, c, 0], bf16(np.split(table, 2, axis=3)[c][0, 0, ids[0]]))


def test_embedding_reads_bf16_tables_only(ttnn, rng):
    """ttnn 0.81.1 on mocked chips: TT_FATAL "Weights tensor must have BFLOAT16 dtype"; the output may be float32."""
    dev = open_mesh(ttnn, 1, 1)
    table = rng.standard_normal((1, 1, 100, 64)).astype(np.float32)
    t_ids = upload(ttnn, dev, np.array([[3, 99]], np.uint32), dtype=ttnn.uint32, layout=ttnn.ROW_MAJOR_LAYOUT)
    with pytest.raises(RuntimeError, match="TT_FATAL embedding: the weight dtype .*FLOAT32"):
        ttnn.embedding(t_ids, upload(ttnn, dev, table, dtype=ttnn.float32, layout=ttnn.ROW_MAJOR_LAYOUT), layout=ttnn.TILE_LAYOUT)
    out = ttnn.embedding(t_ids, upload(ttnn, dev, table, dtype=ttnn.bfloat16, layout=ttnn.ROW_MAJOR_LAYOUT), layout=ttnn.TILE_LAYOUT,
                         dtype=ttnn.float32)
    assert out.dtype == ttnn.float32
    np.testing.assert_array_equal(per_chip(ttnn, out)[0, 0, 0], bf16(table[0, 0, [3, 99]]))


# ---------------------------------------------------------------------- data movement
def test_data_movement_matches_numpy(ttnn, rng):
    dev = open_mesh(ttnn, 1, 2)
    x = rng.standard_normal((1, 3, 40, 64)).astype(np.float32)
    t = upload(ttnn, dev, x)
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.reshape(t, (1, 1, 120, 64)))[0, 0], x.reshape(1, 1, 120, 64))
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.permute(t, (0, 2, 1, 3)))[0, 1], x.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.slice(t, [0, 1, 5, 0], [1, 3, 9, 64]))[0, 0], x[:, 1:3, 5:9])
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.concat([t, t], 3))[0, 0], np.concatenate([x, x], 3))
    sharded = ttnn.to_memory_config(t, ttnn.create_sharded_memory_config(
        (3 * 64, 32), ttnn.num_cores_to_corerangeset(2, ttnn.CoreCoord(8, 8), True), ttnn.ShardStrategy.WIDTH,
        ttnn.ShardOrientation.ROW_MAJOR, use_height_and_width_as_shard_shape=True))
    assert sharded.memory_config().memory_layout == ttnn.TensorMemoryLayout.WIDTH_SHARDED
    back = ttnn.sharded_to_interleaved(sharded, ttnn.L1_MEMORY_CONFIG)
    np.testing.assert_array_equal(per_chip(ttnn, back)[0, 0], x)
    with pytest.raises(RuntimeError, match="must be sharded"):
        ttnn.sharded_to_interleaved(back, ttnn.DRAM_MEMORY_CONFIG)
