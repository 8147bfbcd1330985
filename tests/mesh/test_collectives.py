"""Collectives on the simulator against a per-device reference built with Python loops."""

import math

import numpy as np
import pytest
import torch

from ttdist.mesh import DType, MeshError, MeshSpec, Partial, PartialTensorError, Replicate, Shard, Topology, parse_mesh
from ttdist.mesh.accounting import all_gather_bytes, reduce_scatter_bytes
from ttdist.mesh.sim.backend import SimBackend

MESHES = ["1x2", "1x8", "2x4", "8x4"]
TOPOLOGIES = [Topology.LINE, Topology.RING]


def per_device(be, t):
    """What chip (r, c) holds, as a nested list of numpy arrays."""
    data = be.device_data(t)
    return [[data[r, c].numpy() for c in range(be.spec.cols)] for r in range(be.spec.rows)]


def random_mesh_tensor(be, local_shape, placements, seed=0):
    """A tensor whose every chip holds different random data (sharded on both axes)."""
    rng = np.random.default_rng(seed)
    arr = rng.standard_normal((be.spec.rows, be.spec.cols, *local_shape)).astype(np.float32)
    return be.from_host_per_device(arr, placements, dtype=DType.float32), arr


def axes_of(spec):
    return [a for a in (0, 1) if spec.shape[a] > 1]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("dim", [0, 1])
