"""Cutting a global array by its placements: one cut for numpy and torch, the pieces each chip holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ttdist.mesh import MeshError, Partial, Replicate, Shard, parse_mesh
from ttdist.mesh.placement import cut, plan_cut
from ttdist.mesh.sim.attention import AttentionHost
from ttdist.mesh.sim.backend import SimBackend
from ttdist.mesh.sim.collectives import CollectiveHost
from ttdist.mesh.sim.sampling import SamplingHost

R = Replicate()
CASES = [(R, R), (R, Shard(1)), (Shard(0), R), (Shard(0), Shard(1)), (Shard(1), Shard(1)), (Shard(-1), Shard(0))]


@pytest.mark.parametrize("placements", CASES)
def test_cut_pieces_are_what_each_chip_holds(placements):
    spec = parse_mesh("2x4")
    array = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    pieces = cut(array, placements, spec.shape)
    plan = plan_cut(array.shape, placements, spec.shape)
    assert pieces.shape[2:] == plan.local_shape
    for axis, dim in enumerate(plan.shard_dims):  # an axis that cuts nothing keeps one entry
        assert pieces.shape[axis] == (1 if dim is None else spec.shape[axis])
    for r, c in spec.chips():
        expected = array  # axis 0 cuts first, then axis 1 cuts chip row r's piece
        for axis, coord in ((0, r), (1, c)):
            if plan.shard_dims[axis] is not None:
                expected = np.split(expected, spec.shape[axis], axis=plan.shard_dims[axis])[coord]
        np.testing.assert_array_equal(pieces[r % pieces.shape[0], c % pieces.shape[1]], expected)


@pytest.mark.parametrize("placements", CASES)
def test_cut_of_a_torch_tensor_equals_the_numpy_cut_and_the_simulators_chips(placements):
    spec = parse_mesh("2x4")
    array = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    pieces = cut(array, placements, spec.shape)
    np.testing.assert_array_equal(cut(torch.from_numpy(array), placements, spec.shape).numpy(), pieces)
    be = SimBackend(spec)
    t = be.from_host(array, placements, name="x")
    np.testing.assert_array_equal(be.device_data(t).numpy(), np.broadcast_to(pieces, (*spec.shape, *pieces.shape[2:])))


def test_an_uneven_or_partial_cut_is_rejected():
    shape = parse_mesh("2x4").shape
    with pytest.raises(MeshError, match="dim 1 of size 6 does not split evenly over 4 devices on axis 1"):
        plan_cut((8, 6), (R, Shard(1)), shape, "odd")
    with pytest.raises(MeshError, match="cannot be placed as Partial"):
        cut(np.zeros((8, 8)), (Partial(), R), shape)
    zeros = plan_cut((8, 8), (Partial(), Shard(0)), shape, allow_partial=True)  # a zero addend on every chip
    assert zeros.local_shape == (2, 8) and zeros.shard_dims == (None, 0)


def test_the_sim_backend_provides_what_its_op_mixins_use():
    be = SimBackend(parse_mesh("1x2"))
    for host in (AttentionHost, CollectiveHost, SamplingHost):
        assert isinstance(be, host), host.__name__
