"""Traces on emulated chips, as on hardware: captured ops run only on replay, read their input
buffers as they are then, keep their output tensors, and stale inputs stay stale."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh.ttnn_emu import settings
from ttdist.mesh.ttnn_emu.testing import fresh_ttnn, open_mesh, per_chip, upload


@pytest.fixture
def ttnn():
    return fresh_ttnn()


def _host(ttnn, dev, array):
    mapper = ttnn.create_mesh_mapper(dev, ttnn.MeshMapperConfig([ttnn.PlacementReplicate(), ttnn.PlacementShard(3)]))
    return ttnn.Tensor(np.ascontiguousarray(array, np.float32), ttnn.float32, None, ttnn.TILE_LAYOUT, mesh_mapper=mapper)


def _step(ttnn, x):
    return ttnn.all_gather(ttnn.multiply(ttnn.add(x, 1.0), 2.0), 3, cluster_axis=1)


def test_replay_reads_inputs_rewritten_in_place(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    x = upload(ttnn, dev, np.zeros((1, 1, 32, 64), np.float32), dims=(None, 3))
    _step(ttnn, x)  # the eager compile pass
    tid = ttnn.begin_trace_capture(dev, cq_id=0)
    out = _step(ttnn, x)
    ttnn.end_trace_capture(dev, tid, cq_id=0)
    assert np.all(per_chip(ttnn, out) == settings.float_poison())  # captured, not run: garbage until replayed
    for value in (1.0, 5.0):
        ttnn.copy_host_to_device_tensor(_host(ttnn, dev, np.full((1, 1, 32, 64), value)), x)
        ttnn.execute_trace(dev, tid, cq_id=0, blocking=False)
        np.testing.assert_array_equal(per_chip(ttnn, out), np.full((1, 2, 1, 1, 32, 64), (value + 1) * 2))
    ttnn.release_trace(dev, tid)


def test_an_input_made_anew_is_stale_in_a_replay(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    x = upload(ttnn, dev, np.full((1, 1, 32, 64), 3.0, np.float32), dims=(None, 3))
    tid = ttnn.begin_trace_capture(dev)
    out = _step(ttnn, x)
    ttnn.end_trace_capture(dev, tid)
    ttnn.execute_trace(dev, tid)
    x = upload(ttnn, dev, np.full((1, 1, 32, 64), 9.0, np.float32), dims=(None, 3))  # a new tensor, not a rewrite
    ttnn.execute_trace(dev, tid)
    assert np.all(per_chip(ttnn, out) == 8.0)  # still (3 + 1) * 2: the trace reads the old buffer


def test_in_place_cache_updates_happen_on_replay_only(ttnn):
    dev = open_mesh(ttnn, 1, 1)
    cache = ttnn.zeros((2, 1, 32, 32), dtype=ttnn.bfloat16, layout=ttnn.TILE_LAYOUT, device=dev)
    rows = ttnn.experimental.nlp_create_qkv_heads_decode(upload(ttnn, dev, np.ones((1, 1, 1, 96), np.float32), dtype=ttnn.bfloat16),
                                                         num_heads=1, num_kv_heads=1)[1]
    pos = upload(ttnn, dev, np.array([5], np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    table = upload(ttnn, dev, np.array([[1]], np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    tid = ttnn.begin_trace_capture(dev)
    ttnn.experimental.paged_update_cache(cache, rows, update_idxs_tensor=pos, page_table=table)
    ttnn.end_trace_capture(dev, tid)
    assert per_chip(ttnn, cache).sum() == 0
    ttnn.execute_trace(dev, tid)
    got = per_chip(ttnn, cache)[0, 0]
    assert got[1, 0, 5].sum() == 32 and got.sum() == 32


def test_host_transfers_are_refused_during_capture(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    x = upload(ttnn, dev, np.zeros((1, 1, 32, 64), np.float32), dims=(None, 3))
    tid = ttnn.begin_trace_capture(dev)
    with pytest.raises(ttnn.TraceError, match="not allowed while a trace is being captured"):
        upload(ttnn, dev, np.zeros((1, 1, 32, 64), np.float32))
    with pytest.raises(ttnn.TraceError):
        ttnn.copy_host_to_device_tensor(_host(ttnn, dev, np.zeros((1, 1, 32, 64))), x)
    with pytest.raises(ttnn.TraceError):
        x.cpu()
    ttnn.end_trace_capture(dev, tid)


def test_a_replay_reading_a_buffer_freed_outside_the_trace_fails(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    x = upload(ttnn, dev, np.zeros((1, 1, 32, 64), np.float32), dims=(None, 3))
    tid = ttnn.begin_trace_capture(dev)
    y = ttnn.add(x, 1.0)
    z = ttnn.multiply(y, 2.0)
    ttnn.deallocate(y)  # freed inside the trace: its buffer belongs to the trace
    ttnn.end_trace_capture(dev, tid)
    ttnn.execute_trace(dev, tid)
    assert np.all(per_chip(ttnn, z) == 2.0)
    ttnn.deallocate(x)
    with pytest.raises(ttnn.TraceError, match="deallocated outside the trace"):
        ttnn.execute_trace(dev, tid)


def test_capture_needs_a_trace_region(ttnn):
    ttnn.set_fabric_config(ttnn.FabricConfig.FABRIC_1D)
    dev = ttnn.open_mesh_device(ttnn.MeshShape(1, 2))
    with pytest.raises(ttnn.TraceError, match="trace_region_size"):
        ttnn.begin_trace_capture(dev)
