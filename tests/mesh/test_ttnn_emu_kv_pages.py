"""KV pages read off emulated ttnn chips and written back (the KV tiers' transfers) give bit-identical
logits, in bfloat16 and bfloat8_b caches, on a 1D mesh and across a 2D mesh's user groups."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import ttnn_emu

pytest.importorskip("torch", reason="the weights are prepared with the simulator's helpers")

from ttdist.mesh import parse_mesh  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.runner import MeshModelRunner  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
PAGE = 32


@pytest.mark.parametrize("mesh,kv_dtype", [("1x2", "bfloat16"), ("1x2", "bfloat8_b"), ("2x2", "bfloat8_b")])
def test_pages_round_trip_exactly_and_restored_logits_are_bit_identical(mesh, kv_dtype):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * 0.05).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    with ttnn_emu.installed():
        weights = prepare(config, hf, parse_mesh(mesh), DType.bfloat16)
        runner = MeshModelRunner(weights, backend="ttnn", page_size=PAGE, num_pages=8, max_batch=2, kv_dtype=kv_dtype,
                                 trace_decode=False)
        groups, per_group = runner.info.user_groups, runner.info.num_pages // runner.info.user_groups
        prompt = [int(t) for t in rng.integers(3, 512, 2 * PAGE + 5)]
        source = [0, 1, 2]
        target = [(groups - 1) * per_group + per_group - 1 - i for i in range(3)]   # another group's pool on 2x2
        runner.prefill_logits(prompt, 0, source)
        pages = runner.read_kv_pages(source[:2])
        assert pages[0].dtype == np.uint16 and np.any(pages[0])
        runner.write_kv_pages(target[:2], pages)
        assert all(np.array_equal(a, b) for a, b in zip(runner.read_kv_pages(target[:2]), pages))
        got = runner.prefill_logits(prompt[2 * PAGE:], 2 * PAGE, target)
        want = runner.prefill_logits(prompt[2 * PAGE:], 2 * PAGE, source)
        assert np.array_equal(got, want)
