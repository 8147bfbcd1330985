"""Per-device weights upload chip by chip: ``from_host_per_device`` makes each chip's host buffer
from that chip's own piece (``ttnn.from_host_shards``), never a merged whole-tensor array.

Mocked chips read back zeros, so every check is on the host side: the per-device host tensors
handed to ``to(device)``, and the host memory numpy allocates while a large weight is placed.
"""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

# ``ttnn._ttnn``, not ``ttnn``: without the wheel, tests/ttnn itself imports as a namespace package.
pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

import ttnn  # noqa: E402

from ttdist.mesh import MeshError, Replicate, Shard  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model.weights.layout_arrays import to_devices  # noqa: E402

R = Replicate()
BF16 = np.dtype(ml_dtypes.bfloat16)
PLACEMENTS = {
    "shard_shard": (Shard(0), Shard(1)),
    "replicate_shard": (R, Shard(1)),
    "shard_replicate": (Shard(0), R),
    "replicate": (R, R),
}


@pytest.fixture()
def uploads(monkeypatch):
    """Every ``ttnn.from_host_shards`` call: the per-chip host tensors given and the host tensor made."""
    made = []
    real = ttnn.from_host_shards

    def spy(tensors, mesh_shape):
        host = real(tensors, mesh_shape)
        made.append((list(tensors), host))
        return host

    monkeypatch.setattr(ttnn, "from_host_shards", spy)
    return made


def _piece(array: np.ndarray, placements, spec, r: int, c: int) -> np.ndarray:
    """Chip (r, c)'s piece of a global array, cut by hand (axis 0, then axis 1)."""
    for axis, coord in ((0, r), (1, c)):
        p, n = placements[axis], spec.shape[axis]
        if isinstance(p, Shard) and n > 1:
            size = array.shape[p.dim] // n
            array = np.take(array, range(coord * size, (coord + 1) * size), axis=p.dim)
    return array


@pytest.mark.parametrize("case", list(PLACEMENTS))
def test_each_chip_host_buffer_holds_exactly_its_own_piece(backend, spec, uploads, case):
    placements = PLACEMENTS[case]
    rng = np.random.default_rng(0)
    full = rng.integers(-128, 128, size=(64 * spec.rows, 64 * spec.cols)).astype(BF16)  # exact in bf16
    stored = to_devices(full, placements, spec.shape)  # [R', C', *local]: what the weight cache holds
    t = backend.from_host_per_device(stored, placements, dtype=DType.bfloat16, name=f"w_{case}")
    assert uploads == [] and t.value is None  # nothing placed before the first consumer
    backend.to_host(t)

    (given, host), = uploads
    assert host.storage_type() == ttnn.StorageType.HOST
    per_device = ttnn.get_device_tensors(host)
    assert len(per_device) == spec.num_chips
    for i, shard in enumerate(per_device):
        r, c = divmod(i, spec.cols)
        expected = _piece(full, placements, spec, r, c).astype(np.float32)
        assert tuple(shard.shape) == (1, 1) + t.shape == (1, 1) + expected.shape
        got = np.asarray(shard.to_list(), np.float32).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=f"chip {(r, c)}")
    # a piece shared along a replicated axis is one host buffer, handed to each of its chips
    assert len({id(x) for x in given}) == stored.shape[0] * stored.shape[1]
    assert tuple(t.value.shape) == (1, 1) + t.shape and t.value.storage_type() == ttnn.StorageType.DEVICE


@pytest.mark.parametrize("case", ["shard_shard", "replicate"])
def test_a_large_weight_is_placed_without_a_merged_copy(backend, spec, case):
    """numpy's peak while placing a 1024x512 bf16-per-chip weight (as bfloat8_b) stays near one
    piece widened to float32: no float32 array of every chip's piece is ever made. (ttnn's
    own host buffers, one per distinct piece in the target format, are C++ and not counted.)"""
    placements = PLACEMENTS[case]
    local = (1024, 512)
    shape = tuple(n if isinstance(p, Shard) else 1 for p, n in zip(placements, spec.shape)) + local
    stored = np.ones(shape, BF16)
    piece_f32 = int(np.prod(local)) * 4
    merged_f32 = spec.num_chips * piece_f32
    tracemalloc.start()
    try:
        t = backend.from_host_per_device(stored, placements, dtype=DType.bfloat8_b, name=f"big_{case}")
        backend._weight(t)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert t.value is not None and tuple(t.value.shape) == (1, 1) + local
    assert peak < 1.25 * piece_f32 and peak < merged_f32, f"numpy peak {peak} B: piece {piece_f32} B, merged {merged_f32} B"


def test_bad_per_device_shapes_are_mesh_errors(backend, spec):
    n = spec.cols
    with pytest.raises(MeshError, match=r"per-device arrays are \[R, C, \*local\]"):
        backend.from_host_per_device(np.ones((32, 32), np.float32), (R, R), name="flat")
    with pytest.raises(MeshError, match=f"mesh dim 1 has {n + 1} entries for {n} devices"):
        backend.from_host_per_device(np.ones((1, n + 1, 32, 32), np.float32), (R, Shard(1)), name="extra")
    differ = np.arange(n, dtype=np.float32).reshape(1, n, 1, 1) * np.ones((1, n, 32, 32), np.float32)
    with pytest.raises(MeshError, match="declared Replicate on axis 1 but the devices differ"):
        backend.from_host_per_device(differ, (R, R), name="differ")


def test_equal_pieces_declared_replicated_share_one_host_buffer(backend, spec, uploads):
    n = spec.cols
    pieces = np.broadcast_to(np.arange(32 * 32, dtype=np.float32).reshape(32, 32), (1, n, 32, 32))
    t = backend.from_host_per_device(pieces, (R, R), dtype=DType.float32, name="same")
    backend.to_host(t)
    (given, host), = uploads
    assert len(given) == spec.num_chips and len({id(x) for x in given}) == 1
    for shard in ttnn.get_device_tensors(host):
        np.testing.assert_array_equal(np.asarray(shard.to_list(), np.float32).reshape(32, 32), pieces[0, 0])
