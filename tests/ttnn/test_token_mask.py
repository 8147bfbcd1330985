"""A grammar-masked draw through real ttnn on the mock mesh: the mask words upload tiled, each
chip's integer shifts, concatenation and masking are accepted, and still only the B ids leave."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.mesh import Replicate, SamplingBatch, Shard, token_mask  # noqa: E402

R = Replicate()


@pytest.mark.parametrize("width", [512, 1024])
def test_masked_sampling_is_accepted_and_reads_back_only_the_ids(backend, spec, width):
    from ttdist.mesh.sampling import device_params

    batch, axis = 5, 1 if spec.rows == 1 else 0
    n = spec.shape[axis]
    vocab_sharded = (R, Shard(1)) if axis == 1 else (Shard(1), R)
    logits = backend.from_host(np.zeros((batch, width * n), np.float32), vocab_sharded, name="logits")
    params = SamplingBatch(np.array([0.0, 0.7, 0.7, 1.0, 0.0]), np.array([0, 5, 32, 0, 0]), np.array([0, 0.9, 0, 0, 0]),
                           np.array([-1, 7, 7, 3, -1]), np.arange(batch))
    inputs = backend.input_tensor(device_params(params), (R, R), name="sampling")
    words = backend.input_tensor(token_mask.all_allowed(batch, width, n), vocab_sharded, name=token_mask.INPUT_NAME)
    assert words.shape == (batch, width // 32)
    backend.write_input(words, token_mask.all_allowed(batch, width, n))   # rewritten in place, as each step does
    backend.transfers.clear()
    ids = backend.read_ids(backend.sample(logits, width * n - 24, inputs, axis, allowed=words))
    assert ids.shape == (batch,) and ids.min() >= 0 and ids.max() < width * n
    assert (backend.transfers.readbacks, backend.transfers.readback_bytes) == (1, batch * 4)
