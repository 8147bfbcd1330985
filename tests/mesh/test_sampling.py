"""Sampling on the simulated mesh equals the numpy reference of the same algorithm, draw for draw."""

import numpy as np
import pytest

from ttdist.mesh import REPLICATED, SamplingBatch, Shard, parse_mesh
from ttdist.mesh.placement import with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.sampling import MASK, candidates, device_params, draw, local_k
from ttdist.mesh.sim.backend import SimBackend

PARAMS = SamplingBatch(
    temperature=np.array([0.0, 0.7, 1.0, 1.5, 0.9, 1.0]),
    top_k=np.array([0, 5, 0, 40, 1, 3]),
    top_p=np.array([1.0, 0.9, 0.5, 1.0, 1.0, 0.8]),
    seed=np.array([-1, 1, 2, 3, 4, 5]),
    step=np.zeros(6, dtype=np.int64),
)


def _sample(be, logits, vocab, params):
    axis = 1 if be.spec.rows == 1 else 0
    width = logits.shape[-1]
    placed = be.from_host(logits, with_axis(REPLICATED, axis, Shard(1)), dtype=DType.float32, name="logits")
    be.transfers.clear()
    ids = be.read_ids(be.sample(placed, vocab, be.input_tensor(params, REPLICATED), axis))
    assert (be.transfers.readbacks, be.transfers.readback_bytes) == (1, len(params) * 4)  # only the B ids leave
    return ids, be.spec.shape[axis]


@pytest.mark.parametrize("mesh", ["1x1", "1x2", "1x8", "8x4"])
def test_sim_draws_equal_the_reference(mesh):
    be = SimBackend(parse_mesh(mesh))
    n = be.spec.shape[1 if be.spec.rows == 1 else 0]
    width, vocab = 64 * n, 64 * n - 5
    rng = np.random.default_rng(0)
    for step in range(12):
        logits = (rng.standard_normal((6, width)) * 3).astype(np.float32)
        params = device_params(SamplingBatch(PARAMS.temperature, PARAMS.top_k, PARAMS.top_p, PARAMS.seed, PARAMS.seed * 0 + step))
        got, shards = _sample(be, logits, vocab, params)
        values, ids = candidates(logits, vocab, shards)
        np.testing.assert_array_equal(got, draw(values, ids, params))
        real = logits[:, :vocab]
        assert got[0] == real[0].argmax() and got[4] == real[4].argmax()  # greedy, and top-k 1
        assert got[5] in np.argsort(-real[5])[:3] and got.max() < vocab  # top-k 3; padding never drawn


def test_seeded_draws_depend_on_seed_and_step_not_on_the_slot():
    be = SimBackend(parse_mesh("1x2"))
    logits = np.tile((np.random.default_rng(1).standard_normal(128) * 2).astype(np.float32), (4, 1))
    batch = SamplingBatch(np.full(4, 1.0), np.zeros(4, np.int64), np.ones(4), np.array([9, 9, 9, 10]), np.array([0, 0, 1, 0]))
    ids, _ = _sample(be, logits, 128, device_params(batch))
    again, _ = _sample(be, logits[:2], 128, device_params(SamplingBatch(*(a[[1, 0]] for a in (
        batch.temperature, batch.top_k, batch.top_p, batch.seed, batch.step)))))
    assert ids[0] == ids[1] == again[0] == again[1]
    draws = {int(_sample(be, logits[:1], 128, device_params(SamplingBatch(
        np.ones(1), np.zeros(1, np.int64), np.ones(1), np.array([s]), np.zeros(1, np.int64))))[0][0]) for s in range(16)}
    assert len(draws) > 1


def test_device_params_make_greedy_and_off_settings_explicit():
    p = device_params(PARAMS)
    assert p[0].tolist() == [1.0, 1.0, 2.0, 0.0]  # greedy: k 1, T 1, p off, u 0
    assert p[2, 1] == 32 and p[3, 1] == 32  # top-k off, or wider than the candidates: all 32
    assert np.all((p[1:, 3] >= 0) & (p[1:, 3] < 1))
    np.testing.assert_array_equal(p, device_params(PARAMS))  # seeded: the same u every time
    assert local_k(512, 1024, 1024) == 32 and local_k(512, 1024, 1019) == 37 and local_k(16, 16, 16) == 16
    values, ids = candidates(np.zeros((1, 64), np.float32), 60, 2)  # padded ids are masked
    assert values.shape == (1, 64) and np.all(values[ids >= 60] == MASK) and np.all(values[ids < 60] == 0)
