"""KV pages read and written through the real ttnn API on the mock mesh (the KV tiers' transfers):
every op accepted and the shapes right. Values are checked on the emulator (tests/mesh)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model import kv_pages  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.llama import CacheConfig, LlamaModel  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32)


def test_pages_read_and_written_on_ttnn(backend, spec):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in expected_shapes(config).items()}
    model = LlamaModel(backend, prepare(config, hf, spec, DType.bfloat8_b), CacheConfig(num_pages=8, page_size=32, dtype=DType.bfloat8_b))
    model.prefill_forward(list(range(1, 41)), 0, [3, 1])
    pages = kv_pages.read(backend, model, [3])
    heads = model.layout.n_kv_local * model.layout.n_inner
    assert pages[0].dtype == np.uint16 and pages[0].shape == (2, 2, heads, 32, 32)
    last = model.groups.pages - 1   # the last page of group 0: a user's pages lie in one group (Galaxy)
    kv_pages.write(backend, model, [last], pages)
    model.prefill_forward(list(range(5)), 32, [last, 5])
