"""Property tests: all_reduce == sum over devices, all_gather after sharding == identity."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ttdist.mesh import DType, Partial, Replicate, Shard, parse_mesh
from ttdist.mesh.sim.backend import SimBackend

shapes = st.sampled_from(["1x2", "1x8", "2x4", "8x4", "4x1", "3x2"])


@settings(max_examples=40, deadline=None)
@given(mesh=shapes, rows=st.integers(1, 5), cols=st.integers(1, 6), axis=st.integers(0, 1), seed=st.integers(0, 10_000))
def test_all_reduce_is_the_sum(mesh, rows, cols, axis, seed):
    be = SimBackend(parse_mesh(mesh))
    rng = np.random.default_rng(seed)
    arr = rng.standard_normal((be.spec.rows, be.spec.cols, rows, cols)).astype(np.float32)
    placements = [Shard(0), Shard(0)]
    placements[axis] = Partial()
    t = be.from_host_per_device(arr, tuple(placements), dtype=DType.float32)
    out = be.device_data(be.all_reduce(t, axis)).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(arr.sum(axis=axis, keepdims=True), arr.shape), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(mesh=shapes, mult=st.integers(1, 3), other=st.integers(1, 4), dim=st.integers(0, 1), seed=st.integers(0, 10_000))
def test_all_gather_of_a_shard_is_identity(mesh, mult, other, dim, seed):
    spec = parse_mesh(mesh)
    be = SimBackend(spec)
    rng = np.random.default_rng(seed)
    shape = [other, other]
    shape[dim] = mult * spec.rows * spec.cols
    x = rng.standard_normal(shape).astype(np.float32)
    t = be.from_host(x, (Shard(dim), Shard(dim)), dtype=DType.float32)
    np.testing.assert_array_equal(be.to_host(t), x)
    g = be.all_gather(be.all_gather(t, dim, 1), dim, 0)
    assert g.placements == (Replicate(), Replicate())
    for r in range(spec.rows):
        for c in range(spec.cols):
            np.testing.assert_array_equal(be.device_data(g)[r, c].numpy(), x)
