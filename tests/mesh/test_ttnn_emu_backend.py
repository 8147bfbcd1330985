"""The unchanged ttnn backend on emulated chips computes what the torch simulator computes:
prefill and decode logits of a tiny Llama, the sampled ids, and a traced decode that replays."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import ttnn_emu

pytest.importorskip("torch", reason="the simulator it is compared with runs on torch")

from ttdist.mesh import REPLICATED, SamplingBatch, make_backend, parse_mesh  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.mesh.sampling import device_params  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.llama import CacheConfig, LlamaModel  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512)


@pytest.fixture
def emulated():
    with ttnn_emu.installed() as ttnn:
        yield ttnn


def _weights(spec, dtype):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * 0.05).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    return prepare(config, hf, spec, dtype)


def _run(backend, weights, dtype) -> dict:
    model = LlamaModel(backend, weights, CacheConfig(num_pages=8, page_size=32, dtype=dtype))
    out = {"prefill": model.logits_to_host(model.prefill_forward(list(range(1, 41)), 0, [3, 1])),
           "chunk": model.logits_to_host(model.prefill_forward(list(range(5)), 64, [3, 1, 0]))}
    logits = model.decode_forward([7, 8, 9], [69, 12, 40], np.array([[3, 1, 0], [2, -1, -1], [4, 5, -1]]))
    out["decode"] = model.logits_to_host(logits)
    params = backend.input_tensor(device_params(SamplingBatch.greedy(3)), REPLICATED, name="sampling")
    out["ids"] = backend.read_ids(model.sample(logits, params))
    return out


def _pcc(a, b) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


@pytest.mark.parametrize("mesh,dtype", [("n300", DType.bfloat16), ("t3k", DType.bfloat8_b), ("tg", DType.bfloat16)])
def test_ttnn_backend_on_emulated_chips_matches_the_simulator(emulated, mesh, dtype):
    from ttdist.mesh.ttnn.device import open_device

    spec = parse_mesh(mesh)
    weights = _weights(spec, dtype)
    sim = _run(make_backend(spec, "sim"), weights, dtype)
    emu = _run(make_backend(spec, "ttnn", device=open_device(spec)), weights, dtype)
    for key in ("prefill", "chunk", "decode"):
        assert emu[key].shape == sim[key].shape
        assert _pcc(emu[key], sim[key]) > 0.9999, key
    np.testing.assert_array_equal(emu["ids"], sim["ids"])


def test_runner_traced_decode_replays_what_eager_decode_computes(emulated):
    from ttdist.engine.runner import DecodeInput, SamplingSpec
    from ttdist.model.runner import MeshModelRunner

    spec = parse_mesh("n300")
    weights = _weights(spec, DType.bfloat16)
    runners = [MeshModelRunner(weights, backend="ttnn", page_size=32, num_pages=16, max_batch=8, trace_decode=t) for t in (False, True)]
    tables = [[0, 1], [2, 3], [4, 5]]
    for runner in runners:
        for u, table in enumerate(tables):
            runner.prefill_logits(list(range(1 + u, 30 + u)), 0, table)
    ids = [[], []]
    positions = [29, 29, 29]
    for step in range(4):
        inp = DecodeInput([5 + step, 6, 7 + step], positions, tables, [SamplingSpec()] * 3, seq_ids=["a", "b", "c"])
        for i, runner in enumerate(runners):
            ids[i].append(runner.decode(inp))
        positions = [p + 1 for p in positions]
    assert runners[1]._traces[(False, False, False)] is not None  # step 1 compiled, step 2 captured, steps 3-4 replayed
    assert ids[0] == ids[1]
    # grammar masks: a second captured graph replays the masks each step writes in place
    rng = np.random.default_rng(4)
    masked = [[], []]
    for step in range(4):
        allowed = rng.random((3, TINY["vocab_size"])) < 0.05
        words = np.packbits(allowed, axis=-1, bitorder="little").view(np.int32)
        specs = [SamplingSpec(allowed=words[u]) for u in range(3)]
        inp = DecodeInput([5 + step, 6, 7 + step], positions, tables, specs, seq_ids=["a", "b", "c"])
        for i, runner in enumerate(runners):
            masked[i].append(runner.decode(inp))
        assert all(allowed[u, t] for u, t in enumerate(masked[0][-1]))
        positions = [p + 1 for p in positions]
    assert runners[1]._traces.get((False, False, True)) is not None and masked[0] == masked[1]
    for runner in runners:
        runner.close()
