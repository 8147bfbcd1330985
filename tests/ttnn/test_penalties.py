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


@pytest.fixture(scope="module")
def runner(spec, mesh_device):
    from ttdist.mesh.precision import DType
    from ttdist.model.runner import MeshModelRunner
    from tests.support.model_checks import tiny_random_weights

    return MeshModelRunner(tiny_random_weights(spec, DType.bfloat8_b, scale=0.02), backend="ttnn", page_size=32, num_pages=48,
                           max_batch=8, backend_options={"device": mesh_device})


def _serve(runner, count: int, seed: int) -> int:
    import random

    from ttdist.engine.config import EngineConfig
    from ttdist.engine.core import EngineCore
    from ttdist.engine.request import GenerationRequest, SamplingParams

    rng = random.Random(seed)
    core = EngineCore(runner, None, EngineConfig(max_batch=8, prefill_chunk=64))
    for i in range(count):
        prompt = [rng.randrange(1, 512) for _ in range(rng.randrange(1, 100))]
        penalties = rng.choice([{}, {"repetition_penalty": 1.3, "frequency_penalty": 0.5, "logit_bias": {3: 2.0}},
                                {"presence_penalty": 1.0, "min_p": 0.1, "min_tokens": 2, "stop_token_ids": [7]}])
        sampling = SamplingParams(max_tokens=rng.randrange(2, 8), ignore_eos=True, temperature=rng.choice([0.0, 0.8]),
                                  seed=rng.choice([None, 7]), **penalties)
        core.add_request(GenerationRequest(f"p{seed}-{i}", prompt_token_ids=prompt, sampling=sampling))
    finished = 0
    while core.has_work():
        finished += sum(out.finished for out in core.step())
    return finished


def test_penalized_serving_adds_no_programs_after_warm_up(runner, mesh_device):
    _serve(runner, 96, seed=1)
    before = mesh_device.num_program_cache_entries()
    assert _serve(runner, 48, seed=2) == 48
    assert mesh_device.num_program_cache_entries() == before


def test_a_penalized_decode_step_uploads_nothing_for_its_counts(runner):
    from ttdist.engine.runner import DecodeInput, PenaltySpec, SamplingSpec

    be = runner.backend
    history = [[5, 9, 9], [6, 1], [7, 7, 7, 2]]
    tables = [[0, 1], [12], [24, 25]]
    penalties = PenaltySpec(repetition_penalty=1.4, frequency_penalty=0.3, logit_bias=((4, 1.0),))

    def step():
        specs = [SamplingSpec(penalties=penalties, history=h, num_prompt_tokens=2) for h in history]
        ids = runner.decode(DecodeInput([h[-1] for h in history], [len(h) + 20 for h in history], tables, specs,
                                        seq_ids=["a", "b", "c"]))
        for h, t in zip(history, ids):
            h.append(t)

    step()   # seeds the three slots
    be.transfers.clear()
    step()
    rows = runner.model.groups.rows
    # token ids, positions and rope indices, as a plain step: nothing for the counts, biases or parameters
    assert (be.transfers.uploads, be.transfers.upload_bytes) == (3, 3 * rows * 4)
    assert (be.transfers.readbacks, be.transfers.readback_bytes) == (1, rows * 4)