def test_all_gather_matches_concat(mesh, topology, dim):
    be = SimBackend(parse_mesh(mesh))
    for axis in axes_of(be.spec):
        t, arr = random_mesh_tensor(be, (4, 8), (Shard(dim), Shard(dim)) if axis == 0 else (Shard(0), Shard(dim)))
        out = per_device(be, be.all_gather(t, dim, axis, topology=topology))
        for r in range(be.spec.rows):
            for c in range(be.spec.cols):
                peers = [arr[k, c] for k in range(be.spec.rows)] if axis == 0 else [arr[r, k] for k in range(be.spec.cols)]
                np.testing.assert_array_equal(out[r][c], np.concatenate(peers, axis=dim))


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("dim", [0, 1])
def test_reduce_scatter_matches_sum_then_split(mesh, topology, dim):
    be = SimBackend(parse_mesh(mesh))
    for axis in axes_of(be.spec):
        n = be.spec.shape[axis]
        placements = [Shard(0), Shard(0)]
        placements[axis] = Partial()
        t, arr = random_mesh_tensor(be, (2 * n, 3 * n), tuple(placements))
        out = per_device(be, be.reduce_scatter(t, dim, axis, topology=topology))
        for r in range(be.spec.rows):
            for c in range(be.spec.cols):
                peers = [arr[k, c] for k in range(n)] if axis == 0 else [arr[r, k] for k in range(n)]
                total = np.sum(peers, axis=0)
                me = r if axis == 0 else c
                expect = np.split(total, n, axis=dim)[me]
                np.testing.assert_allclose(out[r][c], expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_all_reduce_matches_sum(mesh, topology):
    be = SimBackend(parse_mesh(mesh))
    for axis in axes_of(be.spec):
        n = be.spec.shape[axis]
        placements = [Shard(1), Shard(1)]
        placements[axis] = Partial()
        t, arr = random_mesh_tensor(be, (3, 5), tuple(placements))
        out = per_device(be, be.all_reduce(t, axis, topology=topology))
        for r in range(be.spec.rows):
            for c in range(be.spec.cols):
                peers = [arr[k, c] for k in range(n)] if axis == 0 else [arr[r, k] for k in range(n)]
                np.testing.assert_allclose(out[r][c], np.sum(peers, axis=0), rtol=1e-6, atol=1e-6)


def test_replicated_inputs_follow_ttnn_semantics():
    """ttnn treats every device's copy as an addend / a piece, replicated or not."""
    be = SimBackend(parse_mesh("1x4"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    t = be.from_host(x, (Replicate(), Replicate()), dtype=DType.float32)
    np.testing.assert_array_equal(be.to_host(be.all_reduce(t, 1)), 4 * x)
    np.testing.assert_array_equal(be.to_host(be.all_gather(t, 0, 1)), np.concatenate([x] * 4))
    rs = be.reduce_scatter(t, 1, 1)
    assert rs.placements[1] == Shard(1)
    np.testing.assert_array_equal(be.to_host(rs), 4 * x)


def test_cluster_axis_none_means_the_whole_1d_mesh():
    be = SimBackend(parse_mesh("1x8"))
    t, arr = random_mesh_tensor(be, (2, 3), (Replicate(), Shard(1)))
    np.testing.assert_array_equal(be.to_host(be.all_gather(t, 1)), np.concatenate(list(arr[0]), axis=1))
    with pytest.raises(MeshError, match="cluster_axis is required"):
        SimBackend(parse_mesh("2x4")).all_gather(random_mesh_tensor(SimBackend(parse_mesh("2x4")), (2, 2), (Shard(0), Shard(0)))[0], 0)


@pytest.mark.parametrize("mesh", MESHES)
def test_uneven_reduce_scatter_is_rejected(mesh):
    be = SimBackend(parse_mesh(mesh))
    axis = axes_of(be.spec)[-1]
    n = be.spec.shape[axis]
    t, _ = random_mesh_tensor(be, (3, n + 1), (Shard(0), Shard(0)))
    with pytest.raises(MeshError, match="not divisible"):
        be.reduce_scatter(t, 1, axis)


@pytest.mark.parametrize("mesh", MESHES)
def test_uneven_shard_from_host_is_rejected(mesh):
    be = SimBackend(parse_mesh(mesh))
    n = be.spec.cols
    with pytest.raises(MeshError, match="does not split evenly"):
        be.from_host(np.zeros((2, n + 1), np.float32), (Replicate(), Shard(1)), name="odd")


def test_partial_into_nonlinear_op_raises():
    be = SimBackend(parse_mesh("2x4"))
    x = be.from_host(np.ones((2, 8), np.float32), (Replicate(), Shard(1)), dtype=DType.float32)
    w = be.from_host(np.ones((8, 4), np.float32), (Shard(1), Shard(0)), dtype=DType.float32)
    partial = be.linear(x, w)
    assert partial.placements == (Shard(1), Partial())
    norm_w = be.from_host(np.ones(2, np.float32), (Shard(0), Replicate()))
    for op in (
        lambda: be.silu_mul(partial, partial),
        lambda: be.rms_norm(partial, norm_w, eps=1e-5, width=4),
        lambda: be.all_gather(partial, 0, 1),
        lambda: be.rms_norm_pre_all_gather(partial),
    ):
        with pytest.raises(PartialTensorError, match="partial sums on cluster_axis 1"):
            op()
    reduced = be.all_reduce(partial, 1)
    np.testing.assert_allclose(be.to_host(reduced), np.full((2, 4), 8.0))


def test_matmul_rejects_placements_that_do_not_compose():
    be = SimBackend(parse_mesh("1x2"))
    x = be.from_host(np.ones((2, 8), np.float32), (Replicate(), Shard(1)))  # local [2, 4]
    w = be.from_host(np.ones((4, 4), np.float32), (Replicate(), Shard(1)))  # local [4, 2]: K is not split
    with pytest.raises(MeshError, match="column parallel"):
        be.linear(x, w)


@pytest.mark.parametrize("mesh", ["1x8", "8x4", "t3k"])
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_bytes_follow_the_guide_formulas(mesh, topology):
    spec = parse_mesh(mesh)
    be = SimBackend(spec, activation_dtype=DType.bfloat16)
    axis = 1
    d = spec.shape[axis]
    x = be.from_host(np.zeros((32, 64 * d), np.float32), (Replicate(), Shard(1)), name="x")
    be.all_gather(x, 1, axis, topology=topology)
    full = 32 * 64 * d * 2  # the gathered tensor in bf16
    expect_ag = full / d * (d - 1) * d if topology is Topology.LINE else full * d * math.log2(d)
    p = be.from_host(np.zeros((32, 64 * d), np.float32), (Replicate(), Replicate()), name="p")
    be.reduce_scatter(p, 1, axis, topology=topology)
    expect_rs = full * (1 - 1 / d)
    recs = be.ccl.records
    assert [r.op for r in recs] == ["all_gather", "reduce_scatter"]
    assert recs[0].bytes_moved == pytest.approx(expect_ag)
    assert recs[1].bytes_moved == pytest.approx(expect_rs)
    assert be.ccl.bytes_per_axis() == {1: pytest.approx(expect_ag + expect_rs)}
    assert all_gather_bytes(full, 1, topology) == 0 and reduce_scatter_bytes(full, 1, topology) == 0


def test_dram_overflow_names_chip_tensor_and_sizes():
    spec = MeshSpec("small", 1, 2, dram_bytes_per_chip=1 << 20)
    be = SimBackend(spec)
    keep = be.from_host(np.zeros((256, 1024), np.float32), (Replicate(), Shard(1)), dtype=DType.bfloat16, name="first")
    assert be.dram.used_per_chip() == 256 * 512 * 2
    with pytest.raises(MemoryError, match=r"chip \(0, 0\).*'too_big' needs 1,048,576 bytes.*262,144 of 1,048,576"):
        be.from_host(np.zeros((512, 2048), np.float32), (Replicate(), Shard(1)), dtype=DType.bfloat16, name="too_big")
    del keep
    assert be.dram.used_per_chip() == 0


def test_dram_counts_tile_padding_and_block_float_exponents():
    be = SimBackend(parse_mesh("1x1"))
    be.from_host(np.zeros((1, 16), np.float32), (Replicate(), Replicate()), dtype=DType.bfloat16, name="tiny")
    assert be.dram.by_name["tiny"] == 0  # freed: the tensor was not kept
    t = be.from_host(np.zeros((64, 64), np.float32), (Replicate(), Replicate()), dtype=DType.bfloat8_b, name="w")
    assert be.dram.by_name["w"] == 64 * 64 * (1 + 1 / 16)
    del t


def test_named_systems():
    assert parse_mesh("n150").shape == (1, 1)
    assert parse_mesh("n300").shape == (1, 2)
    assert parse_mesh("t3k").shape == (1, 8) and parse_mesh("t3k").topology[1] is Topology.RING
    tg = parse_mesh("TG")
    assert tg.shape == (8, 4) and tg.links == (4, 3) and tg.dram_bytes_per_chip == 12 * 2**30
    assert parse_mesh("2x4").name == "2x4"
    for bad in ("", "galaxy9", "0x4", "4x"):
        with pytest.raises(ValueError):
            parse_mesh(bad)
