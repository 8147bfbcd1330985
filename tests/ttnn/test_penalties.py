"""Penalties on real ttnn (mock chips): penalize, the draw with min_p and the in-place count of
the sampled ids are accepted with the shapes the emulator gives; only the B ids come back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.mesh import Replicate, SamplingBatch, Shard  # noqa: E402
from ttdist.mesh import penalties as pen  # noqa: E402
from ttdist.mesh.sampling import device_params  # noqa: E402

R = Replicate()


def test_penalized_sampling_and_counting_are_accepted(backend, spec):
    from ttdist.mesh.ttnn.penalties import PenaltyHost

    assert isinstance(backend, PenaltyHost)
    batch, axis = 8, 1 if spec.rows == 1 else 0
    n = spec.shape[axis]
    width = 512 * n
    sharded = (R, Shard(1)) if axis == 1 else (Shard(1), R)
    logits = backend.from_host(np.zeros((batch, width), np.float32), sharded, name="logits")
    rows = {k: np.zeros((batch, width), np.float32) for k in pen.STATE}
    state = pen.PenaltyState(**{k: backend.input_tensor(v, sharded, name=k) for k, v in rows.items()},
                             params=backend.input_tensor(pen.neutral_params(batch), (R, R), name="penalty_params"))
    params = backend.input_tensor(device_params(SamplingBatch.greedy(batch)), (R, R), name="sampling")
    penalized = backend.penalize(logits, state)
    assert penalized.shape == (batch, 512) and penalized.placements == logits.placements
    for step in range(2):  # the second step finds every constant made: it uploads nothing
        backend.transfers.clear()
        ids = backend.sample(backend.penalize(logits, state), width - 24, params, axis, state.params)
        backend.count_tokens(state, ids, axis)
        out = backend.read_ids(ids)
        assert out.shape == (batch,) and backend.transfers.readbacks == 1
    assert backend.transfers.uploads == 0
