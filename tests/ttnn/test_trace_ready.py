"""Trace-ready serving on the mock mesh: fixed shapes add no programs after warm-up, and a decode
step uploads only the inputs that changed and reads back only the B sampled ids.

Trace capture itself crashes mock chips, so the runner's ``trace_decode`` is off here (its default
where the backend cannot trace); these are the properties a captured trace relies on.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.engine.config import EngineConfig  # noqa: E402
from ttdist.engine.core import EngineCore  # noqa: E402
from ttdist.engine.request import GenerationRequest, SamplingParams  # noqa: E402
from ttdist.engine.runner import DecodeInput, SamplingSpec  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.runner import MeshModelRunner  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
SLOTS = 8
GROUPS_SEEN: set[int] = set()


@pytest.fixture(scope="module")
def runner(spec, mesh_device):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in expected_shapes(config).items()}
    weights = prepare(config, hf, spec, DType.bfloat8_b)
    runner = MeshModelRunner(weights, backend="ttnn", page_size=32, num_pages=48, max_batch=SLOTS,
                             backend_options={"device": mesh_device})
    assert runner.trace_decode is False  # mock chips cannot capture; hardware defaults to True
    return runner


def _serve(runner, count: int, seed: int) -> int:
    rng = random.Random(seed)
    core = EngineCore(runner, None, EngineConfig(max_batch=SLOTS, prefill_chunk=64))
    for i in range(count):
        prompt = [rng.randrange(1, 512) for _ in range(rng.randrange(1, 150))]
        sampling = SamplingParams(max_tokens=rng.randrange(1, 10), ignore_eos=True, temperature=rng.choice([0.0, 0.8]),
                                  top_k=rng.choice([0, 5]), seed=rng.choice([None, 7]))
        core.add_request(GenerationRequest(f"r{seed}-{i}", prompt_token_ids=prompt, sampling=sampling))
    finished = 0
    while core.has_work():
        finished += sum(out.finished for out in core.step())
        if runner.inputs is not None:  # the user groups the decode steps have run so far
            GROUPS_SEEN.update(runner.model.groups.group_of_slot(int(s)) for s in np.nonzero(runner.inputs.host["positions"] >= 0)[0])
    return finished


def test_serving_adds_no_programs_after_warm_up(runner, mesh_device):
    """On a Galaxy the users spread over the 4 column groups (2 decode slots each), so the steps mix
    groups, fill some and leave others idle."""
    _serve(runner, 48, seed=1)  # warm-up: every prefill bucket, chunk start and batch occupancy
    before = mesh_device.num_program_cache_entries()
    assert _serve(runner, 100, seed=2) == 100  # varying occupancy, context lengths and sampling
    assert mesh_device.num_program_cache_entries() == before
    groups = runner.info.user_groups
    assert groups == (4 if runner.model.layout.spec.rows > 1 else 1)
    assert runner.info.num_pages == 48 and runner.model.groups.pages == 48 // groups
    assert GROUPS_SEEN == set(range(groups))  # every group decoded users


def test_decode_step_uploads_only_the_deltas_and_reads_back_only_ids(runner):
    be = runner.backend
    spec = [SamplingSpec()] * 3
    tables = [[0, 1], [12], [24, 25]]  # on a Galaxy: user groups 0, 1 and 2 (12 of the 48 pages each)
    runner.decode(DecodeInput([5, 6, 7], [40, 3, 33], tables, spec, seq_ids=["a", "b", "c"]))
    be.transfers.clear()
    ids = runner.decode(DecodeInput([8, 9, 10], [41, 4, 34], tables, spec, seq_ids=["a", "b", "c"]))
    assert len(ids) == 3
    # token ids, positions and rope indices changed; page table and sampling parameters did not
    rows = runner.model.groups.rows  # the slots; on a Galaxy a whole tile of rows (user_groups.decode_rows)
    assert (be.transfers.uploads, be.transfers.upload_bytes) == (3, 3 * rows * 4)
    assert (be.transfers.readbacks, be.transfers.readback_bytes) == (1, rows * 4)
    be.transfers.clear()
    runner.decode(DecodeInput([1, 2], [42, 5], [[0, 1, 5], [12]], spec[:2], seq_ids=["a", "b"]))  # c left, a got a page
    assert be.transfers.uploads == 4  # ... and the page table, once
