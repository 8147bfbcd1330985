"""A Galaxy's user groups on emulated chips whose garbage reads as NaN: no row that nobody wrote
(an idle slot's attention output, a tile's padding rows) ever reaches a live user's values."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import ttnn_emu

pytest.importorskip("torch", reason="the simulator it is compared with runs on torch")

from ttdist.mesh import parse_mesh  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.runner import MeshModelRunner  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512)


@pytest.fixture
def nan_garbage(monkeypatch):
    monkeypatch.setattr(ttnn_emu.settings, "poison", "nan")
    with ttnn_emu.installed() as ttnn:
        yield ttnn


def _weights(mesh: str):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * 0.05).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    return prepare(config, hf, parse_mesh(mesh), DType.bfloat16)


def _decode_logits(runner: MeshModelRunner) -> list[np.ndarray]:
    """Three users in groups 0 and 2 of a batch of 8 slots (five idle), two decode steps."""
    tables = [[0, 1], [2], [17]]  # 8 pages per group: pages 0-7 are group 0's, 16-23 group 2's
    prompts = [list(range(1, 41)), list(range(3, 20)), list(range(50, 75))]
    for prompt, table in zip(prompts, tables):
        runner.prefill_logits(prompt, 0, table)
    out = []
    for step in range(2):
        positions = [len(p) + step for p in prompts]
        out.append(runner.decode_logits([7 + step, 8, 9 + step], positions, tables))
    return out


def test_galaxy_decode_with_idle_slots_and_a_partial_tile_is_finite_and_matches_the_simulator(nan_garbage):
    weights = _weights("tg")
    runners = [MeshModelRunner(weights, backend=b, page_size=32, num_pages=32, max_batch=8) for b in ("sim", "ttnn")]
    sim, emu = (_decode_logits(r) for r in runners)
    for step, (s, e) in enumerate(zip(sim, emu)):
        assert np.isfinite(e).all(), f"step {step}: {np.isnan(e).sum()} NaN logits"
        np.testing.assert_allclose(e, s, rtol=0.02, atol=0.02 * float(np.abs(s).max()))
        np.testing.assert_array_equal(e.argmax(-1), s.argmax(-1))
