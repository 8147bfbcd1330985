"""Two command queues on emulated chips, as tt-metal's "Multiple CQs" orders them: an op on a queue
the mesh was not opened with is fatal; ops on two queues that touch one buffer (one writing) must be
ordered by ``record_event`` / ``wait_for_event`` or a host sync, else ``QueueRaceError``; a program
on queue 1 needs queue 0's sub-device handed over; the ttnn backend's KV page uploads and readbacks
run on queue 1, its programs on queue 0, and the steps around them stay exact."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh.ttnn_emu.testing import fresh_ttnn, per_chip, upload


@pytest.fixture
def ttnn():
    return fresh_ttnn()


def _mesh(ttnn, queues: int):
    ttnn.set_fabric_config(ttnn.FabricConfig.FABRIC_1D)
    return ttnn.open_mesh_device(ttnn.MeshShape(1, 2), num_command_queues=queues)


def _ones(ttnn, dev, cq=0):
    with ttnn.command_queue(cq):
        return upload(ttnn, dev, np.ones((1, 1, 32, 32), np.float32))


def test_a_queue_the_mesh_was_not_opened_with_is_fatal(ttnn):
    dev = _mesh(ttnn, 1)
    x = _ones(ttnn, dev)
    with pytest.raises(RuntimeError, match="command queue 1 does not exist"):
        ttnn.add(x, x, queue_id=1)
    with pytest.raises(RuntimeError, match="command queue 1 does not exist"):
        ttnn.record_event(dev, ttnn.QueueId(1))


def test_a_readback_on_the_second_queue_races_the_op_that_made_it_unless_an_event_orders_them(ttnn):
    dev = _mesh(ttnn, 2)
    y = ttnn.add(_ones(ttnn, dev), 1.0)                      # queue 0 writes y
    with pytest.raises(ttnn.QueueRaceError, match="from_device on command queue 1 reads a buffer that add on command queue 0 writes"):
        ttnn.get_device_tensors(y)[0].cpu(cq_id=ttnn.QueueId(1))
    ttnn.wait_for_event(ttnn.QueueId(1), ttnn.record_event(dev, ttnn.QueueId(0)))
    assert np.all(ttnn.get_device_tensors(y)[0].cpu(cq_id=ttnn.QueueId(1)).to_numpy() == 2.0)


def test_an_upload_on_the_second_queue_is_read_on_the_first_only_after_an_event(ttnn):
    dev = _mesh(ttnn, 2)
    x = _ones(ttnn, dev, cq=1)                               # queue 1 uploads x
    with pytest.raises(ttnn.QueueRaceError, match="add on command queue 0 reads a buffer that to_device on command queue 1 writes"):
        ttnn.add(x, x)
    ttnn.wait_for_event(0, ttnn.record_event(dev, 1))
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.add(x, x)), np.full((1, 2, 1, 1, 32, 32), 2.0))


def test_a_write_racing_a_read_on_the_other_queue(ttnn):
    dev = _mesh(ttnn, 2)
    x = _ones(ttnn, dev)
    ttnn.synchronize_device(dev)                             # the upload is done
    y = ttnn.typecast(x, ttnn.bfloat16)                      # queue 0 reads x
    with pytest.raises(ttnn.QueueRaceError, match="copy_host_to_device_tensor on command queue 1 writes a buffer that typecast"):
        ttnn.copy_host_to_device_tensor(ttnn.Tensor(np.zeros((1, 1, 32, 32), np.float32), ttnn.float32, None,
                                                    ttnn.TILE_LAYOUT), x, cq_id=1)
    del y


def test_a_program_on_the_second_queue_needs_the_sub_device_handed_over(ttnn):
    dev = _mesh(ttnn, 2)
    y = ttnn.add(_ones(ttnn, dev), 1.0)
    with pytest.raises(RuntimeError, match="Sub device id 0 currently in use by cq 0. Can't enqueue program from cq 1"):
        ttnn.multiply(y, 2.0, queue_id=1)
    ttnn.wait_for_event(1, ttnn.record_event(dev, 0))        # queue 1 after queue 0's programs: it may run its own
    z = ttnn.multiply(y, 2.0, queue_id=1)
    with pytest.raises(RuntimeError, match="in use by cq 1"):
        ttnn.add(z, z)
    ttnn.synchronize_device(dev)                             # a host sync hands it back too
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.add(z, z)), np.full((1, 2, 1, 1, 32, 32), 8.0))


def test_kv_page_transfers_run_on_the_second_queue_exactly():
    pytest.importorskip("torch", reason="the weights are prepared with the simulator's helpers")
    from ttdist.mesh import parse_mesh, ttnn_emu
    from ttdist.mesh.precision import DType
    from ttdist.model.config import LlamaConfig
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.weights import expected_shapes, prepare

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in expected_shapes(config).items()}
    with ttnn_emu.installed():
        runner = MeshModelRunner(prepare(config, hf, parse_mesh("1x2"), DType.bfloat16), backend="ttnn", page_size=32,
                                 num_pages=8, max_batch=2, trace_decode=False)
        queues = runner.backend.device.queues
        assert (runner.backend.mesh.command_queues, queues.count) == (2, 2)
        prompt = [int(t) for t in rng.integers(3, 512, 69)]
        runner.prefill_logits(prompt, 0, [0, 1, 2])
        before = list(queues.given)
        runner.write_kv_pages([5, 6], runner.read_kv_pages([0, 1]))
        caches = 2 * config.num_hidden_layers                               # K and V of each layer
        # per cache: 2 + 2 pages read back from each of the 2 chips, then 2 pages and their page tables uploaded
        assert queues.given[1] - before[1] == caches * ((2 + 2) * 2 + 2 * 2)
        assert queues.owner[0] == 0                                          # every program on queue 0
        got = runner.prefill_logits(prompt[64:], 64, [5, 6, 7])              # queue 0 again: ordered by the events
        assert np.array_equal(got, runner.prefill_logits(prompt[64:], 64, [0, 1, 2]))
